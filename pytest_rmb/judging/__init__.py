"""LLM-as-a-judge, the parts every judge backend shares: ``prompts`` (what the judge is asked),
``formats`` (how it writes its verdict: ``verdict=``), ``parsing`` (what its reply says),
``cutoffs`` (replies cut off at the reply limit, and the early stop for them) and ``orders`` (both
answer orders combined into one verdict).
Pure functions: no HTTP, no torch. The judge statistics are metrics (``metrics.judge_stats``).

The protocol, and why each piece is there:

- **Prompt.** ``pair-v2`` is MT-Bench's pairwise judge prompt (FastChat ``judge_prompts.jsonl``,
  ``pair-v2`` and, for conversations with earlier turns, ``pair-v2-multi-turn``) without the tie
  option: RMB has no ties. Earlier turns are rendered in full in the question part for any number
  of turns, never dropped or cut.
- **Verdict format.** ``[[A]]`` by default; RM-R1's ``<answer>[[A]]</answer>``, Prometheus's
  ``[RESULT] A``, ``**Result:** A``, ``\\boxed{A}`` or ``{"winner": "A"}`` on request. Only the
  prompt's closing instruction, the follow-up turn, the defusing and the parser follow it.
- **Injection.** An answer that contains ``[[A]]``/``[[B]]``, a verdict in the chosen format or the
  answer markers could steer the judge or the parser; such spans are neutralised (brackets swapped
  for parentheses, so lengths are unchanged) before they enter the prompt.
- **Parsing.** The answer only, never a server's reasoning field; ``<think>`` blocks are masked
  first; the verdict is the last one in the chosen format; a final verdict line that names both,
  or ends in a tie, is no verdict. There is no fallback to the reply's first character and no
  default. A reply cut off at the reply limit before its verdict is a "cut off" miss, apart.
- **Orders.** A comparison is won only when the chosen answer is preferred in every order asked;
  a disagreement between orders is a flip (lost, counted apart); an order without a verdict makes
  the comparison "no verdict". Failed requests never reach here: they are errors, not verdicts.
"""
