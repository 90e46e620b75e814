"""DPO-trained policies as reward models: the implicit reward against a reference model.

``dpo:POLICY`` with ``ref=REFERENCE`` scores a response by
``beta * (log p_policy(response | conversation) - log p_ref(response | conversation))``; without a
reference, by the policy's own log-probability of the response, normalised as RewardBench's DPO
inference does (``ref_free=avg``, the default, as in RMB's scripts: the mean over the response's
tokens; ``sum``: the sum; ``norm``: minus the L2 norm of the per-token log-probabilities).
``beta`` multiplies every reward alike, so it never changes a ranking.

Rendering: the conversation through the policy's chat template with the generation prompt is the
context; the conversation plus the response without it is the text the models read. The response's
tokens are that text's tokens after the longest common token prefix with the context's: the answer
and whatever the template closes the assistant's turn with (its end-of-turn token, which a DPO
policy was trained to emit). Without a template the plain ``Role: content`` rendering is used and
EOS closes the answer. A BOS is put first when the tokenizer adds one to plain text and the
template did not write it (zephyr's template, for one, leaves BOS to the tokenizer), never twice.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from pytest_rmb.backends import (
    Backend,
    ModelArg,
    ModelLoadError,
    ModelSettings,
    RMBWarning,
    prepared_then_loaded,
)
from pytest_rmb.backends._transformers import (
    CPU_BATCH_TOKENS,
    PACKING_HELP,
    PACKING_MODES,
    LazyWeights,
    PackedRow,
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
    packed_pays,
    packing_description,
    packing_unsupported,
    pad_id,
    plain_render,
    resolve_device,
    resolve_dtype,
    resolved_revision,
    right_padded,
    template_digest,
    template_identity,
    truncate_left,
    varlen_attention,
    weights_identity,
)
from pytest_rmb.data import Message
from pytest_rmb.models import PointwiseModel, ScoreRequest, as_chat, request_key
from pytest_rmb.parsers import choice, renamed, text_value
from pytest_rmb.prefix import CostModel

# Part of the cache fingerprint: bump it when rendering or scoring changes what a text scores.
SCORER_VERSION = "1"
REF_FREE_MODES = ("norm", "avg", "sum")
DEFAULT_REF_FREE = "avg"
# Mixed case, digits, punctuation, accents and CJK: tokenizers that differ anywhere usually differ here.
PROBE_CONVERSATION = (Message("user", "Hello World! Sort [3, 1, 2] in Python; héllo 你好?"),)
PROBE_RESPONSE = "Use sorted([3, 1, 2]) -> [1, 2, 3]. Ünïcödé ok."


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number > 0, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"expected a finite number > 0, got {value}")
    return value


positive_float.type_name = "float"  # type: ignore[attr-defined]


class DPORewardModel(PointwiseModel):
    """Implicit DPO rewards from a causal LM policy and, optionally, its reference model."""

    def __init__(self, policy, reference, tokenizer, settings: ModelSettings, *, beta: float = 1.0,
                 ref_free: str | None = None, reference_settings: ModelSettings | None = None,
                 policy_weights: str = "", reference_weights: str = "", configs: tuple[Any, Any] | None = None,
                 load: Any = None, device: str = "cpu", reference_device: str | None = None, dtype: Any = None):
        """``policy`` and ``reference`` loaded, or both None with their ``configs`` (the reference's
        None without one), the devices and ``dtype`` they will load to, and ``load()`` that loads
        them on first need and returns (policy, reference)."""
        import torch

        self._torch = torch
        self._nets = LazyWeights(load, None if policy is None else
                                 (policy.eval(), reference.eval() if reference is not None else None))
        if policy is not None:
            configs = (policy.config, reference.config if reference is not None else None)
        assert configs is not None
        policy_config, reference_config = configs
        has_reference = reference_config is not None
        self.tokenizer = tokenizer
        self.name = settings.target
        self.beta = float(beta)
        self.mode = reward_mode(settings.model, has_reference, ref_free)
        self._reference_settings = reference_settings
        self._policy_weights = policy_weights or weights_identity(settings, policy_config)
        self._policy_revision = resolved_revision(settings, policy_config)
        self._reference_revision: str | None
        if has_reference and reference_settings is not None:
            self._reference_weights = reference_weights or weights_identity(reference_settings, reference_config)
            self._reference_revision = resolved_revision(reference_settings, reference_config)
        else:
            self._reference_weights = reference_weights
            self._reference_revision = None
        self._has_reference = has_reference
        self._device = input_device(policy) if policy is not None else torch.device(device)
        self._reference_device = (input_device(reference) if reference is not None
                                  else torch.device(reference_device or device) if has_reference else None)
        self._dtype = policy.dtype if policy is not None else dtype
        self.batch_tokens: int | None = batch_tokens_for(self._device)
        self._templated = override_chat_template(tokenizer, settings.chat_template)
        if not self._templated:
            warnings.warn(
                f"{self.name}: the tokenizer has no chat template; rendering conversations as "
                "'Role: content' blocks and closing the response with EOS (pass --rmb-chat-template FILE "
                "to use a template)",
                RMBWarning,
                stacklevel=2,
            )
        self._pad_id = pad_id(tokenizer)
        self._bos = self._leading_bos()
        self._special = set(tokenizer.all_special_ids)
        if settings.max_length is not None and settings.max_length < 2:
            raise ModelLoadError(f"--rmb-max-length {settings.max_length}: a DPO reward needs at least 2 tokens")
        self.max_length = context_limit(self.name, settings.max_length, tokenizer,
                                        [c for c in configs if c is not None])
        self._tokens: dict[ScoreRequest, tuple[list[int], int]] = {}
        self._counters: dict[str, float] = {"truncated": 0}
        # Packed or padded per batch, decided once the weights are there (--rmb-model-arg packing).
        self._packing_mode = settings.args.get("packing") or "auto"
        self._packing: CostModel | None = None
        self._varlen = False
        self._packing_decided = False
        self._packing_off = ("off (--rmb-model-arg packing=off)" if self._packing_mode == "off"
                             else "undecided (the models were not loaded: every score came from the cache)")
        if policy is not None:
            self._decide_packing()

    @property
    def loaded(self) -> bool:
        return self._nets.loaded

    def load(self) -> None:
        if not self._nets.loaded:
            policy, reference = self._nets.get()
            self._device = input_device(policy)
            if reference is not None:
                self._reference_device = input_device(reference)
            self._decide_packing()

    def _decide_packing(self) -> None:
        """Whether batches may run packed: both models must take packed rows and give, for probe
        texts of different lengths, the padded path's log-probabilities."""
        if self._packing_decided or self._packing_mode == "off":
            return
        self._packing_decided = True
        models = [model for model in self._nets.get() if model is not None]
        reason = next((r for r in (packing_unsupported(m, score_head=False) for m in models) if r), None)
        reason = reason or self._probe_packing(models)
        if reason is None:
            self._packing = CostModel.of(models[0], self.batch_tokens or CPU_BATCH_TOKENS)
            self._varlen = all(varlen_attention(model) for model in models)
        elif self._packing_mode == "on":
            raise ModelLoadError(f"--rmb-model-arg packing=on: {self.name} cannot score padding-free batches: "
                                 f"{reason}; use packing=auto or packing=off")
        else:
            self._packing_off = f"off ({reason})"

    def _probe_packing(self, models: list[Any]) -> str | None:
        question = (Message("user", "How do I sort a list of strings in Python by their length?"),)
        probe = [ScoreRequest(question, "Use sorted(items, key=len), which sorts by length and keeps ties in order."),
                 ScoreRequest(question, "I can't help."), ScoreRequest((Message("user", "Hi"),), "Hello!")]
        # Untruncated: the probe asks what the models can do, whatever --rmb-max-length is, and
        # counts nothing as truncated.
        rows = self.encode(probe)
        # float32 agrees to ~1e-6; half precision rounds differently along the two paths.
        tolerance = 1e-4 if self._dtype == self._torch.float32 else 5e-2
        for model in models:
            try:
                packed = [t.sum().item() for t in self._response_logprobs(model, rows, packed=True)]
            except Exception as exc:  # noqa: BLE001 - any failure means it cannot run packed rows
                return f"a packed row failed ({type(exc).__name__}: {exc})"
            padded = [t.sum().item() for t in self._response_logprobs(model, rows, packed=False)]
            if any(abs(a - b) > tolerance * max(1.0, abs(b)) for a, b in zip(packed, padded)):
                return (f"log-probabilities of a packed row differ from padded ones ({packed} vs {padded}): the "
                        "attention implementation does not keep packed texts apart")
        return None

    @property
    def policy(self):
        self.load()
        return self._nets.get()[0]

    @property
    def reference(self):
        if not self._has_reference:
            return None
        self.load()
        return self._nets.get()[1]

    # -- rendering and tokens ---------------------------------------------------------------------

    def render(self, request: ScoreRequest) -> tuple[str, str]:
        """(context, full text): the conversation ready for the answer, and with the answer."""
        return render(self.tokenizer, request, templated=self._templated)

    def _leading_bos(self) -> int | None:
        """The BOS to put first, when the tokenizer itself starts plain text with one."""
        bos = self.tokenizer.bos_token_id
        if bos is None:
            return None
        plain = self.tokenizer("x", add_special_tokens=True)["input_ids"]
        return bos if plain and plain[0] == bos else None

    def encode(self, requests: Sequence[ScoreRequest]) -> list[tuple[list[int], int]]:
        """Each request's token ids and the index of its first response token, before truncation."""
        rendered = [self.render(r) for r in requests]
        prompts = self.tokenizer([p for p, _ in rendered], add_special_tokens=False)["input_ids"]
        fulls = self.tokenizer([f for _, f in rendered], add_special_tokens=False)["input_ids"]
        eos = self.tokenizer.eos_token_id
        encoded = []
        for prompt_ids, full_ids in zip(prompts, fulls):
            ids = list(full_ids)
            if not self._templated and eos is not None:
                ids.append(eos)
            # Where the prompt's last token merges with the answer's first, that token counts as
            # the answer's (RewardBench and TRL do the same).
            start = _common_prefix(prompt_ids, ids)
            if self._bos is not None and (not ids or ids[0] != self._bos):
                ids.insert(0, self._bos)
                start += 1
            encoded.append((ids, start))
        return encoded

    def _truncate(self, ids: list[int], start: int) -> tuple[list[int], int]:
        # As the classifier backend truncates, keeping a leading BOS (or the template's first
        # special token); the response's first token moves with what was dropped.
        kept = truncate_left(ids, self.max_length, bool(ids) and ids[0] in self._special)
        if len(kept) == len(ids):
            return ids, start
        self._counters["truncated"] += 1
        dropped = len(ids) - len(kept)
        return kept, max(start - dropped, 1 if ids[0] in self._special else 0)

    def cost(self, requests: Sequence[ScoreRequest]) -> list[int]:
        """Token counts after rendering and truncation (each model reads them once); keeps the ids."""
        todo = [r for r in requests if r not in self._tokens]
        if todo:
            for request, (ids, start) in zip(todo, self.encode(todo)):
                self._tokens[request] = self._truncate(ids, start)
        return [len(self._tokens[r][0]) for r in requests]

    def take_counters(self) -> dict[str, float]:
        counters, self._counters = self._counters, {"truncated": 0}
        # Nothing packed, nothing said: the stats of a run without packing stay as they were.
        return {name: value for name, value in counters.items() if value or name == "truncated"}

    # -- scoring ----------------------------------------------------------------------------------

    def score(self, batch: Sequence[ScoreRequest]) -> list[float]:
        self.cost(batch)
        rows = [self._tokens[r] for r in batch]
        policy_model = self.policy
        packed = self._packs([len(ids) for ids, _ in rows])
        policy = self._response_logprobs(policy_model, rows, packed=packed)
        if self._has_reference:
            reference = self._response_logprobs(self.reference, rows, packed=packed)
            values = [self.beta * (p.sum().item() - r.sum().item()) for p, r in zip(policy, reference)]
        else:
            values = [self.beta * self._reference_free(p) for p in policy]
        for request in batch:
            self._tokens.pop(request, None)
        return values

    def _reference_free(self, logps) -> float:
        if logps.numel() == 0:
            return 0.0  # an empty answer under a template that closes nothing: log 1
        if self.mode == "avg":
            return logps.mean().item()
        if self.mode == "sum":
            return logps.sum().item()
        return -logps.norm(p=2).item()

    def _packs(self, widths: list[int]) -> bool:
        """Whether this batch runs as one packed row (counted when it does)."""
        packed = self._packing is not None and len(widths) > 1 and all(widths) and (
            self._packing_mode == "on" or packed_pays(self._packing, widths, self._varlen))
        if packed:
            self._counters["packed_batches"] = self._counters.get("packed_batches", 0) + 1
            saved = len(widths) * max(widths) - sum(widths)
            self._counters["packed_pad_tokens_saved"] = self._counters.get("packed_pad_tokens_saved", 0) + saved
        return packed

    def _response_logprobs(self, model, rows: Sequence[tuple[list[int], int]], *, packed: bool) -> list[Any]:
        """Per row, the float64 log-probabilities of its response tokens under ``model``, from a
        right-padded batch or one packed row."""
        torch = self._torch
        device = input_device(model)
        with torch.inference_mode():
            if packed:
                row = PackedRow.of([ids for ids, _ in rows], [len(ids) for ids, _ in rows])
                logits = model(**row.inputs(model)).logits[0]
                offsets = row.starts
            else:
                input_ids, attention = right_padded([ids for ids, _ in rows], self._pad_id)
                logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
            result = []
            for i, (ids, start) in enumerate(rows):
                first, end = max(start, 1), len(ids)
                if first >= end:
                    result.append(torch.zeros(0, dtype=torch.float64))
                    continue
                # One row at a time, in at least float32: the whole batch's log-softmax would
                # hold tokens x vocabulary floats at once.
                part = (logits[offsets[i] + first - 1:offsets[i] + end - 1] if packed
                        else logits[i, first - 1:end - 1])
                logps = part.to(torch.promote_types(part.dtype, torch.float32)).log_softmax(-1)
                targets = torch.tensor(ids[first:end], device=logps.device)
                result.append(logps.gather(-1, targets[:, None]).squeeze(-1).double().cpu())
            del logits
        return result

    # -- provenance -------------------------------------------------------------------------------

    def fingerprint(self) -> str:
        """Everything a reward depends on, hashed: names the score-cache file (no weights loaded)."""
        if not self._has_reference:
            reference = f"ref_free {self.mode}"
        else:
            target = self._reference_settings.target if self._reference_settings else ""
            reference = f"reference {target} {self._reference_weights}"
        return fingerprint([f"scorer dpo {SCORER_VERSION}", self.name, self._policy_weights, reference,
                            f"beta {self.beta!r}", str(self._dtype), str(self.max_length),
                            template_identity(self.tokenizer, self._templated)])

    def cache_key(self, request: ScoreRequest) -> str:
        """A hash of the exact context and text the models see."""
        prompt, full = self.render(request)
        return request_key(f"{len(prompt)}:{prompt}{full}")

    def describe(self) -> dict[str, Any]:
        reference: dict[str, Any] | None = None
        if self._has_reference:
            reference = {
                "model": self._reference_settings.target if self._reference_settings else None,
                "revision": self._reference_revision,
                "weights": self._reference_weights,
                "device": str(self._reference_device),
            }
        return {
            "policy": {"model": self.name, "revision": self._policy_revision, "weights": self._policy_weights,
                       "device": str(self._device)},
            "reference": reference,
            "reward": "beta * (log p_policy - log p_ref) over the response tokens" if reference
            else f"beta * reference-free log p_policy of the response ({self.mode})",
            "beta": self.beta,
            "ref_free": None if reference else self.mode,
            "dtype": dtype_name(self._dtype),
            "max_length": self.max_length,
            "truncation_side": "left (the start of the conversation is dropped)",
            "chat_template_sha256": template_digest(template_identity(self.tokenizer, self._templated)),
            "packing": self._describe_packing(),
        }

    def _describe_packing(self) -> str:
        return packing_description(self._packing_mode, self._packing is not None, self._varlen, self._packing_off)

    def close(self) -> None:
        self._tokens.clear()
        self._nets.release()
        torch = self._torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def reward_mode(spec: str, has_reference: bool, ref_free: str | None) -> str:
    """``ref`` with a reference model, else the reference-free normalisation."""
    if has_reference:
        if ref_free is not None:
            raise ModelLoadError(f"--rmb-model {spec}: ref_free={ref_free} applies only without ref=...; "
                                 "with a reference the reward is the summed log-ratio")
        return "ref"
    mode = ref_free or DEFAULT_REF_FREE
    if mode not in REF_FREE_MODES:
        raise ModelLoadError(f"--rmb-model {spec}: ref_free={mode}: expected one of {', '.join(REF_FREE_MODES)}")
    return mode


