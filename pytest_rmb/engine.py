"""Batched work for both model kinds: dedupe, length-sorted budget batches, OOM back-off, cache.

The first item of a scenario that runs in a process asks for its outcome; the engine then does the
work of every selected item of that scenario at once, so a model never sees one request per pytest
item, and later items only look their results up.

- A pointwise model's unit of work is a unique (conversation, response) text: :class:`Engine`.
- A pairwise model's unit is a unique (conversation, chosen-or-best, other) comparison:
  :class:`PairwiseEngine`. Best-of-N lists are judged in rounds (best against the first loser of
  every list, then the second loser of the lists still standing, ...) so that a model that stops
  at the first lost comparison (``bon_early_stop``) skips the rest of that list only. A model that
  judges whole lists (``judges_lists``: a listwise judge) is asked once per unique list instead, a
  pair being a list of two.

Both cache each result as its batch finishes and report their stats in one shape. A pointwise model's
per-text facts (token count, truncated or not) are cached beside the score and counted for every
result, scored now or read from the cache, so that the stats describe the run's results; what was
scored now and what came from the cache are counted apart (``texts_scored``, ``cache_hits``).
A result the cache cannot take (a full disk, a folder removed mid-run) is still the run's: it is
counted (``cache_write_failures``), warned about once, and scored like any other.

After the run, :meth:`Engine.self_check` re-scores a seeded sample of texts one at a time (no
padding, no batch) and compares: a score that depends on its batch makes every gate on it moot.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
import warnings
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from pytest_rmb.batching import DEFAULT_BATCH_SIZE, UNLIMITED, pack_batches
from pytest_rmb.cache import ScoreCache
from pytest_rmb.data import Conversation, Sample
from pytest_rmb.models import (
    BatchReport,
    ListRequest,
    PairRequest,
    PairwiseModel,
    PartialBatchError,
    PointwiseModel,
    ScoreRequest,
    Verdict,
    as_model,
    batch_progress,
    conversation_json,
    request_key,
)
from pytest_rmb.outcomes import Outcome, outcome_from_scores, outcome_from_verdicts
from pytest_rmb.progress import NoProgress

TextKey = tuple[Conversation, str]
# Results a model hands over while its batch runs (an HTTP judge's verdicts) are appended to the
# cache at most this often: a run killed mid-batch (kill -9, a lost machine) loses about this many
# seconds of answers, and a batch of thousands costs a few file appends, not one per answer.
SAVE_EVERY_SECONDS = 1.0


class ScoringError(Exception):
    """The model failed or returned something that is not one usable result per request."""


class CacheWriteWarning(UserWarning):
    """Results of this run could not be added to the score cache; the run keeps them."""


@dataclass
class EngineStats:
    """What the work cost, in one shape for both model kinds; backend counters go in ``extra``."""

    texts_scored: int = 0
    response_slots: int = 0
    comparisons_made: int = 0
    comparison_slots: int = 0
    comparisons_skipped: int = 0
    batches: int = 0
    oom_retries: int = 0
    truncated: int = 0
    cache_hits: int = 0
    # Results received but not saved in the cache (the run still uses them; a rerun asks again).
    cache_write_failures: int = 0
    # Processes that loaded the model (weights, a checked server): 0 when the cache answered all.
    model_loads: int = 0
    scoring_seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    def add(self, other: Mapping[str, float]) -> None:
        for name, value in other.items():
            if name in _STAT_FIELDS:
                setattr(self, name, getattr(self, name) + value)
            else:
                self.extra[name] = self.extra.get(name, 0) + value

    def as_dict(self) -> dict[str, float]:
        out = {name: getattr(self, name) for name in _STAT_FIELDS}
        out.update(sorted(self.extra.items()))
        return out

    def is_empty(self) -> bool:
        return self == EngineStats()


_STAT_FIELDS = tuple(f.name for f in fields(EngineStats) if f.name != "extra")


class _BatchRunner:
    """Runs unique requests through a model in batches: cache first, then OOM-safe batches."""

    def __init__(self, model: PointwiseModel | PairwiseModel, *, max_batch_size: int | None,
                 max_batch_cost: int | None,
                 progress, cache: ScoreCache | None,
                 call: Callable[[list], Sequence[Any]], check: Callable[[Any], Any],
                 encode: Callable[[Any], Any], decode: Callable[[Any], Any],
                 cacheable: Callable[[Any], bool] = lambda result: True,
                 facts: Callable[[Any], Mapping[str, Any]] | None = None,
                 warn: Callable[[str], None] | None = None,
                 cache_key: Callable[[Any], str] | None = None,
                 cost: Callable[[list], list[int]] | None = None):
        self._model = model
        # Requests of another shape than the model's own (a listwise judge's lists) bring their
        # own key and cost; the model's batch planner knows only its own requests.
        self._cache_key = cache_key or model.cache_key
        self._cost = cost or model.cost
        self._own_requests = cost is None
        # --rmb-batch-size when given, else what the model asks for (HTTP backends want batches large
        # enough for their concurrency), else 64.
        self._max_batch_size = max_batch_size or model.batch_size or DEFAULT_BATCH_SIZE
        # A model that does not count tokens is bounded by the number of requests alone.
        self._max_batch_cost = UNLIMITED if model.batch_tokens is None else (max_batch_cost or model.batch_tokens)
        self._progress = progress
        self._cache = cache
        self._cached: dict[str, Any] | None = None
        self._cached_facts: dict[str, dict[str, Any]] = {}
        # Cache keys render each request (a chat template for hf:): asked for when planning and
        # again when running, they are computed once.
        self._keys: dict[Any, str] = {}
        self._facts = facts
        # Names the model reports per text; a backend counter of the same name would count twice.
        self._fact_names: set[str] = set()
        self._call = call
        self._check = check
        self._encode = encode
        self._decode = decode
        self._cacheable = cacheable
        self._noun = "scores" if isinstance(model, PointwiseModel) else "verdicts"
        self._unit = "texts" if isinstance(model, PointwiseModel) else "comparisons"
        # How a trouble that costs no result (a failed cache write) reaches the user.
        self._warn = warn or warn_by_warning
        self._write_failure_told = False

    def cached(self, request: Any) -> Any | None:
        """The cache's result for ``request``, decoded; None when it holds none."""
        if self._cache is None:
            return None
        if self._cached is None:
            self._cached, self._cached_facts = self._cache.load_with_facts()
        raw = self._cached.get(self._key(request))
        return None if raw is None else self._decode(raw)

    def _key(self, request: Any) -> str:
        key = self._keys.get(request)
        if key is None:
            key = self._keys[request] = self._cache_key(request)
        return key

    def run(self, requests: list, delta: EngineStats, label: str, store: Callable[[int, Any, bool], None]) -> list[int]:
        """Results of ``requests`` through ``store(index, result, from_cache)``; returns the indices
        scored now."""
        cache_keys: list[str] = []
        if self._cache is not None:
            if self._cached is None:
                self._cached, self._cached_facts = self._cache.load_with_facts()
            cache_keys = [self._keys.pop(r, "") or self._cache_key(r) for r in requests]
            todo = []
            completed: list[tuple[str, Any, dict[str, Any]]] = []
            for i, key in enumerate(cache_keys):
                if key in self._cached:
                    store(i, self._decode(self._cached[key]), True)
                    if self._facts is not None:
                        known = self._cached_facts.get(key)
                        if known is None:
                            # Cached before facts were kept: ask the model once, and keep the answer.
                            known = dict(self._facts(requests[i]))
                            if known:
                                self._cached_facts[key] = known
                                completed.append((key, self._cached[key], known))
                        self._count_facts(known, delta)
                else:
                    todo.append(i)
            delta.cache_hits += len(requests) - len(todo)
            if completed:
                self._append_to_cache(completed, delta)
        else:
            todo = list(range(len(requests)))
        if not todo:
            return todo
        pending = [requests[i] for i in todo]
        costs = self._cost(pending)
        plan = getattr(self._model, "plan_batches", None) if self._own_requests else None
        batches = (plan(pending, costs, self._max_batch_size, self._max_batch_cost) if callable(plan)
                   else pack_batches(costs, self._max_batch_size, self._max_batch_cost))
        try:
            with self._progress.scoring(label, len(todo), self._unit) as advance:
                for batch in batches:
                    indices = [todo[j] for j in batch]
                    shown = 0
                    told = ""  # the last detail passed on
                    saved: dict[int, dict[str, Any]] = {}  # position -> its facts, once cached
                    last_save = time.monotonic()

                    def within_batch(finished: int, detail: str, results: Mapping[int, Any] | None = None) -> None:
                        # Never backwards (a batch halved after out-of-memory reports its halves
                        # afresh), never past the batch.
                        # A new detail alone (a judge's tick: requests in flight, tokens so far)
                        # is passed on too, so the display moves while nothing finishes.
                        nonlocal shown, told, last_save
                        finished = min(finished, len(batch))
                        if finished > shown or detail != told:
                            advance(max(finished - shown, 0), detail)
                            shown, told = max(shown, finished), detail
                        if results is not None and time.monotonic() - last_save >= SAVE_EVERY_SECONDS:
                            self._save_early(requests, indices, results, cache_keys, saved)
                            last_save = time.monotonic()

                    try:
                        values = self._batch([requests[i] for i in indices], delta, within_batch)
                    except PartialBatchError as partial:
                        self._keep(requests, indices, partial.done, cache_keys, store, delta, saved)
                        if isinstance(partial.cause, KeyboardInterrupt):
                            # Ctrl-C: what arrived is cached; stop the run, not just this scenario.
                            raise partial.cause from None
                        raise ScoringError(f"{type(partial.cause).__name__}: {partial.cause}") from partial.cause
                    self._keep(requests, indices, dict(enumerate(values)), cache_keys, store, delta, saved)
                    if len(batch) > shown:
                        advance(len(batch) - shown)
        finally:
            counters = dict(self._model.take_counters())
            for name in self._fact_names:
                counters.pop(name, None)
            delta.add(counters)
        return todo

    def _save_early(self, requests: list, indices: list[int], results: Mapping[int, Any], cache_keys: list[str],
                    saved: dict[int, dict[str, Any]]) -> None:
        """Cache what a running batch has finished and not yet saved (checked as at the batch's
        end; a failed request is not a result). Best effort: whatever goes wrong here is left to
        the batch's end, which keeps the rest; it never reaches the model."""
        if self._cache is None:
            return
        entries = []
        facts_of: dict[int, dict[str, Any]] = {}
        try:
            for position in [p for p in list(results) if p not in saved]:
                try:
                    value = self._check(results[position])
                except Exception:  # noqa: BLE001 - the batch's end reports it
                    continue
                # Facts are asked for once per text: the batch's end counts these.
                facts_of[position] = dict(self._facts(requests[indices[position]])) if self._facts is not None else {}
                if self._cacheable(value):
                    entries.append((cache_keys[indices[position]], self._encode(value), facts_of[position]))
            if entries:
                self._cache.append(entries)
        except Exception:  # noqa: BLE001 - a full disk, say: the batch's end tries again and reports
            return
        saved.update(facts_of)  # only once they are on disk

    def _keep(self, requests: list, indices: list[int], results: Mapping[int, Any], cache_keys: list[str],
              store: Callable[[int, Any, bool], None], delta: EngineStats,
              saved: Mapping[int, dict[str, Any]] | None = None) -> None:
        saved = saved or {}
        done = sorted(results)
        for position in done:
            store(indices[position], results[position], False)
        facts: dict[int, dict[str, Any]] = {}
        if self._facts is not None:
            for position in done:
                facts[position] = (saved[position] if position in saved
                                   else dict(self._facts(requests[indices[position]])))
                self._count_facts(facts[position], delta)
        if self._cache is not None and done:
            # Saved as each batch finishes (and, for a model that hands results over as they come,
            # while it runs: ``saved``). A failed request is not a result: the next run asks again.
            self._append_to_cache([(cache_keys[indices[p]], self._encode(results[p]), facts.get(p) or {})
                                   for p in done if p not in saved and self._cacheable(results[p])], delta)

    def _append_to_cache(self, entries: list[tuple[str, Any, dict[str, Any]]], delta: EngineStats) -> None:
        """Append to the cache; a failed append costs the next run these requests, never this run
        its results (they are stored already), so it is counted and told once, not raised."""
        assert self._cache is not None
        if not entries:
            return
        try:
            self._cache.append(entries)
        except OSError as exc:
            delta.cache_write_failures += len(entries)
            if not self._write_failure_told:
                self._write_failure_told = True
                self._warn(f"cannot write the score cache {self._cache.path} ({exc.strerror or exc}); this run "
                           f"keeps and reports every result, but a rerun will ask for the unsaved {self._noun} "
                           "again (cache_write_failures in the summary's engine stats counts them)")

    def _count_facts(self, facts: Mapping[str, Any], delta: EngineStats) -> None:
        for name, value in facts.items():
            if isinstance(value, bool):
                value = int(value)
            if isinstance(value, (int, float)):
                self._fact_names.add(name)
                delta.add({name: value})

    def _batch(self, batch: list, delta: EngineStats, report: BatchReport | None = None) -> list:
        try:
            with batch_progress(report):
                values = list(self._call(batch))
        except PartialBatchError:
            raise
        except Exception as exc:
            if not _is_out_of_memory(exc) or len(batch) == 1:
                raise
            # Halve and retry: the long requests come first, so a too-large batch shows up at once.
            delta.oom_retries += 1
            _release_cached_memory()
            half = len(batch) // 2
            first = self._batch(batch[:half], delta, report)

            def later(finished: int, detail: str, results: Mapping[int, Any] | None = None) -> None:
                assert report is not None
                shifted = None if results is None else {half + p: v for p, v in results.items()}
                report(half + finished, detail, shifted)

            try:
                second = self._batch(batch[half:], delta, None if report is None else later)
            except PartialBatchError as partial:
                # Positions of the whole batch: the first half's results, then the second's shifted.
                done = dict(enumerate(first))
                done.update({half + p: v for p, v in partial.done.items()})
                raise PartialBatchError(done, partial.cause) from partial.cause
            return first + second
        delta.batches += 1
        if len(values) != len(batch):
            raise ScoringError(f"model returned {len(values)} {self._noun} for a batch of {len(batch)}")
        return [self._check(value) for value in values]


