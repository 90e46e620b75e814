"""Sequence-classification reward models through transformers.

Rendering: the conversation plus the response through the tokenizer's chat template (no generation
prompt), tokenized without special tokens so that the template's BOS is not doubled. Batches are
right-padded whatever the tokenizer's ``padding_side``: real tokens then keep positions 0..n-1,
first-token (encoder) and last-token (decoder) pooling both see exactly what they see for the text
alone, and a score does not depend on the batch it was in.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from pathlib import Path

from pytest_rmb.cache import request_key
from pytest_rmb.data import Message
from pytest_rmb.scorers import ScoreRequest, ScorerLoadError, ScorerSettings, as_chat

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


class RMBWarning(UserWarning):
    """Something about the model the user should know, shown once per run."""


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
        raise ScorerLoadError(f"--rmb-device {requested}: CUDA is not available on this machine")
    return requested


def resolve_dtype(requested: str, device: str):
    import torch

    if requested == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[requested]


class HFRewardModel:
    """A scorer over a loaded ``AutoModelForSequenceClassification`` and its tokenizer."""

    def __init__(self, model, tokenizer, settings: ScorerSettings, name: str | None = None, weights: str = ""):
        import torch

        self._torch = torch
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name or settings.model
        self._weights = weights or weights_identity(settings, model)
        self._device = next(model.parameters()).device
        self.batch_tokens = GPU_BATCH_TOKENS if self._device.type == "cuda" else CPU_BATCH_TOKENS
        labels = model.config.num_labels
        if settings.reward_index is None and labels != 1:
            raise ScorerLoadError(
                f"{self.name} has {labels} output labels ({', '.join(map(str, model.config.id2label.values()))}); "
                "pass --rmb-reward-index N to say which logit is the reward"
            )
        self._reward_index = settings.reward_index or 0
        if not 0 <= self._reward_index < labels:
            raise ScorerLoadError(f"--rmb-reward-index {self._reward_index}: the model has {labels} output labels")
        if settings.chat_template:
            tokenizer.chat_template = Path(settings.chat_template).read_text(encoding="utf-8")
        self._templated = bool(getattr(tokenizer, "chat_template", None))
        if not self._templated:
            warnings.warn(
                f"{self.name}: the tokenizer has no chat template; rendering conversations as "
                "'Role: content' blocks (pass --rmb-chat-template FILE to use a template)",
                RMBWarning,
                stacklevel=2,
            )
        self._pad_id = self._ensure_pad_token()
        self.max_length = self._max_length(settings.max_length)
        self._keep_first = self._first_token_is_special()
        self._tokens: dict[ScoreRequest, list[int]] = {}
        self._counters = {"truncated": 0}

    def _ensure_pad_token(self) -> int:
        tokenizer, config = self.tokenizer, self.model.config
        if tokenizer.pad_token_id is None:
            fallback = tokenizer.eos_token or tokenizer.unk_token
            if fallback is None:
                raise ScorerLoadError(f"{self.name}: the tokenizer has no pad, eos or unk token to pad with")
            # What reward-model trainers do for tokenizers without one (TRL, RewardBench).
            tokenizer.pad_token = fallback
        if config.pad_token_id is None:
            config.pad_token_id = tokenizer.pad_token_id
        return config.pad_token_id

    def _max_length(self, requested: int | None) -> int:
        limits = [
            limit
            for limit in (
                getattr(self.tokenizer, "model_max_length", None),
                getattr(self.model.config, "max_position_embeddings", None),
            )
            if isinstance(limit, int) and 0 < limit < SANE_LIMIT
        ]
        model_limit = min(limits) if limits else None
        if requested is not None:
            if model_limit is not None and requested > model_limit:
                raise ScorerLoadError(f"--rmb-max-length {requested}: {self.name} accepts at most {model_limit} tokens")
            return requested
        return min(DEFAULT_MAX_LENGTH, model_limit) if model_limit else DEFAULT_MAX_LENGTH

    def _first_token_is_special(self) -> bool:
        # [CLS] or BOS lead every text; truncation keeps it so that pooling still finds it.
        probe = self._encode([self.render(ScoreRequest((Message("user", "x"),), "y"))])[0]
        return bool(probe) and probe[0] in set(self.tokenizer.all_special_ids)

    def render(self, request: ScoreRequest) -> str:
        messages = as_chat(request.conversation, request.response)
        if self._templated:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        return plain_render(messages)

    def _encode(self, texts: list[str]) -> list[list[int]]:
        # A chat template writes its own BOS; the plain fallback needs the tokenizer's specials.
        encoded = self.tokenizer(texts, add_special_tokens=not self._templated)
        return encoded["input_ids"]

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

    def cache_key(self, request: ScoreRequest) -> str:
        """The cache key of a request: a hash of the exact text the tokenizer sees."""
        return request_key(self.render(request))

    def cost(self, requests: Sequence[ScoreRequest]) -> list[int]:
        """Token counts after rendering and truncation; keeps the ids for ``score``."""
        todo = [r for r in requests if r not in self._tokens]
        if todo:
            for request, ids in zip(todo, self._encode([self.render(r) for r in todo])):
                self._tokens[request] = self._truncate(ids)
        return [len(self._tokens[r]) for r in requests]

    def _truncate(self, ids: list[int]) -> list[int]:
        limit = self.max_length
        if len(ids) <= limit:
            return ids
        self._counters["truncated"] += 1
        # Keep the end, where the response is; lose the start of the conversation.
        if self._keep_first:
            return ids[:1] + ids[len(ids) - (limit - 1):]
        return ids[len(ids) - limit:]

    def take_counters(self) -> dict[str, int]:
        counters, self._counters = self._counters, {"truncated": 0}
        return counters

    def score(self, batch: Sequence[ScoreRequest]) -> list[float]:
        torch = self._torch
        self.cost(batch)
        rows = [self._tokens[r] for r in batch]
        width = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention[i, : len(row)] = 1
        with torch.inference_mode():
            logits = self.model(
                input_ids=input_ids.to(self._device), attention_mask=attention.to(self._device)
            ).logits
        values = logits[:, self._reward_index].float().cpu().tolist()
        for request in batch:
            self._tokens.pop(request, None)
        return values


def weights_identity(settings: ScorerSettings, model) -> str:
    """A local checkpoint: the hash of its weight files; a hub model: its resolved commit."""
    path = Path(settings.model).expanduser()
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file()):
            digest.update(file.relative_to(path).as_posix().encode())
            with open(file, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
        return f"weights {digest.hexdigest()}"
    commit = getattr(model.config, "_commit_hash", None)
    return f"hub {settings.model} {commit or settings.revision or 'main'}"


def load_hf(settings: ScorerSettings) -> HFRewardModel:
    """Load a model id or a local checkpoint directory as a sequence-classification reward model."""
    try:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - both are dependencies
        raise ScorerLoadError(f"--rmb-model {settings.model}: transformers is not importable: {exc}") from exc

    if settings.model.startswith(("/", "./", "../", "~")) and not Path(settings.model).expanduser().is_dir():
        raise ScorerLoadError(f"--rmb-model {settings.model}: no such directory")
    device = resolve_device(settings.device, settings.worker_index)
    dtype = resolve_dtype(settings.dtype, device)
    common = {"revision": settings.revision, "trust_remote_code": settings.trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(settings.model, **common)
        model_kwargs = {**common, "dtype": dtype}
        if settings.attn_implementation:
            model_kwargs["attn_implementation"] = settings.attn_implementation
        if settings.device_map:
            model_kwargs["device_map"] = settings.device_map
        model, info = AutoModelForSequenceClassification.from_pretrained(
            settings.model, output_loading_info=True, **_dtype_keyword(model_kwargs)
        )
    except (OSError, ValueError, ImportError) as exc:
        raise ScorerLoadError(f"--rmb-model {settings.model}: cannot load it with transformers: {exc}") from exc
    missing_head = [key for key in info.get("missing_keys", ()) if _is_head_weight(key)]
    if missing_head:
        raise ScorerLoadError(
            f"--rmb-model {settings.model}: the checkpoint has no trained reward head "
            f"(missing {', '.join(sorted(missing_head))}); it is a base model, not a reward model"
        )
    if not settings.device_map:
        model = model.to(device)
    return HFRewardModel(model, tokenizer, settings)


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
