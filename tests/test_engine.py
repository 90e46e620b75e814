import math
from contextlib import contextmanager

import pytest

from pytest_rmb.batching import pack_batches
from pytest_rmb.data import BonSample, Message, PairSample, Response
from pytest_rmb.engine import Engine, ScoringError
from pytest_rmb.models import ListRequest, PairwiseModel, PointwiseModel, Verdict


def conv(text):
    return (Message("user", text),)


def pair_sample(uid, prompt, chosen, rejected, scenario="s/a"):
    return PairSample(scenario, uid, conv(prompt), Response("m", chosen), Response("m", rejected))


def bon_sample(uid, prompt, best, losers, scenario="s/a"):
    return BonSample(scenario, uid, conv(prompt), Response("m", best), tuple(Response("m", x) for x in losers))


class RecordingScorer:
    """Length scorer that remembers every batch it was sent."""

    def __init__(self):
        self.batches = []

    def score(self, batch):
        self.batches.append([r.response for r in batch])
        return [float(len(r.response)) for r in batch]


def test_first_request_scores_the_whole_scenario_once_with_identical_texts_deduped():
    samples = [
        pair_sample("1", "q", "aaa", "b"),
        pair_sample("2", "q", "aaa", "cc"),  # "aaa" for prompt q again
        bon_sample("3", "q", "b", ["aaa", "dddd"]),  # BoN shares texts with the pairs
        pair_sample("4", "other prompt", "aaa", "b"),  # same text, other conversation: scored again
    ]
    scorer = RecordingScorer()
    engine = Engine(scorer, {"s/a": samples}, max_batch_size=100)
    assert engine.scores(samples[0]) == (3.0, 1.0)
    sent = [text for batch in scorer.batches for text in batch]
    assert sorted(sent) == sorted(["aaa", "b", "cc", "dddd", "aaa", "b"])
    assert engine.totals.texts_scored == 6 and engine.totals.response_slots == 9
    # Later items only read.
    assert engine.scores(samples[2]) == (1.0, 3.0, 4.0)
    assert engine.scores(samples[3]) == (3.0, 1.0)
    assert len(scorer.batches) == 1


def test_batches_are_sorted_longest_first_and_capped_in_size():
    texts = ["x" * n for n in (5, 1, 9, 3, 7, 2)]
    samples = [pair_sample(str(i), "q", t, "") for i, t in enumerate(texts)]
    scorer = RecordingScorer()
    Engine(scorer, {"s/a": samples}, max_batch_size=3).scores(samples[0])
    lengths = [[len(t) for t in batch] for batch in scorer.batches]
    assert lengths == [[9, 7, 5], [3, 2, 1], [0]]


def test_pack_batches_respects_the_padded_cost_budget():
    # Budget 20 padded units: longest cost times batch size.
    batches = pack_batches([10, 4, 4, 4, 4, 30, 1], max_batch_size=100, max_batch_cost=20)
    assert batches == [[5], [0, 1], [2, 3, 4, 6]]


def test_engine_stats_travel_once():
    samples = [pair_sample("1", "q", "a", "b")]
    engine = Engine(RecordingScorer(), {"s/a": samples})
    engine.scores(samples[0])
    delta = engine.take_unreported()
    assert delta["texts_scored"] == 2 and delta["response_slots"] == 2 and delta["batches"] == 1
    assert engine.take_unreported() is None


def test_a_sample_outside_the_plan_is_scored_on_demand():
    scorer = RecordingScorer()
    engine = Engine(scorer, {})
    assert engine.scores(pair_sample("1", "q", "ab", "c")) == (2.0, 1.0)


class OutOfMemoryError(RuntimeError):
    """Same name as torch.cuda.OutOfMemoryError, which the engine recognises."""


class SmallMemoryScorer(RecordingScorer):
    def __init__(self, fits):
        super().__init__()
        self.fits = fits
        self.attempts = []

    def score(self, batch):
        self.attempts.append(len(batch))
        if len(batch) > self.fits:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().score(batch)


def test_out_of_memory_halves_the_batch_and_retries():
    samples = [pair_sample(str(i), "q", "x" * (i + 1), "") for i in range(8)]
    scorer = SmallMemoryScorer(fits=2)
    engine = Engine(scorer, {"s/a": samples}, max_batch_size=100)
    assert engine.scores(samples[7]) == (8.0, 0.0)
    assert scorer.attempts[:3] == [9, 4, 2]
    assert all(len(b) <= 2 for b in scorer.batches)
    assert sum(len(b) for b in scorer.batches) == 9
    assert engine.totals.oom_retries > 0