def warn_by_warning(message: str) -> None:
    """A :class:`CacheWriteWarning` (what an xdist worker, with no terminal of its own, can send)."""
    try:
        warnings.warn(CacheWriteWarning(f"pytest-rmb: {message}"), stacklevel=2)
    except CacheWriteWarning:
        # -W error turns the warning into an exception: it must not cost the results it is about.
        # The count in the summary's engine stats still tells.
        pass


def _finite(value: Any) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ScoringError(f"model returned a non-finite score ({number})")
    return number


def _verdict(value: Any) -> Verdict:
    if not isinstance(value, Verdict):
        raise ScoringError(f"pairwise model returned {type(value).__name__}, not a Verdict")
    return value


class _ScenarioEngine:
    """What both engines share: the plan, the once-per-scenario rule, failures, stats."""

    _model: Any  # the pointwise or pairwise model, set by each engine

    def __init__(self, plan: Mapping[str, Sequence[Sample]], progress=None):
        self._plan = dict(plan)
        self._progress = progress or NoProgress()
        self._failed: dict[str, str] = {}
        self._unreported = EngineStats()
        self.totals = EngineStats()
        self._load_counted = False

    def outcome(self, sample: Sample) -> Outcome:
        """The sample's outcome; does the work of its whole scenario on first use."""
        if sample.scenario in self._plan:
            samples = self._plan.pop(sample.scenario)
            try:
                self._work(samples, sample.scenario)
            except Exception as exc:
                self._failed[sample.scenario] = f"{type(exc).__name__}: {exc}"
                raise
        if sample.scenario in self._failed:
            raise ScoringError(f"scenario {sample.scenario} could not be scored: {self._failed[sample.scenario]}")
        return self._outcome(sample)

    def take_unreported(self) -> dict[str, float] | None:
        """Stats accumulated since the last call, to travel with the next test report."""
        if self._unreported.is_empty():
            return None
        delta = self._unreported.as_dict()
        self._unreported = EngineStats()
        return delta

    def _work(self, samples: Iterable[Sample], label: str) -> None:
        started = time.perf_counter()
        delta = EngineStats()
        try:
            self._do_work(samples, label, delta)
        finally:
            if not self._load_counted and self._model_loaded():
                delta.model_loads, self._load_counted = 1, True
            delta.scoring_seconds = time.perf_counter() - started
            self._unreported.add(delta.as_dict())
            self.totals.add(delta.as_dict())

    def _do_work(self, samples: Iterable[Sample], label: str, delta: EngineStats) -> None:
        raise NotImplementedError

    def _model_loaded(self) -> bool:
        return self._model.loaded

    def has_work(self) -> bool:
        """Whether the plan needs anything the cache does not hold: if not, the model need not load."""
        raise NotImplementedError

    def _outcome(self, sample: Sample) -> Outcome:
        raise NotImplementedError