def render(tokenizer, request: ScoreRequest, *, templated: bool) -> tuple[str, str]:
    context = [{"role": m.role, "content": m.content} for m in request.conversation]
    if templated:
        prompt = tokenizer.apply_chat_template(context, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(as_chat(request.conversation, request.response),
                                             tokenize=False, add_generation_prompt=False)
        return prompt, full
    # The space goes with the answer: byte-level BPE merges it into the answer's first word.
    prompt = plain_render(context) + "\n\nAssistant:"
    return prompt, f"{prompt} {request.response}"


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def check_same_tokenizer(policy_tokenizer, reference_tokenizer, policy: str, reference: str,
                         probe: str) -> None:
    """Log-ratios compare token by token: both models must split every text the same way."""
    policy_vocab, reference_vocab = policy_tokenizer.get_vocab(), reference_tokenizer.get_vocab()
    if policy_vocab != reference_vocab:
        differing = sum(1 for token, i in policy_vocab.items() if reference_vocab.get(token) != i)
        differing += sum(1 for token in reference_vocab if token not in policy_vocab)
        raise ModelLoadError(
            f"--rmb-model dpo:{policy} with ref={reference}: the tokenizers differ ({len(policy_vocab)} vs "
            f"{len(reference_vocab)} tokens, {differing} tokens with other ids); the policy and its "
            "reference must share a tokenizer"
        )
    policy_ids = policy_tokenizer(probe, add_special_tokens=True)["input_ids"]
    reference_ids = reference_tokenizer(probe, add_special_tokens=True)["input_ids"]
    if policy_ids != reference_ids:
        raise ModelLoadError(
            f"--rmb-model dpo:{policy} with ref={reference}: the tokenizers split the same text differently "
            f"({len(policy_ids)} vs {len(reference_ids)} tokens for a probe text); the policy and its "
            "reference must share a tokenizer"
        )


# Ends the error for a checkpoint without a trained language-model head.
NEEDS = "a DPO reward needs a causal LM"


def prepare_dpo(settings: ModelSettings) -> DPORewardModel:
    """``dpo:POLICY`` [``ref=REFERENCE``]: both models load once, in one dtype, on first need.

    Everything that can be checked without the weights (both specs, the mode, the tokenizers, the
    configs) is checked now, so a mistake costs seconds, not minutes.
    """
    policy_spec = settings.target.strip()
    if not policy_spec:
        raise ModelLoadError(f"--rmb-model {settings.model}: no policy model; expected dpo:POLICY "
                             "(a hub id or a local checkpoint) and --rmb-model-arg ref=REFERENCE")
    if settings.reward_index is not None:
        raise ModelLoadError(f"--rmb-reward-index {settings.reward_index}: a DPO reward is a log-probability "
                             f"ratio, not a logit of a head; drop it for --rmb-model {settings.model}")
    args = settings.args
    reference_spec = (args.get("ref") or "").strip() or None
    ref_free = args.get("ref_free")
    reward_mode(settings.model, reference_spec is not None, ref_free)
    policy_label = f"--rmb-model {settings.model}"
    reference_label = f"--rmb-model-arg ref={reference_spec}"
    check_spec_before_loading(policy_spec, policy_label)
    reference_settings = None
    if reference_spec is not None:
        reference_settings = replace(settings, model=f"hf:{reference_spec}", revision=args.get("ref_revision"))
        check_spec_before_loading(reference_spec, reference_label)
    tokenizer = load_tokenizer(settings, policy_label)
    templated = override_chat_template(tokenizer, settings.chat_template)
    if reference_settings is not None:
        _, probe = render(tokenizer, ScoreRequest(PROBE_CONVERSATION, PROBE_RESPONSE), templated=templated)
        check_same_tokenizer(tokenizer, load_tokenizer(reference_settings, reference_label), policy_spec,
                             reference_spec or "", probe)

    device = resolve_device(settings.device, settings.worker_index)
    dtype = resolve_dtype(settings.dtype, device)
    ref_device: str | None = None
    if reference_settings is not None and args.get("ref_device"):
        try:
            ref_device = resolve_device(args["ref_device"], settings.worker_index)
        except ModelLoadError as exc:
            raise ModelLoadError(f"--rmb-model-arg ref_device={args['ref_device']}: "
                                 f"{str(exc).split(': ', 1)[-1]}") from None
    failure = "cannot load it as a causal language model with transformers"
    configs = (load_config(settings, policy_label, failure),
               load_config(reference_settings, reference_label, failure) if reference_settings else None)

    def load() -> tuple[Any, Any]:
        policy = load_causal_lm(settings, policy_label, dtype, None if settings.device_map else device, NEEDS)
        reference = None
        if reference_settings is not None:
            # Beside the policy unless ref_device says (with a device_map, spread by the same map).
            where = ref_device or (None if settings.device_map else str(input_device(policy)))
            chosen = replace(reference_settings, device_map=None) if where is not None else reference_settings
            reference = load_causal_lm(chosen, reference_label, dtype, where, NEEDS).eval()
        return policy.eval(), reference

    return DPORewardModel(None, None, tokenizer, settings, beta=args.get("beta") or 1.0, ref_free=ref_free,
                          reference_settings=reference_settings, configs=configs, load=load, device=device,
                          reference_device=ref_device, dtype=dtype)


load_dpo = prepared_then_loaded(prepare_dpo)


BACKEND = Backend(
    "dpo", load_dpo, prepare=prepare_dpo,
    args=(
        ModelArg("ref", renamed("model", text_value), None,
                 "the reference model (hub id or local checkpoint); the reward is "
                 "beta * (log p_policy - log p_ref) of the response. Without it, a reference-free reward"),
        ModelArg("ref_free", choice(*REF_FREE_MODES), None,
                 "without ref: the policy's log-probability of the response averaged over its tokens (avg, "
                 "the default), summed (sum), or minus the L2 norm of the per-token values (norm)"),
        ModelArg("beta", positive_float, 1.0, "multiplies every reward (the DPO beta); rankings do not depend on it"),
        ModelArg("ref_device", renamed("device", text_value), None,
                 "device for the reference model (default: the policy's)"),
        ModelArg("ref_revision", renamed("revision", text_value), None,
                 "revision of a hub reference model (default: main)"),
        ModelArg("packing", choice(*PACKING_MODES), "auto", PACKING_HELP),
    ),
    summary="a DPO-trained causal LM as an implicit reward model: dpo:POLICY with ref=REFERENCE, or "
    "reference-free (settings through --rmb-dtype, --rmb-max-length, --rmb-chat-template, ...)",
)
