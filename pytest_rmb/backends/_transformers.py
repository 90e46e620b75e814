"""What the transformers backends (``hf:``, ``dpo:``, ``hf-judge:``) share, and served ``template=client``.

Each of them reads a checkpoint through a tokenizer with a chat template (or the user's
``--rmb-chat-template``), within a context limit, in right-padded batches, and names its cache
from the same provenance (weights, revision, dtype, template). Keeping those pieces here means
one rule each: a limit, a template override or a truncation cannot drift between backends.

Weights load on first need (:class:`LazyWeights`): a rerun that the score cache answers in full
reads only the tokenizer and the config, which are all that rendering, cache keys, fingerprints
and provenance need.

A GGUF file (llama.cpp's format) is read through transformers' ``gguf_file=`` by the backends that
take one (``hf-judge:``): the tokenizer, the config and the de-quantised weights all come from that
one file. The others say so, and how to get a checkpoint they read, instead of a tokenizer error.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_rmb.backends import ModelLoadError, ModelSettings, RMBWarning
from pytest_rmb.data import Message
from pytest_rmb.models import ScoreRequest, as_chat

DEFAULT_MAX_LENGTH = 4096
# Token budget per batch when --rmb-batch-tokens is not given. A GPU wants large batches to stay
# busy; a CPU scores faster in small ones whose activations stay in cache (all-MiniLM-L6-v2 on
# RMB Chat, 2 cores: 14-17% longer with 16384 than with 4096; bench/bench_hf.py --batch-tokens).
GPU_BATCH_TOKENS = 16384
CPU_BATCH_TOKENS = 4096
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
# Tokenizers report "no limit" as a huge sentinel (int(1e30)); anything above this is not a limit.
SANE_LIMIT = 1_000_000

# -- devices and dtypes --------------------------------------------------------------------------


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


def batch_tokens_for(device: Any) -> int:
    kind = getattr(device, "type", str(device).split(":")[0])
    return GPU_BATCH_TOKENS if kind == "cuda" else CPU_BATCH_TOKENS


def input_device(model) -> Any:
    return model.get_input_embeddings().weight.device


# -- tokenizer, template and context -------------------------------------------------------------


def plain_render(messages: list[dict[str, str]]) -> str:
    """The documented fallback for tokenizers without a chat template."""
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def load_tokenizer(settings: ModelSettings, label: str, failure: str = "cannot load its tokenizer with transformers",
                   target: str | None = None):
    """The tokenizer of ``target`` (default: the settings' model) at the settings' revision."""
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:  # pragma: no cover - a dependency
        raise ModelLoadError(f"{label}: transformers is not importable: {exc}") from exc
    source = Source(target) if target else checkpoint_source(settings)
    try:
        return AutoTokenizer.from_pretrained(source.name, revision=settings.revision,
                                             trust_remote_code=settings.trust_remote_code, **source.kwargs())
    except (OSError, ValueError, ImportError, KeyError) as exc:
        raise ModelLoadError(f"{label}: {failure}: {source.failure(exc)}") from exc


def load_config(settings: ModelSettings, label: str, failure: str = "cannot load it with transformers"):
    """The checkpoint's config alone: context length, labels and revision without the weights."""
    from transformers import AutoConfig

    source = checkpoint_source(settings)
    try:
        return AutoConfig.from_pretrained(source.name, revision=settings.revision,
                                          trust_remote_code=settings.trust_remote_code, **source.kwargs())
    except (OSError, ValueError, ImportError, KeyError) as exc:
        raise ModelLoadError(f"{label}: {failure}: {source.failure(exc)}") from exc


def override_chat_template(tokenizer, chat_template: str | None) -> bool:
    """Put --rmb-chat-template FILE on the tokenizer; True when the tokenizer then has a template."""
    if chat_template:
        tokenizer.chat_template = Path(chat_template).read_text(encoding="utf-8")
    return bool(getattr(tokenizer, "chat_template", None))


def template_identity(tokenizer, templated: bool) -> str:
    """The template text, or ``plain``: part of the fingerprint of whatever renders with it."""
    return str(tokenizer.chat_template) if templated else "plain"


def template_digest(identity: str) -> str:
    """The short hash of a template that provenance shows instead of the template."""
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def context_limit(name: str, requested: int | None, tokenizer, configs: Sequence[Any],
                  default: int | None = DEFAULT_MAX_LENGTH) -> int:
    """--rmb-max-length checked against what the tokenizer and every config accept; without it,
    ``default`` within that limit (None: the limit itself, which must then be known)."""
    candidates = [getattr(tokenizer, "model_max_length", None)]
    candidates += [getattr(config, "max_position_embeddings", None) for config in configs]
    limits = [limit for limit in candidates if isinstance(limit, int) and 0 < limit < SANE_LIMIT]
    limit = min(limits) if limits else None
    if requested is not None:
        if limit is not None and requested > limit:
            raise ModelLoadError(f"--rmb-max-length {requested}: {name} accepts at most {limit} tokens")
        return requested
    if default is None:
        if limit is None:
            raise ModelLoadError(f"{name}: neither the tokenizer nor the config gives a context length; "
                                 "pass --rmb-max-length N")
        return limit
    return min(default, limit) if limit else default


def truncate_left(ids: list[int], limit: int, keep_first: bool) -> list[int]:
    """Keep the end, where the response is, and lose the start of the conversation; ``keep_first``
    keeps a leading BOS or [CLS] so that pooling and the model still find it."""
    if len(ids) <= limit:
        return ids
    if keep_first:
        return ids[:1] + ids[len(ids) - (limit - 1):]
    return ids[len(ids) - limit:]


def pad_id(tokenizer) -> int:
    # Any id works: padded positions are masked and come after every real token.
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def right_padded(rows: Sequence[Sequence[int]], pad: int) -> tuple[Any, Any]:
    """(input_ids, attention_mask) of token rows, right-padded to the longest: real tokens keep
    positions 0..n-1 whatever the tokenizer's padding side, so a score does not depend on the
    batch it was in."""
    import torch

    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention[i, : len(row)] = 1
    return input_ids, attention


class ChatRenderer:
    """What a sequence-classification reward model reads for a request, from its tokenizer alone.

    The conversation plus the response through the chat template (or the plain fallback),
    tokenized without doubling the template's special tokens, truncated to ``max_length`` keeping
    the end (and a leading BOS or [CLS]). Shared by ``hf:`` and by served models rendered on this
    side (``vllm:`` / ``sglang:`` with ``template=client``), so both read exactly the same tokens.
    """

    def __init__(self, tokenizer, name: str, *, chat_template: str | None = None, max_length: int | None = None,
                 config: Any = None):
        self.tokenizer = tokenizer
        self.name = name
        self.templated = override_chat_template(tokenizer, chat_template)
        if not self.templated:
            warnings.warn(
                f"{self.name}: the tokenizer has no chat template; rendering conversations as "
                "'Role: content' blocks (pass --rmb-chat-template FILE to use a template)",
                RMBWarning,
                stacklevel=3,
            )
        self.max_length = context_limit(name, max_length, tokenizer, [config] if config is not None else [])
        self.keep_first = self._first_token_is_special()

    def _first_token_is_special(self) -> bool:
        probe = self.encode([self.render(ScoreRequest((Message("user", "x"),), "y"))])[0]
        return bool(probe) and probe[0] in set(self.tokenizer.all_special_ids)

    def template_identity(self) -> str:
        return template_identity(self.tokenizer, self.templated)

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
        return truncate_left(ids, self.max_length, self.keep_first)

    def rows(self, requests: Sequence[ScoreRequest]) -> list[tuple[list[int], int]]:
        """Per request, exactly what the model reads (rendered, tokenized, truncated) and how
        many tokens the rendering had before truncation."""
        return [(self.truncate(ids), len(ids)) for ids in self.encode([self.render(r) for r in requests])]


# -- provenance ------------------------------------------------------------------------------------


def weights_identity(settings: ModelSettings, config) -> str:
    """A local checkpoint: the hash of its weight files (of a GGUF file: that file alone); a hub
    model: its resolved commit (and the GGUF file's name in it)."""
    source = checkpoint_source(settings)
    path = Path(source.name).expanduser()
    if source.gguf_file and (path / source.gguf_file).is_file():
        digest = hashlib.sha256()
        with open(path / source.gguf_file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        return f"gguf {digest.hexdigest()}"
    if source.gguf_file:
        return f"hub {source.name} {resolved_revision(settings, config)} {source.gguf_file}"
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file()):
            digest.update(file.relative_to(path).as_posix().encode())
            with open(file, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
        return f"weights {digest.hexdigest()}"
    return f"hub {settings.target} {resolved_revision(settings, config)}"


def resolved_revision(settings: ModelSettings, config) -> str:
    return getattr(config, "_commit_hash", None) or settings.revision or "main"


def fingerprint(parts: Sequence[str]) -> str:
    """Everything a result depends on, hashed: names the score-cache file."""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


# -- checking and loading --------------------------------------------------------------------------

# A Hugging Face id is NAME or OWNER/NAME of letters, digits, '-', '_' and '.'.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")


def check_spec_before_loading(spec: str, label: str | None = None, *, gguf_file: str | None = None,
                              reads_gguf: bool = False) -> None:
    """Fail at once, instead of after the hub's retries, on a spec that cannot be a model.

    Not a local directory and either not shaped like a hub id, or a bare name close to a built-in
    baseline's (``lenght``), or anything at all while offline and absent from the local cache.
    GGUF files: a backend that ``reads_gguf`` takes a ``.gguf`` file, or a folder or hub id with
    ``gguf_file`` (once the ``gguf`` package is there); any other backend is told what to do instead.
    ``label`` starts the message (default: ``--rmb-model SPEC``).
    """
    from pytest_rmb.backends import BASELINE_NAMES, closest_names

    label = label or f"--rmb-model {spec}"
    path = Path(spec).expanduser()
    if path.is_file():
        if not _is_gguf(path):
            kinds = "a folder with config.json, or a .gguf file" if reads_gguf else "a folder with config.json"
            raise ModelLoadError(f"{label}: a file, not a checkpoint ({kinds})")
        if not reads_gguf:
            raise ModelLoadError(f"{label}: a GGUF file; {NO_GGUF_HERE}")
        if gguf_file:
            raise ModelLoadError(f"{label}: already a GGUF file, and --rmb-model-arg gguf_file={gguf_file} names "
                                 "another; give the file alone, or its folder with gguf_file")
        require_gguf_package(label)
        return
    if path.is_dir():
        _check_folder(path, label, gguf_file, reads_gguf)
        return
    if spec.startswith(("/", "./", "../", "~")) or path.exists():
        raise ModelLoadError(f"{label}: no such {'file' if _is_gguf(path) else 'directory'}")
    close = closest_names(spec, BASELINE_NAMES)
    baselines = ", ".join(BASELINE_NAMES)
    hint = f" (did you mean {', '.join(close)}?)" if close else f"; the built-in baselines are {baselines}"
    if not _HUB_ID.fullmatch(spec):
        raise ModelLoadError(f"{label}: not a local directory and not a Hugging Face model id{hint}")
    if close and "/" not in spec:
        raise ModelLoadError(f"{label}: not a built-in baseline, a local directory or a model id with an owner{hint}")
    if _offline() and not _in_local_cache(spec):
        raise ModelLoadError(f"{label}: not a local directory, and HF_HUB_OFFLINE is set with no copy in the "
                             f"local Hugging Face cache{hint}")
    if gguf_file:
        require_gguf_package(label)


# -- GGUF files ------------------------------------------------------------------------------------

# What a backend that cannot read GGUF says about one: the two ways on.
NO_GGUF_HERE = ("this backend reads transformers checkpoints (a folder with config.json), not GGUF files; "
                "hf-judge: reads a GGUF file directly (--rmb-model hf-judge:FILE.gguf), or convert it to a "
                "checkpoint once with transformers (the docs' \"A judge on your laptop\" page shows how)")


@dataclass(frozen=True)
class Source:
    """What transformers' ``from_pretrained`` reads: a folder or hub id, and a GGUF file in it."""

    name: str
    gguf_file: str | None = None

    def kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}

    def failure(self, exc: BaseException) -> str:
        """Why loading failed; for a GGUF file, what to do instead (transformers reads the GGUF
        files of some architectures only)."""
        if not self.gguf_file:
            return str(exc)
        return (f"{str(exc).rstrip('.')}; transformers reads the GGUF files of some architectures only: load the "
                "checkpoint this file was made from instead, or serve the file with llama.cpp "
                "(python -m llama_cpp.server --model FILE.gguf) and judge with --rmb-model openai:NAME")


def checkpoint_source(settings: ModelSettings) -> Source:
    """``FOLDER/NAME.gguf`` -> (FOLDER, NAME.gguf); otherwise the target, with the ``gguf_file``
    setting where the backend has one."""
    path = Path(settings.target).expanduser()
    if _is_gguf(path) and path.is_file():
        return Source(str(path.parent), path.name)
    return Source(settings.target, settings.args.get("gguf_file") or None)


def require_gguf_package(label: str) -> None:
    """transformers reads GGUF files with the ``gguf`` package, which it does not install."""
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(f"{label}: reading a GGUF file needs the gguf package: pip install gguf")


def _is_gguf(path: Path) -> bool:
    return path.suffix.lower() == ".gguf"


def _check_folder(path: Path, label: str, gguf_file: str | None, reads_gguf: bool) -> None:
    """A folder with ``gguf_file`` must hold it; one with GGUF files but no config.json is not a
    checkpoint, whatever transformers would say about its tokenizer."""
    found = sorted(file.name for file in path.iterdir() if _is_gguf(file) and file.is_file())
    listed = ", ".join(found)
    if gguf_file:
        if not (path / gguf_file).is_file():
            there = f"the GGUF files there: {listed}" if found else "it holds no .gguf file"
            raise ModelLoadError(f"--rmb-model-arg gguf_file={gguf_file}: no such file in {path} ({there})")
        require_gguf_package(label)
        return
    if not found or (path / "config.json").is_file():
        return
    what = f"{label}: no transformers checkpoint here (no config.json), only the GGUF file(s) {listed}"
    if reads_gguf:
        raise ModelLoadError(f"{what}; load one with --rmb-model hf-judge:{path / found[0]} (or --rmb-model-arg "
                             f"gguf_file={found[0]})")
    raise ModelLoadError(f"{what}; {NO_GGUF_HERE}")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _in_local_cache(spec: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a dependency of transformers
        return True
    return isinstance(try_to_load_from_cache(spec, "config.json"), str)


def _model_kwargs(settings: ModelSettings, dtype, device: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"revision": settings.revision, "trust_remote_code": settings.trust_remote_code,
                              "dtype": dtype}
    if settings.attn_implementation:
        kwargs["attn_implementation"] = settings.attn_implementation
    if settings.device_map and device is None:
        kwargs["device_map"] = settings.device_map
    return _dtype_keyword(kwargs)


def load_sequence_classifier(settings: ModelSettings, label: str, dtype, device: str | None):
    """An ``AutoModelForSequenceClassification`` with its trained reward head, on ``device``
    (None: by device_map)."""
    from transformers import AutoModelForSequenceClassification

    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            settings.target, output_loading_info=True, **_model_kwargs(settings, dtype, device))
    except (OSError, ValueError, ImportError) as exc:
        raise ModelLoadError(f"{label}: cannot load it with transformers: {exc}") from exc
    missing_head = [key for key in info.get("missing_keys", ()) if _is_head_weight(key)]
    if missing_head:
        raise ModelLoadError(f"{label}: the checkpoint has no trained reward head (missing "
                             f"{', '.join(sorted(missing_head))}); it is a base model, not a reward model")
    return model if device is None else model.to(device)


def load_causal_lm(settings: ModelSettings, label: str, dtype, device: str | None, needs: str):
    """An ``AutoModelForCausalLM`` with its trained head, on ``device`` (None: by device_map);
    ``needs`` ends the error for a checkpoint without one (why this backend needs a causal LM)."""
    from transformers import AutoModelForCausalLM

    source = checkpoint_source(settings)
    try:
        loaded: Any = AutoModelForCausalLM.from_pretrained(source.name, output_loading_info=True,
                                                           **_model_kwargs(settings, dtype, device), **source.kwargs())
    except (OSError, ValueError, ImportError, KeyError) as exc:
        raise ModelLoadError(f"{label}: cannot load it as a causal language model with transformers: "
                             f"{source.failure(exc)}") from exc
    model, info = loaded
    head = model.get_output_embeddings()
    head_names = {name for name, p in model.named_parameters(remove_duplicate=False)
                  if head is not None and p is head.weight}
    missing = head_names & set(info.get("missing_keys", ()))
    if head is None or missing:
        raise ModelLoadError(f"{label}: the checkpoint has no trained language-model head "
                             f"({', '.join(sorted(missing)) or 'none'}); {needs}")
    return model if device is None else model.to(device)


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


class LazyWeights:
    """A model's weights, loaded by ``load`` on first :meth:`get` (or given already loaded), in
    evaluation mode either way.

    Loading is the expensive part of a run and a fully cached rerun does not need it; everything
    that does not read the weights (rendering, cache keys, fingerprint, provenance) reads the
    tokenizer and the config instead.
    """

    def __init__(self, load: Callable[[], Any] | None = None, model: Any = None):
        if model is None and load is None:
            raise ValueError("LazyWeights needs a model or a way to load one")
        self._load = load
        self._model = model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def get(self) -> Any:
        if self._model is None:
            assert self._load is not None
            self._model = self._load()
        return self._model

    def release(self) -> None:
        self._model = None
        self._load = None


class OneNetwork:
    """For a backend over one network held in ``self._net`` (a :class:`LazyWeights`): the
    ``model`` that loads on first use, and the model protocol's ``loaded`` and ``load()``;
    ``_loaded(model)`` does what needs the weights, once."""

    _net: LazyWeights

    @property
    def model(self):
        """The weights, loaded on first use."""
        self.load()
        return self._net.get()

    @property
    def loaded(self) -> bool:
        return self._net.loaded

    def load(self) -> None:
        if not self._net.loaded:
            self._loaded(self._net.get())

    def _loaded(self, model) -> None:
        raise NotImplementedError


# -- padding-free (packed) batches -----------------------------------------------------------------

PACKING_MODES = ("auto", "on", "off")
PACKING_HELP = (
    "padding-free batches for decoder models: a batch's texts run as one row, each with its own positions "
    "and attending only to itself (hf: the reward read at each text's last token; dpo: each response's "
    "token log-probabilities). auto (the "
    "default): used where a probe at load gives the padded path's scores and the batch costs less packed "
    "(with FlashAttention's variable-length kernel, every batch with any padding; with SDPA or eager "
    "attention, whose mask spans the whole row, only batches whose padding costs more than that mask); on: "
    "every batch, and an error at load for a model it does not fit; off: right-padded batches only"
)


def packing_unsupported(model: Any, *, score_head: bool = True) -> str | None:
    """Why a model's batches cannot be packed; None when they might (a probe then decides).

    A sequence classifier (``score_head``) is packed by running its base model over one row and
    applying the head to each text's last token, which only a decoder's last-token ``score`` head
    allows; a causal LM runs whole, its logits read per text.
    """
    import inspect

    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        return "an encoder-decoder model"
    if score_head and (not hasattr(model, "score") or not hasattr(model.score, "weight")):
        return "its head is not a last-token score layer (an encoder such as BERT pools its first token)"
    runs = getattr(model, getattr(model, "base_model_prefix", ""), None) if score_head else model
    if runs is None:
        return "its base model is not where its config says"
    try:
        if "position_ids" not in inspect.signature(runs.forward).parameters:
            return "its forward takes no position ids"
    except (TypeError, ValueError):
        return "its forward has no readable signature"
    return None


def packing_description(mode: str, supported: bool, varlen: bool, off: str) -> str:
    """What provenance says about packing: ``off`` (why not) unless the model is ``supported``."""
    if not supported:
        return off
    if mode == "on":
        return "on (every batch of two or more texts)"
    if varlen:
        return "auto: supported (FlashAttention's variable-length kernel: every batch with any padding)"
    return "auto: supported (a block mask over the row: batches whose padding costs more than the mask)"


def varlen_attention(model: Any) -> bool:
    """FlashAttention runs each packed text alone (cu_seqlens from the position ids); SDPA and
    eager attention mask a whole row's (query, key) pairs instead."""
    return "flash" in str(getattr(model.config, "_attn_implementation", "") or "")


def packed_pays(cost: Any, widths: Sequence[int], varlen: bool) -> bool:
    """Whether a batch of texts of ``widths`` tokens costs less as one packed row than right-padded
    (``cost``: prefix sharing's :class:`~pytest_rmb.prefix.CostModel`)."""
    if len(widths) < 2:
        return False
    total = sum(widths)
    if varlen:
        pairs = sum(width * width / 2 for width in widths)
    else:
        from pytest_rmb.prefix import MASKED_PAIR_COST

        pairs = total * total * MASKED_PAIR_COST
    return cost.per_token * total + cost.per_pair * pairs < cost.padded_batch(widths)


@dataclass(frozen=True)
class PackedRow:
    """Texts laid end to end in one row, each with its own position ids from 0."""

    ids: list[int]
    positions: list[int]
    starts: list[int]  # where each text starts, then the row's length

    @classmethod
    def of(cls, rows: Sequence[Sequence[int]], keep: Sequence[int]) -> PackedRow:
        """The first ``keep[i]`` tokens of each row."""
        ids: list[int] = []
        positions: list[int] = []
        starts = [0]
        for row, count in zip(rows, keep):
            ids.extend(row[:count])
            positions.extend(range(count))
            starts.append(len(ids))
        return cls(ids, positions, starts)

    def inputs(self, model: Any) -> dict[str, Any]:
        """The keyword arguments of a forward over the row, for ``model`` or its base model.

        No cache: transformers recognises packed position ids only without one, and then masks
        attention to blocks of one text each (SDPA, eager) or hands the text boundaries to
        FlashAttention's varlen kernel, here given once: otherwise that path derives them from the
        position ids again in every layer, a device sync each time.
        """
        import torch

        device = input_device(model)
        inputs: dict[str, Any] = {"input_ids": torch.tensor([self.ids], device=device),
                                  "position_ids": torch.tensor([self.positions], device=device), "use_cache": False}
        if varlen_attention(model):
            bounds = torch.tensor(self.starts, dtype=torch.int32, device=device)
            longest = max(b - a for a, b in zip(self.starts, self.starts[1:]))
            inputs.update(cu_seq_lens_q=bounds, cu_seq_lens_k=bounds, max_length_q=longest, max_length_k=longest)
        return inputs


def packed_forward(model: Any, rows: Sequence[Sequence[int]], pad_id: int,
                   reward_index: int) -> tuple[list[float], int]:
    """A sequence classifier's scores of ``rows`` run as one row without padding, and the tokens
    that spared.

    The head reads each text where the padded path's head reads it (the last token that is not
    the pad token), so the tokens after it are left out: causal attention makes them irrelevant.
    """
    import torch

    from pytest_rmb.prefix import pooled_index

    packed = PackedRow.of(rows, [pooled_index(row, pad_id) + 1 for row in rows])
    base = getattr(model, model.base_model_prefix)
    hidden = base(**packed.inputs(model)).last_hidden_state
    reads = torch.tensor([end - 1 for end in packed.starts[1:]], device=hidden.device)
    logits = model.score(hidden[0, reads])
    saved = len(rows) * max(len(row) for row in rows) - len(packed.ids)
    return logits[:, reward_index].float().cpu().tolist(), saved