class Engine(_ScenarioEngine):
    """Pointwise models: every unique (conversation, response) scored once."""

    def __init__(
        self,
        given: object,
        plan: Mapping[str, Sequence[Sample]],
        max_batch_size: int | None = None,
        max_batch_cost: int | None = None,
        progress=None,
        cache: ScoreCache | None = None,
        warn: Callable[[str], None] | None = None,
    ):
        super().__init__(plan, progress)
        # A pointwise model, or any object with score(batch) that as_model adapts.
        model = as_model(given)
        assert isinstance(model, PointwiseModel), "Engine scores pointwise models; use PairwiseEngine"
        self._model = model
        self._runner = _BatchRunner(model, max_batch_size=max_batch_size, max_batch_cost=max_batch_cost,
                                    progress=self._progress, cache=cache, call=model.score, check=_finite,
                                    encode=lambda v: v, decode=float, facts=model.facts, warn=warn)
        self._scores: dict[TextKey, float] = {}

    def has_work(self) -> bool:
        seen: set[TextKey] = set()
        for samples in self._plan.values():
            for sample in samples:
                for response in sample.responses:
                    key = (sample.conversation, response.text)
                    if key in seen or key in self._scores:
                        continue
                    seen.add(key)
                    if self._runner.cached(ScoreRequest(*key)) is None:
                        return True
        return False

    def self_check(self, count: int, seed: int, tolerance: float) -> dict[str, Any] | None:
        """Re-score a seeded sample of ``count`` of the texts scored so far one at a time (no
        padding, no batch) and compare with the scores the run used.

        A difference counts against ``tolerance`` relative to the score where the score is larger
        than 1 (half precision rounds relative to magnitude). None when there is nothing to check.
        """
        if count <= 0 or not self._scores:
            return None
        # Sorted by content, so that the same seed picks the same texts whatever the scoring order.
        keys = sorted(self._scores, key=lambda key: request_key(json.dumps(conversation_json(key[0]) + [key[1]])))
        chosen = random.Random(seed).sample(keys, min(count, len(keys)))
        worst: dict[str, Any] = {}
        max_abs = max_scaled = 0.0
        checked = 0
        error = None
        for conversation, text in chosen:
            request = ScoreRequest(conversation, text)
            try:
                values = list(self._model.score([request]))
                if len(values) != 1:
                    raise ScoringError(f"model returned {len(values)} scores for a batch of 1")
                alone = _finite(values[0])
            except Exception as exc:  # noqa: BLE001 - a check that cannot run is reported, not raised
                error = f"{type(exc).__name__}: {exc}"
                break
            self._model.facts(request)  # asked for so that a model that keeps them can let go
            batched = self._scores[conversation, text]
            difference = abs(alone - batched)
            scaled = difference / max(1.0, abs(batched))
            checked += 1
            if scaled > max_scaled or not worst:
                worst = {"batched": batched, "alone": alone, "response_start": text[:80]}
            max_abs = max(max_abs, difference)
            max_scaled = max(max_scaled, scaled)
        # The check's own work is not the run's.
        self._model.take_counters()
        result = {"checked": checked, "max_abs_diff": max_abs, "max_scaled_diff": max_scaled,
                  "tolerance": tolerance, "ok": error is None and max_scaled <= tolerance, "worst": worst}
        if error is not None:
            result["error"] = error
        return result

    def scores(self, sample: Sample) -> tuple[float, ...]:
        """The sample's scores, best/chosen first; scores its whole scenario on first use."""
        return tuple(self.outcome(sample).record["scores"])

    def _outcome(self, sample: Sample) -> Outcome:
        memo = self._scores
        conversation = sample.conversation
        try:
            scores = tuple(memo[conversation, r.text] for r in sample.responses)
        except KeyError:
            # Not part of the selection seen at collection time (a direct call, a late item).
            self._work([sample], "samples")
            scores = tuple(memo[conversation, r.text] for r in sample.responses)
        return outcome_from_scores(sample, scores, self._model.no_score)

    def _do_work(self, samples: Iterable[Sample], label: str, delta: EngineStats) -> None:
        pending: dict[TextKey, None] = {}
        memo = self._scores
        for sample in samples:
            conversation = sample.conversation
            for response in sample.responses:
                delta.response_slots += 1
                key = (conversation, response.text)
                if key not in memo:
                    pending[key] = None
        keys = list(pending)
        if not keys:
            return
        requests = [ScoreRequest(conversation, text) for conversation, text in keys]

        def store(i: int, value: float, from_cache: bool) -> None:
            memo[keys[i]] = value

        delta.texts_scored += len(self._runner.run(requests, delta, label, store))