def test_out_of_memory_on_a_single_text_is_raised():
    samples = [pair_sample("1", "q", "a", "b")]
    engine = Engine(SmallMemoryScorer(fits=0), {"s/a": samples})
    with pytest.raises(OutOfMemoryError):
        engine.scores(samples[0])


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (lambda n: [1.0] * (n - 1), "returned 3 scores for a batch of 4"),
        (lambda n: [1.0] * (n - 1) + [math.nan], "non-finite score"),
    ],
)
def test_bad_scorer_output_is_an_error_and_the_scenario_stays_failed(returned, message):
    class Bad:
        def score(self, batch):
            return returned(len(batch))

    samples = [pair_sample("1", "q", "a", "b"), pair_sample("2", "q", "c", "d")]
    engine = Engine(Bad(), {"s/a": samples})
    with pytest.raises(ScoringError, match=message):
        engine.scores(samples[0])
    with pytest.raises(ScoringError, match=r"scenario s/a could not be scored: ScoringError"):
        engine.scores(samples[1])


def test_scorer_cost_method_orders_batches():
    class TokenScorer(RecordingScorer):
        def cost(self, requests):
            return [-len(r.response) for r in requests]  # shortest first, to see it is used

    samples = [pair_sample(str(i), "q", "x" * n, "") for i, n in enumerate((3, 1, 2))]
    scorer = TokenScorer()
    Engine(scorer, {"s/a": samples}, max_batch_size=1).scores(samples[0])
    assert [len(b[0]) for b in scorer.batches] == [0, 1, 2, 3]


class CountingProgress:
    """The engine's progress interface, recording the running count and each detail."""

    def __init__(self):
        self.counts: list[int] = []
        self.details: list[str | None] = []

    @contextmanager
    def scoring(self, label, total, unit="texts"):
        done = 0

        def advance(count, detail=None):
            nonlocal done
            assert count > 0
            done += count
            self.counts.append(done)
            self.details.append(detail)

        yield advance
        self.total = total


def test_progress_within_a_batch_is_monotone_through_out_of_memory_halving_and_ends_at_the_total():
    import dataclasses

    from pytest_rmb.models import PointwiseModel

    @dataclasses.dataclass(frozen=True)  # a user's frozen model: nothing may be set on it
    class Reporting(PointwiseModel):
        fits: int = 2

        def score(self, batch):
            if len(batch) > self.fits:
                raise RuntimeError("CUDA out of memory")
            finished = []
            for i, request in enumerate(batch):
                finished.append(float(len(request.response)))
                self.report_progress(i + 1, f"{i + 1} done")
            return finished

    samples = [pair_sample(str(i), "q", "x" * (i + 1), "") for i in range(4)]  # 5 unique texts
    progress = CountingProgress()
    engine = Engine(Reporting(), {"s/a": samples}, max_batch_size=100, progress=progress)
    assert engine.scores(samples[3]) == (4.0, 0.0)
    assert progress.total == 5 and progress.counts[-1] == 5
    # 5 texts -> out of memory -> halves of 2 and 3 -> the 3 again -> 1 and 2: each half's own
    # count continues where the earlier halves stopped, one step per text.
    assert progress.counts == [1, 2, 3, 4, 5]
    assert progress.details == ["1 done", "2 done", "1 done", "1 done", "2 done"]
    Reporting().report_progress(1, "outside the engine: nothing happens")


class CachedLengths(PointwiseModel):
    """Scores a text by its length, under a given fingerprint: reads another model's cache file."""

    def __init__(self, fingerprint: str):
        self._fingerprint = fingerprint

    def fingerprint(self):
        return self._fingerprint

    def score(self, batch):
        return [float(len(r.response)) for r in batch]


def test_results_handed_over_mid_batch_are_cached_under_their_own_keys_even_if_the_batch_dies(tmp_path,
                                                                                             monkeypatch):
    import pytest_rmb.engine as engine_module
    from pytest_rmb.cache import ScoreCache

    monkeypatch.setattr(engine_module, "SAVE_EVERY_SECONDS", 0.0)  # save at every report

    class Dying(PointwiseModel):
        """Hands each score over as it comes, halves after out-of-memory, then dies on one text."""

        def fingerprint(self):
            return "dying-v1"

        def score(self, batch):
            if len(batch) > 2:
                raise RuntimeError("CUDA out of memory")
            done = {}
            for i, request in enumerate(batch):
                if request.response == "":  # the shortest: scored last, after every halving
                    raise ValueError("the machine went away")
                done[i] = float(len(request.response)) + 0.5
                self.report_progress(len(done), "", done)
            return list(done.values())

    samples = [pair_sample(str(i), "q", "x" * (i + 1), "") for i in range(5)]  # texts of 1..5 x and ""
    cache = ScoreCache(tmp_path, "dying-v1")
    engine = Engine(Dying(), {"s/a": samples}, max_batch_size=100, cache=cache)
    with pytest.raises(ValueError, match="the machine went away"):  # the first item sees the model's error
        engine.scores(samples[0])
    # Every text scored before the failure is cached with its own score, halves or not.
    saved = sorted(cache.load().values())
    assert saved == [1.5, 2.5, 3.5, 4.5, 5.5]
    assert len(cache.path.read_text().splitlines()) == 5  # each once: the batch's end skips the saved

    again = Engine(CachedLengths("dying-v1"), {"s/a": samples}, max_batch_size=100,
                   cache=ScoreCache(tmp_path, "dying-v1"))
    # The five saved scores come back from the cache under their own texts; only "" is scored anew.
    assert [again.scores(s) for s in samples] == [(i + 1.5, 0.0) for i in range(5)]
    assert again.totals.cache_hits == 5


