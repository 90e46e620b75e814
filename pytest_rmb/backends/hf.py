"""Sequence-classification reward models through transformers.

Rendering: the conversation plus the response through the tokenizer's chat template (no generation
prompt), tokenized without special tokens so that the template's BOS is not doubled. Batches are
right-padded whatever the tokenizer's ``padding_side``: real tokens then keep positions 0..n-1,
first-token (encoder) and last-token (decoder) pooling both see exactly what they see for the text
alone, and a score does not depend on the batch it was in.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_rmb.backends import Backend, ModelLoadError, ModelSettings, RMBWarning
from pytest_rmb.data import Message
from pytest_rmb.models import PointwiseModel, ScoreRequest, as_chat, request_key
from pytest_rmb.prefix import PrefixRunner, PrefixSharing, split_points, unsupported_reason

DEFAULT_MAX_LENGTH = 4096
# Token budget per batch when --rmb-batch-tokens is not given. A GPU wants large batches to stay
# busy; a CPU scores faster in small ones whose activations stay in cache (all-MiniLM-L6-v2 on
# RMB Chat, 2 cores: 14-17% longer with 16384 than with 4096; bench/bench_hf.py --batch-tokens).
GPU_BATCH_TOKENS = 16384
CPU_BATCH_TOKENS = 4096
# Part of the cache fingerprint: bump it when rendering or scoring changes what a text scores.
SCORER_VERSION = "1"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
# Tokenizers report "no limit" as a huge sentinel (int(1e30)); anything above this is not a limit.
SANE_LIMIT = 1_000_000


def plain_render(messages: list[dict[str, str]]) -> str:
    """The documented fallback for tokenizers without a chat template."""
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def resolve_device(requested: str, worker_index: int | None = None) -> str:
    """``auto``: CUDA when available; pytest-xdist worker i takes GPU i mod (visible GPUs)."""
    import torch

    if requested == "auto":
        if not torch.cuda.is_available():
            return "cpu"
        return "cuda" if worker_index is None else f"cuda:{worker_index % torch.cuda.device_count()}"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"--rmb-device {requested}: CUDA is not available on this machine")
    return requested


def resolve_dtype(requested: str, device: str):
    import torch

    if requested == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[requested]


class ChatRenderer:
    """What a sequence-classification reward model reads for a request, from its tokenizer alone.

    The conversation plus the response through the chat template (or the plain fallback),
    tokenized without doubling the template's special tokens, truncated to ``max_length`` keeping
    the end (and a leading BOS or [CLS]). Shared by ``hf:`` and by served models rendered on this
    side (``vllm:`` / ``sglang:`` with ``template=client``), so both read exactly the same tokens.
    """

    def __init__(self, tokenizer, name: str, *, chat_template: str | None = None, max_length: int | None = None,
                 model_limit: int | None = None):
        self.tokenizer = tokenizer
        self.name = name
        if chat_template:
            tokenizer.chat_template = Path(chat_template).read_text(encoding="utf-8")
        self.templated = bool(getattr(tokenizer, "chat_template", None))
        if not self.templated:
            warnings.warn(
                f"{self.name}: the tokenizer has no chat template; rendering conversations as "
                "'Role: content' blocks (pass --rmb-chat-template FILE to use a template)",
                RMBWarning,
                stacklevel=3,
            )
        self.max_length = self._max_length(max_length, model_limit)
        self.keep_first = self._first_token_is_special()
        self.truncated = 0

    def _max_length(self, requested: int | None, model_limit: int | None) -> int:
        limits = [
            limit
            for limit in (getattr(self.tokenizer, "model_max_length", None), model_limit)
            if isinstance(limit, int) and 0 < limit < SANE_LIMIT
        ]
        limit = min(limits) if limits else None
        if requested is not None:
            if limit is not None and requested > limit:
                raise ModelLoadError(f"--rmb-max-length {requested}: {self.name} accepts at most {limit} tokens")
            return requested
        return min(DEFAULT_MAX_LENGTH, limit) if limit else DEFAULT_MAX_LENGTH

    def _first_token_is_special(self) -> bool:
        # [CLS] or BOS lead every text; truncation keeps it so that pooling still finds it.
        probe = self.encode([self.render(ScoreRequest((Message("user", "x"),), "y"))])[0]
        return bool(probe) and probe[0] in set(self.tokenizer.all_special_ids)

    def template_identity(self) -> str:
        """The template text, or ``plain``: part of the fingerprint of whatever renders with it."""
        return str(self.tokenizer.chat_template) if self.templated else "plain"

    def render(self, request: ScoreRequest) -> str:
        messages = as_chat(request.conversation, request.response)
        if self.templated:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        return plain_render(messages)

    def encode(self, texts: list[str]) -> list[list[int]]:
        # A chat template writes its own BOS; the plain fallback needs the tokenizer's specials.
        encoded = self.tokenizer(texts, add_special_tokens=not self.templated)
        return encoded["input_ids"]

    def truncate(self, ids: list[int]) -> list[int]:
        limit = self.max_length
        if len(ids) <= limit:
            return ids
        self.truncated += 1
        # Keep the end, where the response is; lose the start of the conversation.
        if self.keep_first:
            return ids[:1] + ids[len(ids) - (limit - 1):]
        return ids[len(ids) - limit:]

    def token_ids(self, requests: Sequence[ScoreRequest]) -> list[list[int]]:
        """Rendered, tokenized and truncated: exactly what the model reads."""
        return [self.truncate(ids) for ids in self.encode([self.render(r) for r in requests])]

    def take_truncated(self) -> int:
        count, self.truncated = self.truncated, 0
        return count


class HFRewardModel(PointwiseModel):
    """A scorer over a loaded ``AutoModelForSequenceClassification`` and its tokenizer."""

    def __init__(self, model, tokenizer, settings: ModelSettings, name: str | None = None, weights: str = ""):
        import torch

        self._torch = torch
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name or settings.target
        self._weights = weights or weights_identity(settings, model)
        self._revision = resolved_revision(settings, model)
        self._device = next(model.parameters()).device
        self.batch_tokens: int | None = GPU_BATCH_TOKENS if self._device.type == "cuda" else CPU_BATCH_TOKENS
        labels = model.config.num_labels
        if settings.reward_index is None and labels != 1:
            raise ModelLoadError(
                f"{self.name} has {labels} output labels ({', '.join(map(str, model.config.id2label.values()))}); "
                "pass --rmb-reward-index N to say which logit is the reward"
            )
        self._reward_index = settings.reward_index or 0
        if not 0 <= self._reward_index < labels:
            raise ModelLoadError(f"--rmb-reward-index {self._reward_index}: the model has {labels} output labels")
        self._renderer = ChatRenderer(
            tokenizer, self.name, chat_template=settings.chat_template, max_length=settings.max_length,
            model_limit=getattr(model.config, "max_position_embeddings", None),
        )
        self._templated = self._renderer.templated
        self._pad_id = self._ensure_pad_token()
        self.max_length = self._renderer.max_length
        self._tokens: dict[ScoreRequest, list[int]] = {}
        self._lengths: dict[ScoreRequest, tuple[int, int]] = {}  # (rendered, kept) tokens, for facts()
        self._counters: dict[str, float] = {"truncated": 0}
        self._sharing: PrefixSharing | None = None
        self._sharing_off = "off (--rmb-prefix-sharing off)"
        if settings.prefix_sharing != "off":
            self._setup_sharing(settings.prefix_sharing)

    def _ensure_pad_token(self) -> int:
        tokenizer, config = self.tokenizer, self.model.config
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
        """Everything a score depends on, hashed: names the score-cache file."""
        parts = [
            f"scorer hf {SCORER_VERSION}",
            self.name,
            self._weights,
            str(self.model.dtype),
            str(self.max_length),
            str(self._reward_index),
            self.tokenizer.chat_template if self._templated else "plain",
        ]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]

    def describe(self) -> dict:
        template = self.tokenizer.chat_template if self._templated else "plain"
        return {
            "revision": self._revision,
            "weights": self._weights,
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "device": str(self._device),
            "max_length": self.max_length,
            "truncation_side": "left (the start of the conversation is dropped)",
            "reward_index": self._reward_index,
            "chat_template_sha256": hashlib.sha256(str(template).encode()).hexdigest()[:16],
            "prefix_sharing": self._sharing.describe() if self._sharing else self._sharing_off,
        }

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
        plain = self._forward(rows)
        # float32 agrees to ~1e-6; half precision rounds differently along the two paths.
        tolerance = 1e-4 if self.model.dtype == self._torch.float32 else 5e-2
        if any(abs(a - b) > tolerance * max(1.0, abs(b)) for a, b in zip(shared, plain)):
            return (f"scores with a shared prefix differ from scores without it ({shared} vs {plain}): "
                    "the head does not pool the last token")
        return None

    def plan_batches(self, requests: Sequence[ScoreRequest], costs: Sequence[int], max_batch_size: int,
                     max_batch_cost: int) -> list[list[int]]:
        """The engine's batches: a shared prefix's answers together when sharing is on."""
        from pytest_rmb.batching import pack_batches

        if self._sharing is None:
            return pack_batches(costs, max_batch_size, max_batch_cost)
        self.cost(requests)
        rows = [self._tokens[r] for r in requests]
        return self._sharing.plan(requests, rows, costs, max_batch_size, max_batch_cost)

    def score(self, batch: Sequence[ScoreRequest]) -> list[float]:
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
            "score": self._forward([kept])[0],
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


def weights_identity(settings: ModelSettings, model) -> str:
    """A local checkpoint: the hash of its weight files; a hub model: its resolved commit."""
    path = Path(settings.target).expanduser()
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file()):
            digest.update(file.relative_to(path).as_posix().encode())
            with open(file, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
        return f"weights {digest.hexdigest()}"
    return f"hub {settings.target} {resolved_revision(settings, model)}"


def resolved_revision(settings: ModelSettings, model) -> str:
    return getattr(model.config, "_commit_hash", None) or settings.revision or "main"


# A Hugging Face id is NAME or OWNER/NAME of letters, digits, '-', '_' and '.'.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")


def check_spec_before_loading(spec: str) -> None:
    """Fail at once, instead of after the hub's retries, on a spec that cannot be a model.

    Not a local directory and either not shaped like a hub id, or a bare name close to a built-in
    baseline's (``lenght``), or anything at all while offline and absent from the local cache.
    """
    from pytest_rmb.backends import BASELINE_NAMES, closest_names

    path = Path(spec).expanduser()
    if path.is_dir():
        return
    if spec.startswith(("/", "./", "../", "~")) or path.exists():
        raise ModelLoadError(f"--rmb-model {spec}: no such directory")
    close = closest_names(spec, BASELINE_NAMES)
    baselines = ", ".join(BASELINE_NAMES)
    hint = f" (did you mean {', '.join(close)}?)" if close else f"; the built-in baselines are {baselines}"
    if not _HUB_ID.fullmatch(spec):
        raise ModelLoadError(f"--rmb-model {spec}: not a local directory and not a Hugging Face model id{hint}")
    if close and "/" not in spec:
        raise ModelLoadError(f"--rmb-model {spec}: not a built-in baseline, a local directory or a model "
                             f"id with an owner{hint}")
    if _offline() and not _in_local_cache(spec):
        raise ModelLoadError(f"--rmb-model {spec}: not a local directory, and HF_HUB_OFFLINE is set with "
                             f"no copy in the local Hugging Face cache{hint}")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _in_local_cache(spec: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a dependency of transformers
        return True
    return isinstance(try_to_load_from_cache(spec, "config.json"), str)


def load_hf(settings: ModelSettings) -> HFRewardModel:
    """Load a model id or a local checkpoint directory as a sequence-classification reward model."""
    try:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - both are dependencies
        raise ModelLoadError(f"--rmb-model {settings.model}: transformers is not importable: {exc}") from exc

    spec = settings.target
    check_spec_before_loading(spec)
    device = resolve_device(settings.device, settings.worker_index)
    dtype = resolve_dtype(settings.dtype, device)
    common = {"revision": settings.revision, "trust_remote_code": settings.trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec, **common)
        model_kwargs = {**common, "dtype": dtype}
        if settings.attn_implementation:
            model_kwargs["attn_implementation"] = settings.attn_implementation
        if settings.device_map:
            model_kwargs["device_map"] = settings.device_map
        model, info = AutoModelForSequenceClassification.from_pretrained(
            spec, output_loading_info=True, **_dtype_keyword(model_kwargs)
        )
    except (OSError, ValueError, ImportError) as exc:
        raise ModelLoadError(f"--rmb-model {settings.model}: cannot load it with transformers: {exc}") from exc
    missing_head = [key for key in info.get("missing_keys", ()) if _is_head_weight(key)]
    if missing_head:
        raise ModelLoadError(
            f"--rmb-model {settings.model}: the checkpoint has no trained reward head "
            f"(missing {', '.join(sorted(missing_head))}); it is a base model, not a reward model"
        )
    if not settings.device_map:
        model = model.to(device)
    return HFRewardModel(model, tokenizer, settings)


def load_causal_lm(settings: ModelSettings, label: str, dtype, device: str | None, needs: str):
    """An ``AutoModelForCausalLM`` with its trained head, on ``device`` (None: by device_map);
    ``needs`` ends the error for a checkpoint without one (why this backend needs a causal LM)."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"revision": settings.revision, "trust_remote_code": settings.trust_remote_code,
                              "dtype": dtype}
    if settings.attn_implementation:
        kwargs["attn_implementation"] = settings.attn_implementation
    if settings.device_map and device is None:
        kwargs["device_map"] = settings.device_map
    try:
        loaded: Any = AutoModelForCausalLM.from_pretrained(settings.target, output_loading_info=True,
                                                           **_dtype_keyword(kwargs))
    except (OSError, ValueError, ImportError, KeyError) as exc:
        raise ModelLoadError(f"{label}: cannot load it as a causal language model with transformers: {exc}") from exc
    model, info = loaded
    head = model.get_output_embeddings()
    head_names = {name for name, p in model.named_parameters(remove_duplicate=False)
                  if head is not None and p is head.weight}
    missing = head_names & set(info.get("missing_keys", ()))
    if head is None or missing:
        raise ModelLoadError(f"{label}: the checkpoint has no trained language-model head "
                             f"({', '.join(sorted(missing)) or 'none'}); {needs}")
    return model if device is None else model.to(device)


def right_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    """(input_ids, attention_mask) of token rows, right-padded to the longest: real tokens keep
    positions 0..n-1 whatever the tokenizer's padding side, so a score does not depend on the
    batch it was in."""
    import torch

    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention[i, : len(row)] = 1
    return input_ids, attention


def _dtype_keyword(kwargs: dict) -> dict:
    # transformers 5 takes `dtype`; 4.x before 4.56 only knows `torch_dtype`.
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    if (major, minor) < (4, 56):
        kwargs = dict(kwargs)
        kwargs["torch_dtype"] = kwargs.pop("dtype")
    return kwargs


def _is_head_weight(key: str) -> bool:
    return key.split(".")[0] in {"score", "classifier", "v_head", "reward_head"} or ".score." in key


BACKEND = Backend(
    "hf", load_hf,
    summary="a Hugging Face sequence-classification reward model: hub id or local checkpoint "
    "(a bare id means hf:; settings through --rmb-dtype, --rmb-revision, --rmb-max-length, ...)",
)