class PairwiseEngine(_ScenarioEngine):
    """Pairwise models: every unique (conversation, chosen-or-best, other) comparison judged once."""

    def __init__(
        self,
        model: PairwiseModel,
        plan: Mapping[str, Sequence[Sample]],
        goal_of: Mapping[str, str] | None = None,
        max_batch_size: int | None = None,
        max_batch_cost: int | None = None,
        progress=None,
        cache: ScoreCache | None = None,
        warn: Callable[[str], None] | None = None,
    ):
        super().__init__(plan, progress)
        self._model = model
        self._goal_of = dict(goal_of or {})
        self._runner = _BatchRunner(model, max_batch_size=max_batch_size, max_batch_cost=max_batch_cost,
                                    progress=self._progress, cache=cache, call=model.compare, check=_verdict,
                                    encode=Verdict.as_json, decode=Verdict.from_json,
                                    cacheable=lambda verdict: verdict.cacheable, warn=warn)
        self._verdicts: dict[PairRequest, Verdict] = {}
        # A listwise judge: one verdict per unique list, through a runner of its own (its cache keys
        # and costs are the lists', in the same cache file).
        self._lists = bool(getattr(model, "judges_lists", False))
        self._list_runner = None if not self._lists else _BatchRunner(
            model, max_batch_size=max_batch_size, max_batch_cost=max_batch_cost, progress=self._progress,
            cache=cache, call=model.compare_lists, check=_verdict, encode=Verdict.as_json,
            decode=Verdict.from_json, cacheable=lambda verdict: verdict.cacheable, warn=warn,
            cache_key=model.list_cache_key, cost=model.list_cost)
        self._list_verdicts: dict[ListRequest, Verdict] = {}

    def has_work(self) -> bool:
        return bool(self.planned_requests())

    def planned_requests(self) -> list[PairRequest] | list[ListRequest]:
        """Every comparison the selection may need that the cache does not hold: what the run will
        ask the model for, at most (Best-of-N early stop can skip some). A list that lost a cached
        comparison under early stop needs nothing after it: a rerun of a finished run plans none.
        For a listwise judge: every list the cache does not hold."""
        if self._lists:
            lists: dict[ListRequest, None] = {}
            for samples in self._plan.values():
                for sample in samples:
                    listed = self.list_request_of(sample)
                    if self._runner_of_lists().cached(listed) is None:
                        lists[listed] = None
            return list(lists)
        unique: dict[PairRequest, None] = {}
        for samples in self._plan.values():
            for sample in samples:
                for request in self.requests_of(sample):
                    verdict = self._runner.cached(request)
                    if verdict is None:
                        unique[request] = None
                    elif verdict.won is not True and self._model.bon_early_stop:
                        break
        return list(unique)

    def requests_of(self, sample: Sample) -> list[PairRequest]:
        """The sample's comparisons: chosen (or best) first against each other answer in turn."""
        goal = self._goal_of.get(sample.scenario, "")
        first = sample.responses[0].text
        return [PairRequest(sample.conversation, first, other.text, goal) for other in sample.responses[1:]]

    def list_request_of(self, sample: Sample) -> ListRequest:
        """The sample as one list: chosen (or best) first, then the others in upstream order."""
        return ListRequest(sample.conversation, tuple(r.text for r in sample.responses),
                           self._goal_of.get(sample.scenario, ""))

    def _outcome(self, sample: Sample) -> Outcome:
        if self._lists:
            listed = self.list_request_of(sample)
            if listed not in self._list_verdicts:
                self._work([sample], "samples")
            return outcome_from_verdicts(sample, [self._list_verdicts[listed]])
        requests = self.requests_of(sample)
        if any(r not in self._verdicts for r in requests) and not self._lost_early(requests):
            self._work([sample], "samples")
        verdicts: list[Verdict | None] = []
        for request in requests:
            verdicts.append(self._verdicts.get(request))
        return outcome_from_verdicts(sample, verdicts)

    def _lost_early(self, requests: list[PairRequest]) -> bool:
        """An early-stopped list: it lost a comparison, and the rest were skipped on purpose."""
        for request in requests:
            verdict = self._verdicts.get(request)
            if verdict is None:
                return False
            if verdict.won is not True:
                return self._model.bon_early_stop
        return False

    def _do_work(self, samples: Iterable[Sample], label: str, delta: EngineStats) -> None:
        if self._lists:
            self._judge_lists(samples, label, delta)
            return
        # Round r judges the r-th comparison of every sample still standing.
        standing = [self.requests_of(sample) for sample in samples]
        delta.comparison_slots += sum(len(r) for r in standing)
        memo = self._verdicts
        round_index = 0
        while standing:
            pending: dict[Hashable, None] = {}
            for requests in standing:
                request = requests[round_index]
                if request not in memo:
                    pending[request] = None
            keys: list[PairRequest] = list(pending)  # type: ignore[arg-type]
            if keys:
                def store(i: int, verdict: Verdict, from_cache: bool, keys: list[PairRequest] = keys) -> None:
                    memo[keys[i]] = verdict
                    if from_cache:
                        _count_cached_usage(verdict, delta)

                delta.comparisons_made += len(self._runner.run(keys, delta, label, store))
            round_index += 1
            next_standing = []
            for requests in standing:
                if round_index >= len(requests):
                    continue
                verdict = memo[requests[round_index - 1]]
                if verdict.won is not True and self._model.bon_early_stop:
                    delta.comparisons_skipped += len(requests) - round_index
                    continue
                next_standing.append(requests)
            standing = next_standing

    def _judge_lists(self, samples: Iterable[Sample], label: str, delta: EngineStats) -> None:
        """A listwise judge's work: each unique list once. A list is one comparison slot."""
        memo = self._list_verdicts
        pending: dict[ListRequest, None] = {}
        for sample in samples:
            delta.comparison_slots += 1
            request = self.list_request_of(sample)
            if request not in memo:
                pending[request] = None
        keys = list(pending)
        if not keys:
            return

        def store(i: int, verdict: Verdict, from_cache: bool) -> None:
            memo[keys[i]] = verdict
            if from_cache:
                _count_cached_usage(verdict, delta)

        delta.comparisons_made += len(self._runner_of_lists().run(keys, delta, label, store))

    def _runner_of_lists(self) -> _BatchRunner:
        assert self._list_runner is not None, "only a model that judges lists has a runner for them"
        return self._list_runner


def _count_cached_usage(verdict: Verdict, delta: EngineStats) -> None:
    """What a verdict read from the cache cost when it was first asked for, counted apart."""
    usage = verdict.detail.get("usage")
    if isinstance(usage, Mapping):
        delta.add({f"cached_{name}": value for name, value in usage.items() if isinstance(value, (int, float))})


# Largest difference allowed between a score in its batch and the same text scored alone: float32
# agrees to ~1e-6 on one device, half precision rounds to ~3 significant digits.
SELF_CHECK_TOLERANCE = {"float32": 1e-3, "float64": 1e-3, "bfloat16": 5e-2, "float16": 5e-2}


def self_check_tolerance(dtype: object) -> float:
    """The tolerance for a model's dtype as its ``describe()`` names it (float32 when it does not)."""
    name = str(dtype or "float32").removeprefix("torch.")
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
    return SELF_CHECK_TOLERANCE.get(aliases.get(name, name), SELF_CHECK_TOLERANCE["float32"])


def _is_out_of_memory(exc: BaseException) -> bool:
    # Checked by name so that the built-in baselines never import torch.
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def _release_cached_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
