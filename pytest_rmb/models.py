"""What a reward model is to pytest-rmb: two kinds, one small base class each.

- A *pointwise* model gives one score per (conversation, response): ``score(batch) -> floats``.
- A *pairwise* model gives a verdict per (conversation, answer A, answer B): ``compare(batch) ->
  Verdicts``; an LLM judge is one.

Both declare their capabilities as plain attributes and methods with defaults, instead of being
probed with ``getattr``: what a batch costs, the batch budget they prefer, what their results
depend on (for the cache), counters for the run's stats, provenance for the summary, and cleanup.
A user's object with only ``score(batch)`` (or only ``compare(batch)``) is wrapped by
:func:`as_model`, the one place that looks at what such an object offers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, Protocol

from pytest_rmb.data import Conversation

# Model kinds, in the summary's provenance (model_info.kind). Not "pairwise" alone: that is a kind
# of sample (RMB's pairwise set), which any model kind is scored on.
POINTWISE_MODEL = "pointwise-model"
PAIRWISE_MODEL = "pairwise-model"


class ScoreRequest(NamedTuple):
    """One response to score in its conversation."""

    conversation: Conversation
    response: str


class PairRequest(NamedTuple):
    """One comparison: is ``first`` a better answer to the conversation than ``second``?"""

    conversation: Conversation
    first: str
    second: str
    # The RMB goal of the sample (helpfulness or harmlessness), for judges whose prompt names it.
    goal: str = ""


class ListRequest(NamedTuple):
    """One list to judge at once (listwise): which of ``answers`` is the best answer to the
    conversation? The first is the chosen (pairwise) or best (Best-of-N) one; a pair is a list of two."""

    conversation: Conversation
    answers: tuple[str, ...]
    goal: str = ""


@dataclass(frozen=True)
class Verdict:
    """A pairwise model's decision on one :class:`PairRequest`.

    ``won`` is True when ``first`` beats ``second``, False when it does not, None when the model
    gave no usable verdict (a miss, with ``reason``). ``error`` is set when the request itself
    failed (after the backend's retries): the item becomes an error, never a tie or a loss.
    ``p_first`` is the model's probability that ``first`` is better, when it gives one. ``detail``
    holds JSON-ready extras for the per-sample results (votes, each order's verdict, ...).
    ``ask_again`` marks a miss that asking again may resolve (the judge's reply stayed empty):
    it counts as a miss in this run, is never cached, and the next run asks again.
    """

    won: bool | None
    p_first: float | None = None
    reason: str = ""
    error: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)
    ask_again: bool = False

    def __post_init__(self) -> None:
        if self.ask_again and self.won is not None:
            raise ValueError("only a miss (won=None) can be asked again")

    @property
    def cacheable(self) -> bool:
        """Whether a later run may reuse this verdict: not a failed request, not a miss to ask again."""
        return self.error is None and not self.ask_again

    def as_json(self) -> dict[str, Any]:
        value = {"won": self.won, "p_first": self.p_first, "reason": self.reason, "error": self.error,
                 "detail": dict(self.detail)}
        if self.ask_again:  # only then: every cached verdict keeps the shape it always had
            value["ask_again"] = True
        return value

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Verdict:
        return cls(value["won"], value.get("p_first"), value.get("reason", ""), value.get("error"),
                   value.get("detail") or {}, bool(value.get("ask_again", False)))


class RunStopped(RuntimeError):
    """The model cannot go on in this run (its server is gone, its spending budget is spent): the
    run stops after the current item, as ``-x`` would, and is reported as partial. A backend or a
    user's model raises it (or a subclass); what was already scored is kept and cached."""


class PartialBatchError(Exception):
    """A backend failed part-way through a batch; ``done`` maps batch positions to the results it
    did get, so that the engine caches them before the error ends the scenario."""

    def __init__(self, done: Mapping[int, Any], cause: BaseException):
        super().__init__(str(cause))
        self.done = dict(done)
        self.cause = cause


def request_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def conversation_json(conversation: Conversation) -> list[list[str]]:
    return [[m.role, m.content] for m in conversation]


def conversation_key(conversation: Conversation) -> str:
    """What the answers to one conversation share: the conversation itself, as a routing key."""
    return json.dumps(conversation_json(conversation), ensure_ascii=False)


# Where report_progress goes while the engine scores one batch. A context variable, not an
# attribute set on the model: a user's model may be frozen or slotted, and asyncio.run copies the
# caller's context into the tasks a backend starts.
class BatchReport(Protocol):
    """Where :meth:`RewardModel.report_progress` goes: the engine's per-batch callback."""

    def __call__(self, finished: int, detail: str, results: Mapping[int, Any] | None = None) -> None: ...


_batch_progress: ContextVar[BatchReport | None] = ContextVar("pytest_rmb_batch_progress", default=None)


@contextmanager
def batch_progress(callback: BatchReport | None) -> Iterator[None]:
    """Send :meth:`RewardModel.report_progress` to ``callback`` while the block runs."""
    token = _batch_progress.set(callback)
    try:
        yield
    finally:
        _batch_progress.reset(token)


class RewardModel:
    """Capabilities every model kind shares, with their defaults."""

    kind: ClassVar[str]
    # Token budget per batch the model works best with; None: it does not count tokens, and
    # batches are bounded by the number of requests only (--rmb-batch-size).
    batch_tokens: int | None = None
    # Most requests per batch the model wants (None: --rmb-batch-size decides). HTTP backends ask
    # for large batches so that their concurrency has work to overlap.
    batch_size: int | None = None

    def report_progress(self, finished: int, detail: str, results: Mapping[int, Any] | None = None) -> None:
        """For a backend that finishes a batch's requests one by one (an HTTP judge): how many of
        the batch being scored are finished so far, and a short detail (requests per second,
        tokens so far). The progress bar then moves within a long batch instead of once at its
        end. ``results``, when given, are the batch's finished results so far by position (the
        same values the batch will return): the engine caches them as they come, so a run killed
        mid-batch keeps them. Outside the engine, nothing happens."""
        callback = _batch_progress.get()
        if callback is not None:
            callback(finished, detail, results)

    @property
    def loaded(self) -> bool:
        """Whether the model holds what scoring needs (weights, a checked server). A backend that
        loads on first need stays unloaded through a rerun the cache answers in full."""
        return True

    def load(self) -> None:
        """Load what scoring needs now, so that a failure stops the run before its first batch;
        a backend that loads on first need does it here or at its first request, never twice."""

    def fingerprint(self) -> str | None:
        """Everything the results depend on, hashed: names the cache file. None: not cached."""
        return None

    def take_counters(self) -> dict[str, float]:
        """Backend-specific counts since the last call (truncated texts, tokens used, ...)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Provenance for the summary: revision, dtype, device, settings (never secrets)."""
        return {}

    def close(self) -> None:
        """Release what the model holds (HTTP clients, GPU memory); called once at session end."""


class PointwiseModel(RewardModel):
    """One score per (conversation, response); higher means better."""

    kind: ClassVar[str] = POINTWISE_MODEL
    # The score a model gives an answer it could not score (a rater's "no rating"), or None. A
    # sample with such a score is a miss whatever the others scored: an unrated rejected answer
    # must not hand the chosen one a win it was never judged to have.
    no_score: float | None = None

    def score(self, batch: Sequence[ScoreRequest]) -> Sequence[float]:
        raise NotImplementedError

    def cost(self, batch: Sequence[ScoreRequest]) -> list[int]:
        """What each request costs in the units of ``batch_tokens`` (characters by default)."""
        return [len(r.response) + sum(len(m.content) for m in r.conversation) for r in batch]

    def cache_key(self, request: ScoreRequest) -> str:
        """The key a score is cached under: by default the conversation and response themselves."""
        return request_key(json.dumps(conversation_json(request.conversation) + [request.response]))

    def facts(self, request: ScoreRequest) -> dict[str, Any]:
        """Facts about the request as the model read it, asked for once it is scored: numbers or
        booleans (``{"tokens": 812, "truncated": False}``). Kept in the cache beside the score and
        summed into the run's stats, scored now or not, so that a cached rerun reports the same."""
        return {}


class PairwiseModel(RewardModel):
    """One verdict per (conversation, first, second)."""

    kind: ClassVar[str] = PAIRWISE_MODEL
    # Best-of-N: stop judging a list once the best answer lost one comparison.
    bon_early_stop: bool = True

    def compare(self, batch: Sequence[PairRequest]) -> Sequence[Verdict]:
        raise NotImplementedError

    def preview(self, requests: Sequence[Any]) -> str:
        """One line printed before the first request: what the run will ask for (and cost), given
        the comparisons (PairRequests; a listwise judge: ListRequests) the cache does not hold. Empty:
        nothing to say."""
        return ""

    def cost(self, batch: Sequence[PairRequest]) -> list[int]:
        return [len(r.first) + len(r.second) + sum(len(m.content) for m in r.conversation) for r in batch]

    def cache_key(self, request: PairRequest) -> str:
        return request_key(json.dumps([conversation_json(request.conversation), request.first, request.second,
                                       request.goal]))

    # A judge that names the best of a whole list in one request (listwise): the engine then asks
    # it once per sample, a pair as a list of two, through compare_lists instead of compare, and the
    # Verdict's ``won`` says whether the first answer was picked.
    judges_lists: bool = False

    def compare_lists(self, batch: Sequence[ListRequest]) -> Sequence[Verdict]:
        raise NotImplementedError

    def list_cost(self, batch: Sequence[ListRequest]) -> list[int]:
        return [sum(map(len, r.answers)) + sum(len(m.content) for m in r.conversation) for r in batch]

    def list_cache_key(self, request: ListRequest) -> str:
        # "list" first: a list's verdict never answers a comparison of the same texts, nor the reverse.
        return request_key(json.dumps(["list", conversation_json(request.conversation), list(request.answers),
                                       request.goal]))


class ModelTypeError(TypeError):
    """An object offered as a model that is neither pointwise nor pairwise."""


def as_model(obj: object) -> PointwiseModel | PairwiseModel:
    """The object itself when it is a model; a user's plain object wrapped in an adapter."""
    if isinstance(obj, (PointwiseModel, PairwiseModel)):
        return obj
    if callable(getattr(obj, "score", None)):
        return _PointwiseAdapter(obj)
    if callable(getattr(obj, "compare", None)):
        return _PairwiseAdapter(obj)
    raise ModelTypeError(
        f"{type(obj).__name__} is not a reward model: give it score(batch) -> list[float] "
        "(pointwise) or compare(batch) -> list[Verdict] (pairwise)"
    )


# Token budget for a user's model that counts tokens (has cost()) but names no budget.
DEFAULT_BATCH_TOKENS = 16384


class _Adapter:
    """Takes what a user's object offers and nothing more; the defaults cover the rest."""

    def __init__(self, obj: Any):
        self.wrapped = obj
        has_cost = callable(getattr(obj, "cost", None))
        self.batch_tokens = getattr(obj, "batch_tokens", DEFAULT_BATCH_TOKENS) if has_cost else None
        self.batch_size = getattr(obj, "batch_size", None)
        for name in ("cost", "cache_key", "fingerprint", "take_counters", "describe", "close", "facts"):
            method = getattr(obj, name, None)
            if callable(method):
                setattr(self, name, method)

    def __getattr__(self, name: str) -> Any:
        # Anything else the user's object has (a name, its tokenizer) stays reachable.
        return getattr(self.__dict__["wrapped"], name)


class _PointwiseAdapter(_Adapter, PointwiseModel):
    def score(self, batch: Sequence[ScoreRequest]) -> Sequence[float]:
        return self.wrapped.score(batch)


class _PairwiseAdapter(_Adapter, PairwiseModel):
    def __init__(self, obj: Any):
        super().__init__(obj)
        self.bon_early_stop = getattr(obj, "bon_early_stop", True)

    def compare(self, batch: Sequence[PairRequest]) -> Sequence[Verdict]:
        return self.wrapped.compare(batch)


def as_chat(conversation: Conversation, response: str) -> list[dict[str, str]]:
    """The conversation plus the assistant's response, as chat-template messages."""
    return [{"role": m.role, "content": m.content} for m in conversation] + [
        {"role": "assistant", "content": response}
    ]
