"""Batched scoring: dedupe, length-sorted token-budget batches, OOM back-off, in-process memo.

The first item of a scenario that runs in a process asks for its scores; the engine then scores
every unique (conversation, response) of all the scenario's selected items at once, so a model never
sees one text per pytest item. Later items only look their scores up.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

from pytest_rmb.cache import ScoreCache, request_key
from pytest_rmb.data import Conversation, Sample
from pytest_rmb.progress import NoProgress
from pytest_rmb.scorers import ScoreRequest, Scorer

TextKey = tuple[Conversation, str]
UNLIMITED = 1 << 62
# Token budget for a scorer that counts tokens but does not name its own budget.
DEFAULT_BATCH_TOKENS = 16384


class ScoringError(Exception):
    """The scorer failed or returned something that is not one finite float per request."""


@dataclass
class EngineStats:
    texts_scored: int = 0
    response_slots: int = 0
    batches: int = 0
    oom_retries: int = 0
    truncated: int = 0
    cache_hits: int = 0
    scoring_seconds: float = 0.0

    def add(self, other: Mapping[str, float]) -> None:
        for name, value in other.items():
            if hasattr(self, name):
                setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def character_cost(requests: Sequence[ScoreRequest]) -> list[int]:
    """Default batch cost of a request: its characters (a scorer may count tokens instead)."""
    return [len(r.response) + sum(len(m.content) for m in r.conversation) for r in requests]


def pack_batches(
    costs: Sequence[int], max_batch_size: int, max_batch_cost: int
) -> list[list[int]]:
    """Indices grouped into batches, longest first, so that padding is small and an OOM shows early.

    A batch holds at most ``max_batch_size`` requests and at most ``max_batch_cost`` padded units
    (its size times its longest cost); a single request longer than the budget gets a batch alone.
    """
    order = sorted(range(len(costs)), key=costs.__getitem__, reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        longest_if_added = max(longest, costs[index], 1)
        if current and (
            len(current) >= max_batch_size or longest_if_added * (len(current) + 1) > max_batch_cost
        ):
            batches.append(current)
            current, longest_if_added = [], max(costs[index], 1)
        current.append(index)
        longest = longest_if_added
    if current:
        batches.append(current)
    return batches


class Engine:
    def __init__(
        self,
        scorer: Scorer,
        plan: Mapping[str, Sequence[Sample]],
        max_batch_size: int = 64,
        max_batch_cost: int = UNLIMITED,
        progress=None,
        cache: ScoreCache | None = None,
    ):
        self._scorer = scorer
        self._plan = dict(plan)
        self._max_batch_size = max_batch_size
        self._max_batch_cost = max_batch_cost
        self._progress = progress or NoProgress()
        self._cache = cache
        self._cached: dict[str, float] | None = None
        self._scores: dict[TextKey, float] = {}
        self._failed: dict[str, str] = {}
        self._unreported = EngineStats()
        self.totals = EngineStats()

    def scores(self, sample: Sample) -> tuple[float, ...]:
        """The sample's scores, best/chosen first; scores its whole scenario on first use."""
        if sample.scenario in self._plan:
            self._score_scenario(sample.scenario)
        if sample.scenario in self._failed:
            raise ScoringError(
                f"scenario {sample.scenario} could not be scored: {self._failed[sample.scenario]}"
            )
        memo = self._scores
        conversation = sample.conversation
        try:
            return tuple(memo[conversation, r.text] for r in sample.responses)
        except KeyError:
            # Not part of the selection seen at collection time (a direct call, a late item).
            self._score_samples([sample])
            return tuple(memo[conversation, r.text] for r in sample.responses)

    def take_unreported(self) -> dict[str, float] | None:
        """Stats accumulated since the last call, to travel with the next test report."""
        if self._unreported == EngineStats():
            return None
        delta = self._unreported.as_dict()
        self._unreported = EngineStats()
        return delta

    def _score_scenario(self, scenario: str) -> None:
        samples = self._plan.pop(scenario)
        try:
            self._score_samples(samples, scenario)
        except Exception as exc:
            self._failed[scenario] = f"{type(exc).__name__}: {exc}"
            raise

    def _score_samples(self, samples: Iterable[Sample], label: str = "samples") -> None:
        pending: dict[TextKey, None] = {}
        slots = 0
        memo = self._scores
        for sample in samples:
            conversation = sample.conversation
            for response in sample.responses:
                slots += 1
                key = (conversation, response.text)
                if key not in memo:
                    pending[key] = None
        keys = list(pending)
        started = time.perf_counter()
        delta = EngineStats(response_slots=slots)
        if keys:
            self._score_keys(keys, delta, label)
        delta.scoring_seconds = time.perf_counter() - started
        self._unreported.add(delta.as_dict())
        self.totals.add(delta.as_dict())

    def _score_keys(self, keys: list[TextKey], delta: EngineStats, label: str) -> None:
        requests = [ScoreRequest(conversation, text) for conversation, text in keys]
        cache_keys: list[str] = []
        if self._cache is not None:
            if self._cached is None:
                self._cached = self._cache.load()
            key_of = getattr(self._scorer, "cache_key", None) or default_cache_key
            cache_keys = [key_of(r) for r in requests]
            todo = []
            for i, cache_key in enumerate(cache_keys):
                if cache_key in self._cached:
                    self._scores[keys[i]] = self._cached[cache_key]
                else:
                    todo.append(i)
            delta.cache_hits += len(requests) - len(todo)
        else:
            todo = list(range(len(requests)))
        delta.texts_scored += len(todo)
        if not todo:
            return
        measure = getattr(self._scorer, "cost", None) or character_cost
        costs = measure([requests[i] for i in todo])
        with self._progress.scoring(label, len(todo)) as advance:
            for batch in pack_batches(costs, self._max_batch_size, self._max_batch_cost):
                indices = [todo[j] for j in batch]
                values = self._score_batch([requests[i] for i in indices], delta)
                for i, value in zip(indices, values):
                    self._scores[keys[i]] = value
                if self._cache is not None:
                    # Saved as each batch finishes: a killed run loses at most one batch.
                    self._cache.append((cache_keys[i], value) for i, value in zip(indices, values))
                advance(len(batch))
        take_counters = getattr(self._scorer, "take_counters", None)
        if take_counters is not None:
            delta.add(take_counters())

    def _score_batch(self, batch: list[ScoreRequest], delta: EngineStats) -> list[float]:
        try:
            values = list(self._scorer.score(batch))
        except Exception as exc:
            if not _is_out_of_memory(exc) or len(batch) == 1:
                raise
            # Halve and retry: the long texts come first, so a too-large batch shows up at once.
            delta.oom_retries += 1
            _release_cached_memory()
            half = len(batch) // 2
            return self._score_batch(batch[:half], delta) + self._score_batch(batch[half:], delta)
        delta.batches += 1
        if len(values) != len(batch):
            raise ScoringError(f"scorer returned {len(values)} scores for a batch of {len(batch)}")
        checked = []
        for value in values:
            number = float(value)
            if not math.isfinite(number):
                raise ScoringError(f"scorer returned a non-finite score ({number})")
            checked.append(number)
        return checked


def default_cache_key(request: ScoreRequest) -> str:
    """For scorers that do not say how they render: the conversation and response themselves."""
    return request_key(json.dumps([[m.role, m.content] for m in request.conversation] + [request.response]))


def _is_out_of_memory(exc: BaseException) -> bool:
    # Checked by name so that the built-in baselines never import torch.
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def _release_cached_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