def test_a_partial_failure_after_out_of_memory_halving_keeps_both_halves_under_their_own_texts(tmp_path):
    from pytest_rmb.cache import ScoreCache
    from pytest_rmb.models import PartialBatchError

    class HalvedThenPartial(PointwiseModel):
        def fingerprint(self):
            return "halved-v1"

        def score(self, batch):
            if len(batch) > 3:
                raise RuntimeError("CUDA out of memory")
            scores = {i: float(len(r.response)) + 0.25 for i, r in enumerate(batch)}
            if any(r.response == "" for r in batch):  # the second half: its last text fails
                del scores[len(batch) - 1]
                raise PartialBatchError(scores, ValueError("lost the last one"))
            return list(scores.values())

    samples = [pair_sample(str(i), "q", "x" * (i + 1), "") for i in range(5)]  # 6 texts: 3 + 3
    cache = ScoreCache(tmp_path, "halved-v1")
    engine = Engine(HalvedThenPartial(), {"s/a": samples}, max_batch_size=100, cache=cache)
    with pytest.raises(ScoringError, match="lost the last one"):
        engine.scores(samples[0])
    # Both halves' scores, each under its own text: x*5..x*3 from the first half, x*2 and x from
    # the second (whose positions are shifted by the first half's three).
    by_score = sorted(cache.load().values())
    assert by_score == [1.25, 2.25, 3.25, 4.25, 5.25]
    again = Engine(CachedLengths("halved-v1"), {"s/a": samples}, max_batch_size=100,
                   cache=ScoreCache(tmp_path, "halved-v1"))
    assert [again.scores(s) for s in samples] == [(i + 1.25, 0.0) for i in range(5)]


# -- a listwise pairwise model: one verdict per list ------------------------------------------


class LongestOfList(PairwiseModel):
    """Picks the longest answer of each list (the first of equals), remembering what it was sent;
    compare() must never be called: a listwise model is asked for lists only."""

    judges_lists = True

    def __init__(self):
        self.lists = []

    def fingerprint(self):
        return "longest-of-list-v1"

    def compare(self, batch):
        raise AssertionError("a listwise model is asked for lists, never for comparisons")

    def compare_lists(self, batch):
        self.lists.extend(r.answers for r in batch)
        verdicts = []
        for request in batch:
            lengths = [len(a) for a in request.answers]
            picked = lengths.index(max(lengths))
            verdicts.append(Verdict(picked == 0, reason="" if picked == 0 else f"picked {picked}",
                                    detail={"listwise": True, "answers": len(lengths)}))
        return verdicts


def test_a_listwise_model_is_asked_once_per_unique_list_and_read_from_the_cache_after(tmp_path):
    from pytest_rmb.cache import ScoreCache
    from pytest_rmb.engine import PairwiseEngine

    samples = [
        bon_sample("1", "q", "longest answer", ["short", "mid answer"]),
        bon_sample("2", "q", "tiny", ["a longer loser", "x"]),
        bon_sample("3", "q", "longest answer", ["short", "mid answer"]),  # the same list as 1
        pair_sample("4", "q", "chosen answer", "no"),
    ]
    model = LongestOfList()
    engine = PairwiseEngine(model, {"s/a": samples}, cache=ScoreCache(tmp_path, model.fingerprint()))
    assert engine.planned_requests() == [ListRequest(conv("q"), ("longest answer", "short", "mid answer")),
                                         ListRequest(conv("q"), ("tiny", "a longer loser", "x")),
                                         ListRequest(conv("q"), ("chosen answer", "no"))]
    outcomes = [engine.outcome(s) for s in samples]
    assert [o.correct for o in outcomes] == [True, False, True, True]
    assert outcomes[1].miss == "best not picked of 3 answers (judged worse: picked 1)"
    assert model.lists == [("longest answer", "short", "mid answer"), ("tiny", "a longer loser", "x"),
                           ("chosen answer", "no")]
    assert (engine.totals.comparisons_made, engine.totals.comparison_slots) == (3, 4)

    # A rerun reads every list from the cache and asks nothing.
    again = LongestOfList()
    rerun = PairwiseEngine(again, {"s/a": samples}, cache=ScoreCache(tmp_path, again.fingerprint()))
    assert rerun.planned_requests() == []
    assert [rerun.outcome(s).correct for s in samples] == [True, False, True, True]
    assert again.lists == [] and rerun.totals.cache_hits == 3
