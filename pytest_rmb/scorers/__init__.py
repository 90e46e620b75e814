"""The scorer protocol and how ``--rmb-model`` turns into a scorer.

A scorer is any object with ``score(batch) -> list[float]``: one float per (conversation, response)
request, higher meaning better. Optional: ``cost(batch) -> list[int]`` (token counts, used to sort
and pack batches), ``batch_tokens`` (the token budget per batch it works best with, used when
--rmb-batch-tokens is not given) and ``take_counters() -> dict[str, int]`` (e.g. ``truncated``,
added to the engine's stats). Everything else about a backend lives in its own module here.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

from pytest_rmb.data import Conversation


class ScoreRequest(NamedTuple):
    conversation: Conversation
    response: str


@runtime_checkable
class Scorer(Protocol):
    def score(self, batch: Sequence[ScoreRequest]) -> Sequence[float]:
        """One score per request, in order; higher means the response is better."""


def as_chat(conversation: Conversation, response: str) -> list[dict[str, str]]:
    """The conversation plus the assistant's response, as chat-template messages."""
    return [{"role": m.role, "content": m.content} for m in conversation] + [
        {"role": "assistant", "content": response}
    ]


@dataclass(frozen=True)
class ScorerSettings:
    """Everything a backend may need from the command line, in one immutable bundle."""

    model: str
    seed: int = 0
    revision: str | None = None
    trust_remote_code: bool = False
    device: str = "auto"
    dtype: str = "auto"
    max_length: int | None = None
    attn_implementation: str | None = None
    chat_template: str | None = None
    reward_index: int | None = None
    device_map: str | None = None
    # The pytest-xdist worker number (gw3 -> 3), None in a single process: picks the GPU.
    worker_index: int | None = None


class ScorerLoadError(Exception):
    """``--rmb-model`` names something that cannot be turned into a scorer."""


PYTHON_PREFIX = "python:"


def load_scorer(settings: ScorerSettings) -> Scorer:
    from pytest_rmb.scorers import baselines

    spec = settings.model
    if spec in baselines.BASELINES:
        return baselines.BASELINES[spec](settings)
    if spec.startswith(PYTHON_PREFIX):
        return _load_python_object(spec[len(PYTHON_PREFIX) :], settings)
    # Anything else is a Hugging Face model id or a local checkpoint directory.
    from pytest_rmb.scorers.hf import load_hf

    return load_hf(settings)


def _load_python_object(target: str, settings: ScorerSettings) -> Scorer:
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ScorerLoadError(
            f"--rmb-model {PYTHON_PREFIX}{target}: expected {PYTHON_PREFIX}package.module:factory"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ScorerLoadError(f"--rmb-model {PYTHON_PREFIX}{target}: cannot import {module_name!r}: {exc}") from exc
    try:
        factory = getattr(module, attribute)
    except AttributeError:
        raise ScorerLoadError(
            f"--rmb-model {PYTHON_PREFIX}{target}: module {module_name!r} has no attribute {attribute!r}"
        ) from None
    # A factory may take the settings (device, dtype, seed ...) or nothing at all.
    takes_settings = bool(inspect.signature(factory).parameters)
    scorer = factory(settings) if takes_settings else factory()
    if not isinstance(scorer, Scorer):
        raise ScorerLoadError(
            f"--rmb-model {PYTHON_PREFIX}{target}: {type(scorer).__name__} has no score(batch) method"
        )
    return scorer
