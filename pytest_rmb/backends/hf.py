"""Sequence-classification reward models through transformers.

Rendering: the conversation plus the response through the tokenizer's chat template (no generation
prompt), tokenized without special tokens so that the template's BOS is not doubled. Batches are
right-padded whatever the tokenizer's ``padding_side``: real tokens then keep positions 0..n-1,
first-token (encoder) and last-token (decoder) pooling both see exactly what they see for the text
alone, and a score does not depend on the batch it was in.

Padding-free batches (``--rmb-model-arg packing=auto|on|off``): a decoder's batch can instead run
as one row, each text with its own position ids and attending only to itself, the head applied at
each text's pooled token. A probe at load checks that this gives the padded path's scores; the
padded path stays the reference (probes, ``explain``, a text alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pytest_rmb.backends import Backend, ModelArg, ModelLoadError, ModelSettings, prepared_then_loaded
from pytest_rmb.backends._transformers import (
    CPU_BATCH_TOKENS,
    PACKING_HELP,
    PACKING_MODES,
    ChatRenderer,
    LazyWeights,
    OneNetwork,
    batch_tokens_for,
    check_spec_before_loading,
    dtype_name,
    fingerprint,
    load_config,
    load_sequence_classifier,
    load_tokenizer,
    packed_forward,
    packed_pays,
    packing_description,
    packing_unsupported,
    resolve_device,
    resolve_dtype,
    resolved_revision,
    right_padded,
    template_digest,
    varlen_attention,
    weights_identity,
)
from pytest_rmb.batching import pack_batches
from pytest_rmb.data import Message
from pytest_rmb.models import PointwiseModel, ScoreRequest, request_key
from pytest_rmb.parsers import choice
from pytest_rmb.prefix import CostModel, PrefixRunner, PrefixSharing, split_points, unsupported_reason

# Part of the cache fingerprint: bump it when rendering or scoring changes what a text scores.
SCORER_VERSION = "1"


class HFRewardModel(OneNetwork, PointwiseModel):
    """A scorer over a loaded ``AutoModelForSequenceClassification`` and its tokenizer."""

    def __init__(self, model, tokenizer, settings: ModelSettings, name: str | None = None, weights: str = "", *,
                 config: Any = None, load: Any = None, device: str = "cpu", dtype: Any = None):
        """``model`` loaded, or None with its ``config``, the ``device`` and ``dtype`` it will
        load to, and ``load()`` that loads it on first need."""
        import torch

        self._torch = torch
        self._net = LazyWeights(load, model.eval() if model is not None else None)
        config = model.config if model is not None else config
        self._config = config
        self.tokenizer = tokenizer
        self.name = name or settings.target
        self._weights = weights or weights_identity(settings, config)
        self._revision = resolved_revision(settings, config)
        self._device = next(model.parameters()).device if model is not None else torch.device(device)
        self._dtype = model.dtype if model is not None else dtype
        self.batch_tokens: int | None = batch_tokens_for(self._device)
        labels = config.num_labels
        if settings.reward_index is None and labels != 1:
            raise ModelLoadError(
                f"{self.name} has {labels} output labels ({', '.join(map(str, config.id2label.values()))}); "
                "pass --rmb-reward-index N to say which logit is the reward"
            )
        self._reward_index = settings.reward_index or 0
        if not 0 <= self._reward_index < labels:
            raise ModelLoadError(f"--rmb-reward-index {self._reward_index}: the model has {labels} output labels")
        self._renderer = ChatRenderer(tokenizer, self.name, chat_template=settings.chat_template,
                                      max_length=settings.max_length, config=config)
        self._templated = self._renderer.templated
        self._pad_id = self._ensure_pad_token()
        self.max_length = self._renderer.max_length
        self._tokens: dict[ScoreRequest, list[int]] = {}
        self._lengths: dict[ScoreRequest, tuple[int, int]] = {}  # (rendered, kept) tokens, for facts()
        self._counters: dict[str, float] = {"truncated": 0}
        self._sharing: PrefixSharing | None = None
        self._sharing_mode = settings.prefix_sharing
        self._sharing_off = ("off (--rmb-prefix-sharing off)" if self._sharing_mode == "off"
                             else "undecided (the model was not loaded: every score came from the cache)")
        # The cost model that picks packed or padded per batch; None: batches are padded.
        self._packing: CostModel | None = None
        self._varlen = False  # FlashAttention's varlen kernel: no mask across a packed row
        self._packing_mode = settings.args.get("packing") or "auto"
        self._packing_off = ("off (--rmb-model-arg packing=off)" if self._packing_mode == "off"
                             else "undecided (the model was not loaded: every score came from the cache)")
        if model is not None:
            self._loaded(self._net.get())

    def _loaded(self, model) -> None:
        """What needs the weights: the pad id on their config, the device a device_map chose,
        and whether prefix sharing works for them."""
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self._pad_id
        self._device = next(model.parameters()).device
        if self._packing_mode != "off":
            self._setup_packing(self._packing_mode)
        if self._sharing_mode != "off":
            self._setup_sharing(self._sharing_mode)

    def _ensure_pad_token(self) -> int:
        tokenizer, config = self.tokenizer, self._config
        if tokenizer.pad_token_id is None:
            fallback = tokenizer.eos_token or tokenizer.unk_token
            if fallback is None:
                raise ModelLoadError(f"{self.name}: the tokenizer has no pad, eos or unk token to pad with")
            # What reward-model trainers do for tokenizers without one (TRL, RewardBench).
            tokenizer.pad_token = fallback
        if config.pad_token_id is None:
            config.pad_token_id = tokenizer.pad_token_id
        return config.pad_token_id

    def render(self, request: ScoreRequest) -> str:
        return self._renderer.render(request)

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return self._renderer.encode(texts)

    def fingerprint(self) -> str:
        """Everything a score depends on, hashed: names the score-cache file (no weights loaded)."""
        return fingerprint([f"scorer hf {SCORER_VERSION}", self.name, self._weights, str(self._dtype),
                            str(self.max_length), str(self._reward_index), self._renderer.template_identity()])

    def describe(self) -> dict:
        return {
            "revision": self._revision,
            "weights": self._weights,
            "dtype": dtype_name(self._dtype),
            "device": str(self._device),
            "max_length": self.max_length,
            "truncation_side": "left (the start of the conversation is dropped)",
            "reward_index": self._reward_index,
            "chat_template_sha256": template_digest(self._renderer.template_identity()),
            "prefix_sharing": self._sharing.describe() if self._sharing else self._sharing_off,
            "packing": self._describe_packing(),
        }

    def _describe_packing(self) -> str:
        return packing_description(self._packing_mode, self._packing is not None, self._varlen, self._packing_off)

    def cache_key(self, request: ScoreRequest) -> str:
        """The cache key of a request: a hash of the exact text the tokenizer sees."""
        return request_key(self.render(request))

    def cost(self, requests: Sequence[ScoreRequest]) -> list[int]:
        """Token counts after rendering and truncation; keeps the ids for ``score``."""
        todo = [r for r in requests if r not in self._tokens]
        if todo:
            for request, ids in zip(todo, self._encode([self.render(r) for r in todo])):
                self._tokens[request] = self._truncate(ids)
                self._lengths[request] = (len(ids), len(self._tokens[request]))
        return [len(self._tokens[r]) for r in requests]

    def _truncate(self, ids: list[int]) -> list[int]:
        kept = self._renderer.truncate(ids)
        if len(kept) < len(ids):
            self._counters["truncated"] += 1
        return kept

    def take_counters(self) -> dict[str, float]:
        counters, self._counters = self._counters, {"truncated": 0}
        # Nothing packed, nothing said: the stats of a run without packing stay as they were.
        counters = {name: value for name, value in counters.items() if value or name == "truncated"}
        if self._sharing is not None:
            counters.update(self._sharing.take_counters())
        return counters

    def _setup_sharing(self, mode: str) -> None:
        reason = unsupported_reason(self.model) or self._probe_sharing()
        if reason is None:
            runner = PrefixRunner(self.model, self._pad_id, self._reward_index, self.batch_tokens or CPU_BATCH_TOKENS)
            self._sharing = PrefixSharing(mode, runner, self.max_length)
        elif mode == "on":
            raise ModelLoadError(f"--rmb-prefix-sharing on: {self.name} cannot score with a shared prefix: "
                                 f"{reason}; use auto or off")
        else:
            self._sharing_off = f"off ({reason})"

    def _setup_packing(self, mode: str) -> None:
        reason = packing_unsupported(self.model) or self._probe_packing()
        if reason is None:
            self._packing = CostModel.of(self.model, self.batch_tokens or CPU_BATCH_TOKENS)
            self._varlen = varlen_attention(self.model)
        elif mode == "on":
            raise ModelLoadError(f"--rmb-model-arg packing=on: {self.name} cannot score padding-free batches: "
                                 f"{reason}; use packing=auto or packing=off")
        else:
            self._packing_off = f"off ({reason})"

    def _probe_agrees(self, scores: Sequence[float], padded: Sequence[float]) -> bool:
        """Whether a probe's scores along another path match the padded path's."""
        # float32 agrees to ~1e-6; half precision rounds differently along the two paths.
        tolerance = 1e-4 if self._dtype == self._torch.float32 else 5e-2
        return not any(abs(a - b) > tolerance * max(1.0, abs(b)) for a, b in zip(scores, padded))

    def _probe_packing(self) -> str | None:
        """Score texts of different lengths packed and padded; None when they agree."""
        question = (Message("user", "How do I sort a list of strings in Python by their length?"),)
        # Two turns too: a template may end a turn with the pad token (pad = eos), so a model that
        # pools before the first pad rather than the last reads another token packed than padded.
        turns = (Message("user", "Hi"), Message("assistant", "Hello! How can I help?"),
                 Message("user", "Sort strings by length?"))
        probe = [ScoreRequest(question, "Use sorted(items, key=len), which sorts by length and keeps ties in order."),
                 ScoreRequest(question, "I can't help."), ScoreRequest((Message("user", "Hi"),), "Hello!"),
                 ScoreRequest(turns, "Use sorted(key=len).")]
        rows = [ids[: self.max_length] for ids in self._encode([self.render(r) for r in probe])]
        try:
            packed, _ = packed_forward(self.model, rows, self._pad_id, self._reward_index)
        except Exception as exc:  # noqa: BLE001 - any failure means it cannot run packed rows
            return f"a packed row failed ({type(exc).__name__}: {exc})"
        padded = self._padded_forward(rows)
        if not self._probe_agrees(packed, padded):
            return (f"scores of a packed row differ from padded ones ({packed} vs {padded}): the attention "
                    "implementation does not keep packed texts apart")
        return None

    def _probe_sharing(self) -> str | None:
        """Score two answers of one conversation with and without sharing; None when they agree."""
        question = (Message("user", "How do I sort a list of strings in Python by their length?"),)
        probe = [ScoreRequest(question, "Use sorted(items, key=len)."), ScoreRequest(question, "I can't help.")]
        # Untruncated: the probe asks what the model can do, whatever --rmb-max-length is.
        rows = self._encode([self.render(r) for r in probe])
        lengths = split_points(rows, [0, 0], self._pad_id, max(map(len, rows)) + 1, 1)
        if len(lengths) != 2:
            return "no shared prefix found in a probe conversation"
        runner = PrefixRunner(self.model, self._pad_id, self._reward_index, CPU_BATCH_TOKENS)
        try:
            shared = runner.score(rows, [lengths[0], lengths[1]])
        except Exception as exc:  # noqa: BLE001 - any failure means it cannot continue from a cache
            return f"continuing from cached keys/values failed ({type(exc).__name__}: {exc})"
        plain = self._padded_forward(rows)
        if not self._probe_agrees(shared, plain):
            return (f"scores with a shared prefix differ from scores without it ({shared} vs {plain}): "
                    "the head does not pool the last token")
        return None

    def plan_batches(self, requests: Sequence[ScoreRequest], costs: Sequence[int], max_batch_size: int,
                     max_batch_cost: int) -> list[list[int]]:
        """The engine's batches: a shared prefix's answers together when sharing is on."""
        if self._sharing is None:
            return pack_batches(costs, max_batch_size, max_batch_cost)
        self.cost(requests)
        rows = [self._tokens[r] for r in requests]
        return self._sharing.plan(requests, rows, costs, max_batch_size, max_batch_cost)

    def score(self, batch: Sequence[ScoreRequest]) -> list[float]:
        self.load()
        if self._sharing is None:
            return self._score_plain(batch)
        self.cost(batch)
        values = self._sharing.score(batch, [self._tokens[r] for r in batch], self._forward)
        for request in batch:
            self._tokens.pop(request, None)
        return values

    def _score_plain(self, batch: Sequence[ScoreRequest]) -> list[float]:
        self.cost(batch)
        values = self._forward([self._tokens[r] for r in batch])
        for request in batch:
            self._tokens.pop(request, None)
        return values

    def _forward(self, rows: Sequence[Sequence[int]]) -> list[float]:
        """Scores of a plain batch: packed where packing is on and pays for this batch, else padded."""
        if self._packing is not None and len(rows) > 1 and all(rows) and (
                self._packing_mode == "on"
                or packed_pays(self._packing, [len(row) for row in rows], self._varlen)):
            values, saved = packed_forward(self.model, rows, self._pad_id, self._reward_index)
            self._counters["packed_batches"] = self._counters.get("packed_batches", 0) + 1
            self._counters["packed_pad_tokens_saved"] = self._counters.get("packed_pad_tokens_saved", 0) + saved
            return values
        return self._padded_forward(rows)

    def _padded_forward(self, rows: Sequence[Sequence[int]]) -> list[float]:
        """The reference path: right-padded rows through the model's own forward and pooling."""
        torch = self._torch
        input_ids, attention = right_padded(rows, self._pad_id)
        with torch.inference_mode():
            logits = self.model(
                input_ids=input_ids.to(self._device), attention_mask=attention.to(self._device)
            ).logits
        return logits[:, self._reward_index].float().cpu().tolist()

    def facts(self, request: ScoreRequest) -> dict[str, int | bool]:
        """Tokens the model read for the request and whether truncation cut it (from ``cost``)."""
        lengths = self._lengths.pop(request, None)
        if lengths is None:
            ids = self._encode([self.render(request)])[0]
            lengths = (len(ids), min(len(ids), self.max_length))
        full, kept = lengths
        return {"tokens": kept, "truncated": kept < full}

    def explain(self, request: ScoreRequest) -> dict:
        """Exactly what the model reads for one request, and where the reward comes from."""
        rendered = self.render(request)
        ids = self._encode([rendered])[0]
        kept = self._renderer.truncate(ids)
        special = set(self.tokenizer.all_special_ids)
        position, pooling = self._reward_position(kept)
        pad, eos = self.model.config.pad_token_id, self.tokenizer.eos_token_id
        notes = []
        if position is not None and position < len(kept) - 1 and pad == eos:
            notes.append(f"the pad token is the EOS token ({self.tokenizer.convert_ids_to_tokens(pad)}), so the "
                         f"model's pooling skips the {len(kept) - 1 - position} trailing EOS token(s) of the text")
        return {
            "rendered": rendered,
            "rendering": "chat template" if self._templated else "plain 'Role: content' blocks (no chat template)",
            "ids": kept,
            "tokens": self.tokenizer.convert_ids_to_tokens(kept),
            "special": [i in special for i in kept],
            "tokens_rendered": len(ids),
            "max_length": self.max_length,
            "dropped": len(ids) - len(kept),
            "kept_text": self.tokenizer.decode(kept) if len(kept) < len(ids) else rendered,
            "kept_first": bool(self._renderer.keep_first and len(kept) < len(ids)),
            "reward_position": position,
            "pooling": pooling,
            "reward_index": self._reward_index,
            "score": self._padded_forward([kept])[0],
            "notes": notes,
        }

    def _reward_position(self, row: list[int]) -> tuple[int | None, str]:
        """Where the head reads the reward: transformers' heads that take the pad id pool the last
        token that is not padding; the others (BERT-style encoders) the first."""
        import inspect

        try:
            source = inspect.getsource(type(self.model).forward)
        except (OSError, TypeError):
            return None, "unknown (the model's forward has no readable source)"
        if "pad_token_id" in source:
            pad = self.model.config.pad_token_id
            position = next((i for i in range(len(row) - 1, -1, -1) if row[i] != pad), 0)
            return position, "the last token that is not the pad token"
        return 0, "the first token (encoder pooling)"


def prepare_hf(settings: ModelSettings) -> HFRewardModel:
    """A model id or a local checkpoint directory as a sequence-classification reward model: the
    tokenizer and the config now (every setting is checked against them), the weights on first need."""
    spec = settings.target
    label = f"--rmb-model {settings.model}"
    check_spec_before_loading(spec)
    device = resolve_device(settings.device, settings.worker_index)
    dtype = resolve_dtype(settings.dtype, device)
    tokenizer = load_tokenizer(settings, label, "cannot load it with transformers")
    config = load_config(settings, label)
    target = None if settings.device_map else device
    return HFRewardModel(None, tokenizer, settings, config=config, device=device, dtype=dtype,
                         load=lambda: load_sequence_classifier(settings, label, dtype, target).eval())


load_hf = prepared_then_loaded(prepare_hf)

BACKEND = Backend(
    "hf", load_hf, prepare=prepare_hf,
    args=(ModelArg("packing", choice(*PACKING_MODES), "auto", PACKING_HELP),),
    summary="a Hugging Face sequence-classification reward model: hub id or local checkpoint "
    "(a bare id means hf:; settings through --rmb-dtype, --rmb-revision, --rmb-max-length, ...)",
)
