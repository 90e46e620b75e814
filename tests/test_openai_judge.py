"""``--rmb-model openai:MODEL`` as users run it: pytest sessions against a judge server on
127.0.0.1 (tests/judge_stub.py, its own process, stopped by pid) that misbehaves on demand.

Expectations are computed here from the raw data files and from the stub's own request log,
never from pytest-rmb's output.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

from pytest_rmb.cache import default_cache_dir
from pytest_rmb.judging.prompts import PROMPT_NAMES, load_prompt
from tests.helpers import (
    SAMPLE_DATA,
    SHARED_DATA,
    all_files,
    ctrl_c_reaches_it,
    length_sections,
)
from tests.judge_stub import VERDICT_PROBABILITY, StubServer


@pytest.fixture
def stubs(tmp_path_factory):
    """Start stubs with ``stubs(behaviour, *flags)``; every one is stopped by pid afterwards."""
    started: list[StubServer] = []
    folder = tmp_path_factory.mktemp("stub-logs")

    def start(behaviour: str = "longer", *flags: str) -> StubServer:
        server = StubServer(folder, behaviour, *flags).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def judge(pytester, stub, *args: str, model: str = "stub-judge", data: str = "sample", cacheprovider: bool = False):
    options = [] if cacheprovider else ["-p", "no:cacheprovider"]
    return pytester.runpytest(*options, "--rmb-model", f"openai:{model}", "--rmb-model-arg",
                              f"base_url={stub.base_url}", "--rmb-data", data, *args)


def output(result) -> str:
    return result.stdout.str() + "\n" + result.stderr.str()


def sections(path: Path) -> dict[str, tuple[int, int]]:
    summary = json.loads(path.read_text())
    return {name: (entry["correct"], entry["total"]) for name, entry in summary["sections"].items()
            if entry["total"]}


def unique_comparisons(root: Path, goals=("Helpfulness", "Harmlessness"), kinds=("Pairwise_set", "BoN_set"),
                       every_loser: bool = False) -> int:
    """Distinct first-round comparisons (pairs, and best vs first loser; with ``every_loser``, best
    vs each loser), from the raw files."""
    seen = set()
    for relative, records in all_files(root).items():
        kind_dir, goal_dir = relative.split("/")[:2]
        if kind_dir not in kinds or goal_dir not in goals:
            continue
        for record in records:
            conversation = json.dumps([[m["role"], m["content"]] for m in record["conversation_input"]])
            if "pair_uid" in record:
                seen.add((conversation, record["chosen"]["answer"], record["reject"]["answer"], goal_dir))
            else:
                for loser in record["loser_list"] if every_loser else record["loser_list"][:1]:
                    seen.add((conversation, record["bon_best"]["answer"], loser["answer"], goal_dir))
    return len(seen)


def answered(stub: StubServer) -> list[dict]:
    return [entry for entry in stub.requests() if entry["status"] == 200]


def complete_comparisons(stub: StubServer) -> set[str]:
    """Comparisons the stub answered in both orders (a pair hash, once with each answer as A)."""
    orders: dict[str, set[str]] = {}
    for entry in answered(stub):
        orders.setdefault(entry["pair"], set()).add(entry["a_sha256"])
    return {pair for pair, shown_first in orders.items() if len(shown_first) == 2}


def thirty_pair_scenario(folder: Path) -> None:
    """One custom scenario ``q`` of 30 pairs (a full answer against "No."): one batch, and one
    the prefer-longer judge gets right every time."""
    rows = [{"id": f"q{i}", "prompt": f"Question {i}?", "chosen": f"A full answer to question {i}.",
             "rejected": "No."} for i in range(30)]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "sets.toml").write_text('[[scenario]]\nname = "q"\nkind = "pairwise"\npath = "pairs.jsonl"\n')


def signal_after_answers(process: subprocess.Popen, stub: StubServer, answers: int, signum: int) -> str:
    """Send ``signum`` to ``process`` once ``stub`` has answered ``answers`` requests; what it printed."""
    try:
        deadline = time.monotonic() + 60
        while len(answered(stub)) < answers and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.02)
        os.kill(process.pid, signum)
        printed, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    return printed or ""


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- the protocol gives the right numbers -----------------------------------------------------


def test_prefer_longer_judge_equals_the_length_baseline_on_the_sample(pytester, stubs):
    stub = stubs("longer")
    result = judge(pytester, stub, "--rmb-json", "judge.json", "--rmb-jsonl", "judge.jsonl")
    assert result.ret == 0, output(result)
    info = json.loads((pytester.path / "judge.json").read_text())["provenance"]["model_info"]
    assert info["prompt"] == "pair-v2" and info["order"] == "both"
    assert info["prompt_sha256"] == load_prompt("pair-v2").sha256
    expected = length_sections(SAMPLE_DATA)
    assert len(expected) == 4
    assert sections(pytester.path / "judge.json") == expected
    # Every comparison was asked in both orders, the chosen answer once as A and once as B.
    for record in records(pytester.path / "judge.jsonl"):
        for verdict in record["verdicts"]:
            if verdict is not None:
                assert [o["chosen"] for o in verdict["detail"]["orders"]] == ["A", "B"]
    # ... and the same samples are right as with the length baseline itself.
    length = pytester.runpytest("-p", "no:cacheprovider", "--rmb-model", "length", "--rmb-data", "sample",
                                "--rmb-json", "length.json")
    assert length.ret == 0
    outcomes = json.loads((pytester.path / "judge.json").read_text())["outcomes"]
    assert outcomes == json.loads((pytester.path / "length.json").read_text())["outcomes"]


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"the real RMB data is not at {SHARED_DATA}")
def test_prefer_longer_judge_equals_the_length_baseline_on_real_scenarios(pytester, stubs):
    stub = stubs("longer")
    chosen = ("Open QA/Hypothetical Scenarios.json", "Rewrite/Textual ExpansionReduction.json")
    select = ["-k", "hypothetical_scenarios or textual_expansionreduction"]
    result = judge(pytester, stub, *select, "--rmb-model-arg", "concurrency=32", "--rmb-json", "judge.json",
                   data=str(SHARED_DATA))
    assert result.ret == 0, output(result)
    expected = length_sections(SHARED_DATA, goals=("Helpfulness",), files=chosen)
    assert sum(total for _, total in expected.values()) > 100
    assert sections(pytester.path / "judge.json") == expected


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"the real RMB data is not at {SHARED_DATA}")
def test_prefer_longer_judge_equals_the_length_baseline_on_all_of_rmb(pytester, stubs):
    # Every scenario, both orders, through HTTP and the outcome stage: ~3 minutes on 2 cores.
    stub = stubs("longer")
    result = judge(pytester, stub, "--rmb-model-arg", "concurrency=64", "--rmb-no-cache", "--rmb-json", "judge.json",
                   "-p", "no:terminal", data=str(SHARED_DATA))
    assert result.ret == 0, output(result)[-3000:]
    expected = length_sections(SHARED_DATA)
    assert len(expected) == 4 and sum(total for _, total in expected.values()) > 5000
    assert sections(pytester.path / "judge.json") == expected


def test_always_a_judge_scores_zero_under_both_orders_with_a_full_flip_rate(pytester, stubs, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")  # a terminal wide enough for a scenario's row on one line
    stub = stubs("always-a")
    result = judge(pytester, stub, "-m", "harmlessness", "--rmb-json", "s.json", "--rmb-jsonl", "s.jsonl",
                   "--rmb-show-scenarios")
    assert result.ret == 0, output(result)  # misses are measurements, not errors
    assert {name: correct for name, (correct, _) in sections(pytester.path / "s.json").items()} == {
        "harmlessness.pairwise": 0, "harmlessness.bon": 0}
    files = all_files(SAMPLE_DATA)
    pairs = sum(len(v) for k, v in files.items() if k.startswith("Pairwise_set/Harmlessness/"))
    lists = sum(len(v) for k, v in files.items() if k.startswith("BoN_set/Harmlessness/"))
    assert pairs and lists
    stats = json.loads((pytester.path / "s.json").read_text())["judge"]["overall"]
    judged = [v for r in records(pytester.path / "s.jsonl") for v in r["verdicts"] if v is not None]
    assert all(v["detail"]["flip"] for v in judged)
    assert stats["flip_rate"] == 1.0 and stats["a_share"] == 1.0 and stats["samples"] == pairs + lists
    # A flip counts half; each pair and each list (stopped at its first comparison) lost to one flip.
    assert stats["tie_adjusted"] == pytest.approx(0.5)
    # Lists with more than one loser stopped after the first flip: their skipped comparisons are
    # unknown, so their tie-adjusted 0.5 is an upper bound, and the report says how many.
    stopped = sum(len(r["verdicts"]) > 1 for r in records(pytester.path / "s.jsonl"))
    assert stopped > 0 and stats["tie_adjusted_inexact"] == stopped
    # The terminal: every scenario's row says the same, under the sections.
    scenarios = {r["scenario"] for r in records(pytester.path / "s.jsonl")}
    for scenario in scenarios:
        for kind in ("pairwise", "bon"):
            result.stdout.re_match_lines([rf"\s*{re.escape(scenario)} {kind}\s+0\.0000\s+0\.5000\s+100\.0%\s+100\.0%\s+0\s+0"])
    result.stdout.fnmatch_lines([f"tie-adjusted: {stopped} Best-of-N list(s) stopped early after a flip*"])

    # Lists stopped early leave comparisons nobody asked; a rerun needs none of them, so it needs
    # no server either.
    stub.stop()
    again = judge(pytester, stub, "-m", "harmlessness", "--rmb-json", "again.json")
    assert again.ret == 0, output(again)
    assert "rmb: 0 requests to stub-judge: the cache holds every verdict this run needs" in output(again)
    assert sections(pytester.path / "again.json") == sections(pytester.path / "s.json")
    stub.start()


@pytest.mark.parametrize("behaviour", ["both-tags", "starts-with-a", "think-only"])
def test_judges_without_a_usable_verdict_never_score(pytester, stubs, behaviour):
    stub = stubs(behaviour)
    result = judge(pytester, stub, "-m", "harmlessness", "--rmb-model-arg", "parse_retries=1",
                   "--rmb-json", "s.json", "--rmb-jsonl", "s.jsonl")
    assert result.ret == 0, output(result)
    assert all(correct == 0 for correct, _ in sections(pytester.path / "s.json").values())
    for record in records(pytester.path / "s.jsonl"):
        first = record["verdicts"][0]
        assert first["won"] is None and first["reason"].startswith("no verdict") and first["error"] is None
    # Each order asked once, then once more as a follow-up: 2 orders x 2 tries per comparison.
    comparisons = unique_comparisons(SAMPLE_DATA, goals=("Harmlessness",))
    asked = Counter(entry["pair"] for entry in answered(stub))
    assert len(asked) == comparisons and set(asked.values()) == {4}
    assert all(entry["messages"] in (2, 4) for entry in answered(stub))


def test_logprobs_give_p_chosen_averaged_over_both_orders(pytester, stubs):
    stub = stubs("longer", "--logprobs")
    result = judge(pytester, stub, "-m", "harmlessness and pairwise", "--rmb-jsonl", "s.jsonl")
    assert result.ret == 0, output(result)
    raw = {str(r["pair_uid"]): r for records_ in all_files(SAMPLE_DATA).values() for r in records_ if "pair_uid" in r}
    p = VERDICT_PROBABILITY
    for record in records(pytester.path / "s.jsonl"):
        source = raw[record["uid"]]
        chosen, rejected = len(source["chosen"]["answer"]), len(source["reject"]["answer"])
        # Longer chosen: p in both orders; shorter: 1-p in both; equal: the stub says A both times.
        expected = p if chosen > rejected else 1 - p if chosen < rejected else (p + 1 - p) / 2
        assert record["verdicts"][0]["p_first"] == pytest.approx(expected)
        assert record["p_chosen"] == pytest.approx(expected)
    assert all(entry["logprobs"] for entry in answered(stub))


def test_logprobs_false_asks_for_none(pytester, stubs):
    stub = stubs("longer", "--logprobs")
    result = judge(pytester, stub, "-m", "harmlessness and pairwise", "--rmb-model-arg", "logprobs=false",
                   "--rmb-jsonl", "s.jsonl")
    assert result.ret == 0, output(result)
    assert not any(entry["logprobs"] for entry in answered(stub))
    assert all(r["verdicts"][0]["p_first"] is None for r in records(pytester.path / "s.jsonl"))


def test_votes_keep_every_vote_and_vary_the_seed(pytester, stubs):
    stub = stubs("longer")
    result = judge(pytester, stub, "-m", "harmlessness and pairwise", "--rmb-model-arg", "votes=3",
                   "--rmb-model-arg", "temperature=0.7", "--rmb-model-arg", "seed=11", "--rmb-jsonl", "s.jsonl")
    assert result.ret == 0, output(result)
    for record in records(pytester.path / "s.jsonl"):
        for entry in record["verdicts"][0]["detail"]["orders"]:
            assert len(entry["votes"]) == 3
    comparisons = unique_comparisons(SAMPLE_DATA, goals=("Harmlessness",), kinds=("Pairwise_set",))
    log = answered(stub)
    assert len(log) == comparisons * 2 * 3
    assert {entry["seed"] for entry in log} == {11, 12, 13}
    assert {entry["temperature"] for entry in log} == {0.7}


def test_order_random_asks_once_with_positions_fixed_by_seed_and_comparison(pytester, stubs):
    stub = stubs("longer")
    slots = []
    for cache in ("cache-a", "cache-b"):
        result = judge(pytester, stub, "-m", "pairwise", "--rmb-model-arg", "order=random",
                       "--rmb-cache-dir", cache, "--rmb-jsonl", f"{cache}.jsonl")
        assert result.ret == 0, output(result)
        slots.append({(r["scenario"], r["uid"]): r["verdicts"][0]["detail"]["orders"][0]["chosen"]
                      for r in records(pytester.path / f"{cache}.jsonl")})
    assert slots[0] == slots[1]
    assert set(slots[0].values()) == {"A", "B"}
    comparisons = unique_comparisons(SAMPLE_DATA, kinds=("Pairwise_set",))
    assert len(answered(stub)) == 2 * comparisons  # one request per comparison, per run
    reseeded = judge(pytester, stub, "-m", "pairwise", "--rmb-model-arg", "order=random", "--rmb-seed", "1",
                     "--rmb-cache-dir", "cache-c", "--rmb-jsonl", "c.jsonl")
    assert reseeded.ret == 0
    other = {(r["scenario"], r["uid"]): r["verdicts"][0]["detail"]["orders"][0]["chosen"]
             for r in records(pytester.path / "c.jsonl")}
    assert other != slots[0]


def test_replicas_share_the_load_one_conversation_to_one_replica(pytester, stubs):
    first, second = stubs("longer"), stubs("longer")
    result = pytester.runpytest("-p", "no:cacheprovider", "--rmb-model", "openai:stub-judge", "--rmb-model-arg",
                                f"base_url={first.base_url},{second.base_url}", "--rmb-data", "sample",
                                "-m", "harmlessness", "--rmb-json", "s.json")
    assert result.ret == 0, output(result)
    assert answered(first) and answered(second)
    assert sections(pytester.path / "s.json") == length_sections(SAMPLE_DATA, goals=("Harmlessness",))
    # Affinity routing (the default): every request about one conversation (both orders, every
    # comparison of a list) reached one replica, so its prefix cache reads the question once.
    where: dict[str, set[int]] = {}
    for replica, stub in enumerate((first, second)):
        for entry in answered(stub):
            where.setdefault(entry["question"], set()).add(replica)
    assert where and all(len(replicas) == 1 for replicas in where.values())
    assert {r for replicas in where.values() for r in replicas} == {0, 1}
    # Round-robin spreads them, and gives the same numbers.
    third, fourth = stubs("longer"), stubs("longer")
    result = pytester.runpytest("-p", "no:cacheprovider", "--rmb-model", "openai:stub-judge", "--rmb-model-arg",
                                f"base_url={third.base_url},{fourth.base_url}", "--rmb-model-arg", "routing=round-robin",
                                "--rmb-data", "sample", "-m", "harmlessness", "--rmb-json", "r.json", "--rmb-no-cache")
    assert result.ret == 0, output(result)
    assert sections(pytester.path / "r.json") == sections(pytester.path / "s.json")
    spread: dict[str, set[int]] = {}
    for replica, stub in enumerate((third, fourth)):
        for entry in answered(stub):
            spread.setdefault(entry["question"], set()).add(replica)
    assert any(len(replicas) == 2 for replicas in spread.values())


# -- cache, resume, cost ----------------------------------------------------------------------


def test_tokens_are_summed_with_cached_ones_apart_and_reruns_are_free(pytester, stubs):
    stub = stubs("longer")
    select = ["-m", "harmlessness"]
    first = judge(pytester, stub, *select, "--rmb-json", "first.json")
    assert first.ret == 0, output(first)
    log = answered(stub)
    # Announced before the first request: every comparison the selection may need, in both orders.
    planned = 2 * unique_comparisons(SAMPLE_DATA, goals=("Harmlessness",), every_loser=True)
    announced = re.search(r"rmb: (\d+) requests, ~(\d+) prompt tokens to stub-judge \(fewer when Best-of-N lists "
                          r"stop early\)", output(first))
    assert announced and int(announced.group(1)) == planned >= len(log)
    prompt = sum(entry["usage"]["prompt_tokens"] for entry in log)
    completion = sum(entry["usage"]["completion_tokens"] for entry in log)
    assert prompt <= int(announced.group(2)) <= 2 * prompt  # the estimate errs high, not wildly
    engine = json.loads((pytester.path / "first.json").read_text())["engine"]
    assert (engine["prompt_tokens"], engine["completion_tokens"]) == (prompt, completion)
    assert engine["requests"] == len(log)

    listed = len(stub.requests("/models"))
    assert listed == 1  # the first run checked the server once, before its first request
    again = judge(pytester, stub, *select, "--rmb-json", "again.json")
    assert again.ret == 0
    assert len(answered(stub)) == len(log)  # an identical rerun asks nothing...
    assert len(stub.requests("/models")) == listed  # ...not even the list of models
    assert "rmb: 0 requests to stub-judge: the cache holds every verdict this run needs" in output(again)
    engine = json.loads((pytester.path / "again.json").read_text())["engine"]
    assert engine.get("prompt_tokens", 0) == 0
    assert (engine["cached_prompt_tokens"], engine["cached_completion_tokens"]) == (prompt, completion)
    assert sections(pytester.path / "again.json") == sections(pytester.path / "first.json")

    # So the tables of a finished run can be printed again with the server gone; a selection the
    # cache cannot answer still fails at once, naming the server, before any item runs.
    base_url = stub.base_url
    stub.stop()
    offline = judge(pytester, stub, *select, "--rmb-json", "offline.json")
    assert offline.ret == 0, output(offline)
    assert sections(pytester.path / "offline.json") == sections(pytester.path / "first.json")
    more = judge(pytester, stub, "-m", "helpfulness and pairwise", "--rmb-json", "more.json")
    assert more.ret == pytest.ExitCode.USAGE_ERROR
    assert f"cannot list the models at {base_url}/models" in output(more)
    assert json.loads((pytester.path / "more.json").read_text())["status"] == "error"
    stub.start()

    bypass = judge(pytester, stub, *select, "--rmb-no-cache")
    assert bypass.ret == 0
    assert len(answered(stub)) == 2 * len(log)

    # Another prompt is another judge: nothing is reused across prompts.
    criteria = judge(pytester, stub, *select, "--rmb-model-arg", "prompt=pair-v2-criteria")
    assert criteria.ret == 0
    assert len(answered(stub)) == 3 * len(log)


def test_a_server_that_omits_completion_tokens_counts_none_for_them(pytester, stubs):
    stub = stubs("longer", "--omit-usage", "completion_tokens")
    result = judge(pytester, stub, "-m", "harmlessness and pairwise", "--rmb-json", "s.json")
    assert result.ret == 0, output(result)
    log = answered(stub)
    assert log and all("completion_tokens" not in entry["usage"] for entry in log)
    engine = json.loads((pytester.path / "s.json").read_text())["engine"]
    assert engine["prompt_tokens"] == sum(entry["usage"]["prompt_tokens"] for entry in log)
    assert engine.get("completion_tokens", 0) == 0
    assert engine["requests"] == len(log)


def test_a_server_that_dies_mid_run_keeps_every_verdict_and_the_rerun_asks_only_the_rest(pytester, stubs):
    total = unique_comparisons(SAMPLE_DATA, kinds=("Pairwise_set",))
    dying = stubs("longer", "--die-after", "60")
    started = time.monotonic()
    result = judge(pytester, dying, "-m", "pairwise", "--rmb-model-arg", "concurrency=4")
    assert time.monotonic() - started < 120
    assert result.ret not in (0, 4), output(result)
    assert "the judge server stopped answering" in output(result)
    assert "rerun to resume" in output(result)
    kept = complete_comparisons(dying)
    assert 0 < len(kept) < total
    assert not dying.alive()

    fresh = stubs("longer")
    resumed = judge(pytester, fresh, "-m", "pairwise", "--rmb-json", "resumed.json")
    assert resumed.ret == 0, output(resumed)
    asked = answered(fresh)
    assert len(asked) == 2 * (total - len(kept))
    assert not {entry["pair"] for entry in asked} & kept
    assert sections(pytester.path / "resumed.json") == length_sections(SAMPLE_DATA, kinds=("Pairwise_set",))

    identical = judge(pytester, fresh, "-m", "pairwise")
    assert identical.ret == 0
    assert len(answered(fresh)) == len(asked)


def test_budget_tokens_stops_cleanly_within_the_budget(pytester, stubs):
    stub = stubs("longer")
    budget = 3000
    result = judge(pytester, stub, "-m", "pairwise", "--rmb-model-arg", f"budget_tokens={budget}",
                   "--rmb-model-arg", "max_tokens=40", "--rmb-model-arg", "concurrency=2")
    assert result.ret not in (0, 4), output(result)
    assert f"budget_tokens={budget} reached" in output(result)
    spent = sum(entry["usage"]["total_tokens"] for entry in answered(stub))
    assert 0 < spent <= budget
    kept = complete_comparisons(stub)
    before = len(answered(stub))

    # The budget is no part of what a verdict depends on: the rerun without it resumes.
    resumed = judge(pytester, stub, "-m", "pairwise", "--rmb-model-arg", "max_tokens=40")
    assert resumed.ret == 0, output(resumed)
    total = unique_comparisons(SAMPLE_DATA, kinds=("Pairwise_set",))
    assert len(answered(stub)) - before == 2 * (total - len(kept))


# -- transport failures -----------------------------------------------------------------------


def test_429_waits_as_long_as_retry_after_says(pytester, stubs):
    stub = stubs("longer", "--rate-limit", "1", "--retry-after", "1")
    result = judge(pytester, stub, "-m", "pairwise", "-k", "s1_violent", "--rmb-model-arg", "concurrency=1",
                   "--rmb-json", "s.json")
    assert result.ret == 0, output(result)
    assert json.loads((pytester.path / "s.json").read_text())["engine"]["http_retries"] == 1
    log = stub.requests()
    assert log[0]["status"] == 429 and log[1]["status"] == 200
    # Our own backoff would wait at most 0.5 s: the second request came after the server's second.
    assert log[1]["t"] - log[0]["t"] >= 0.95


def test_500s_are_retried_then_the_items_error_and_the_run_fails(pytester, stubs):
    stub = stubs("longer", "--fail-count", "-1")
    result = judge(pytester, stub, "-m", "pairwise", "-k", "s1_violent", "--rmb-model-arg", "retries=1",
                   "--rmb-json", "s.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "HTTP 500" in output(result)
    outcomes = result.parseoutcomes()
    assert outcomes.get("error", 0) + outcomes.get("failed", 0) == 2 and "passed" not in outcomes
    pairs = unique_comparisons(SAMPLE_DATA, goals=("Harmlessness",), kinds=("Pairwise_set",)) // 12
    attempts = Counter((entry["pair"], entry["a_sha256"]) for entry in stub.requests())
    # One order of each comparison was tried twice (retries=1) and failed; the other order is
    # stopped then, as its comparison is an error whatever it says.
    assert len({pair for pair, _ in attempts}) == pairs
    assert max(attempts.values()) == 2
    assert {pair for (pair, _), count in attempts.items() if count == 2} == {pair for pair, _ in attempts}
    # Nothing was cached: a healthy server is asked everything again.
    healthy = stubs("longer")
    assert judge(pytester, healthy, "-m", "pairwise", "-k", "s1_violent").ret == 0
    assert len(answered(healthy)) == pairs * 2


def test_timeouts_are_item_errors_not_verdicts(pytester, stubs):
    stub = stubs("longer", "--delay", "3")
    result = judge(pytester, stub, "-m", "pairwise", "-k", "s1_violent", "--rmb-model-arg", "timeout=0.3",
                   "--rmb-model-arg", "retries=0")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "timed out" in output(result)


# -- start-up ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_server_that_is_down_fails_at_load_within_seconds(pytester):
    port = free_port()
    started = time.monotonic()
    result = pytester.runpytest("-p", "no:cacheprovider", "--rmb-model", "openai:judge", "--rmb-model-arg",
                                f"base_url=http://127.0.0.1:{port}/v1", "--rmb-data", "sample")
    assert time.monotonic() - started < 15
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"http://127.0.0.1:{port}/v1/models" in output(result)
    assert "cannot connect" in output(result)


def test_a_model_the_server_does_not_serve_fails_at_load_naming_what_it_serves(pytester, stubs):
    stub = stubs("longer")
    result = judge(pytester, stub, model="stub-judg")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "does not serve model 'stub-judg'" in output(result)
    assert "did you mean 'stub-judge'" in output(result)
    assert not stub.requests()  # nothing was judged


@pytest.mark.parametrize(("args", "message"), [
    (("votes=3",), "set temperature > 0"),
    (("order=sideways",), "expected one of both, random, fixed"),
    (("prompt_file=missing.txt",), "prompt_file missing.txt: cannot read it"),
    # A key pasted where its variable's name belongs: refused, and never printed.
    (("api_key_env=hf_AbCdEfGhIjKlMnOp0123456789",), "not something that looks like a key"),
    (("api_key_env=sk-test-0123",), "not something that looks like a key"),
    (("api_key_env=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",), "not something that looks like a key"),
    (("api_key_env=hf_short",), "not something that looks like a key"),
])
def test_bad_settings_are_usage_errors(pytester, stubs, args, message):
    stub = stubs("longer")
    options = [part for arg in args for part in ("--rmb-model-arg", arg)]
    result = judge(pytester, stub, *options, "--rmb-json", "s.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in output(result)
    for secret in [arg.partition("=")[2] for arg in args if arg.startswith("api_key_env=")]:
        assert secret not in output(result)
        written = pytester.path / "s.json"
        assert not written.exists() or secret not in written.read_text()


def test_a_prompt_file_is_what_the_judge_sees(pytester, stubs):
    stub = stubs("longer")
    pytester.path.joinpath("judge.txt").write_text(
        "Goal: {goal}\n{question}\n\n[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]"
        "\n\n[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]\n", encoding="utf-8")
    result = judge(pytester, stub, "-m", "harmlessness", "--rmb-model-arg", "prompt_file=judge.txt",
                   "--rmb-json", "s.json")
    assert result.ret == 0, output(result)
    assert sections(pytester.path / "s.json") == length_sections(SAMPLE_DATA, goals=("Harmlessness",))
    assert all(entry["messages"] == 1 for entry in answered(stub))  # no system message in a plain template
    info = json.loads((pytester.path / "s.json").read_text())["provenance"]["model_info"]
    assert info["prompt"] == "file:judge.txt"
    assert info["prompt_sha256"] not in {load_prompt(name).sha256 for name in PROMPT_NAMES}
    both = judge(pytester, stub, "--rmb-model-arg", "prompt_file=judge.txt", "--rmb-model-arg", "prompt=pair-v2")
    assert both.ret == pytest.ExitCode.USAGE_ERROR
    assert "give prompt or prompt_file, not both" in output(both)


# -- secrets ----------------------------------------------------------------------------------


def test_the_api_key_reaches_the_server_and_no_file_the_run_writes(pytester, stubs, monkeypatch):
    key = f"sk-test-{uuid.uuid4().hex}"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    healthy = stubs("longer")
    outputs = ["--rmb-json", "out/s.json", "--rmb-jsonl", "out/s.jsonl", "--junitxml", "out/junit.xml"]
    result = judge(pytester, healthy, "-m", "harmlessness", *outputs, cacheprovider=True)
    assert result.ret == 0, output(result)
    assert {entry["auth_sha256"] for entry in healthy.requests()} == {
        hashlib.sha256(f"Bearer {key}".encode()).hexdigest()}
    # A careless server that repeats the header in its error bodies: the errors reach every output.
    careless = stubs("longer", "--fail-count", "-1", "--echo-auth")
    failed = judge(pytester, careless, "-m", "pairwise", "-k", "s1_violent", "--rmb-model-arg", "retries=0",
                   "--rmb-cache-dir", "other-cache", *outputs, cacheprovider=True)
    assert failed.ret == pytest.ExitCode.TESTS_FAILED
    assert "stub failure" in output(failed)
    ET.parse(pytester.path / "out" / "junit.xml")  # written, and readable
    assert list(default_cache_dir().glob("*.jsonl"))
    written = [path for folder in (pytester.path, default_cache_dir()) for path in folder.rglob("*") if path.is_file()]
    assert len(written) > 5
    for path in written:
        assert key.encode() not in path.read_bytes(), path
    assert key not in output(result) and key not in output(failed)


def test_ctrl_c_keeps_the_verdicts_received_and_the_rerun_resumes(pytester, stubs):
    slow = stubs("longer", "--latency", "0.2")
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--rmb-model", "openai:stub-judge",
               "--rmb-model-arg", f"base_url={slow.base_url}", "--rmb-model-arg", "concurrency=2",
               "--rmb-data", "sample", "-m", "pairwise"]
    process = subprocess.Popen(command, cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               preexec_fn=ctrl_c_reaches_it)
    printed = signal_after_answers(process, slow, 30, signal.SIGINT)
    assert process.returncode == pytest.ExitCode.INTERRUPTED, printed
    complete = len(complete_comparisons(slow))
    total = unique_comparisons(SAMPLE_DATA, kinds=("Pairwise_set",))
    assert 2 < complete < total

    fresh = stubs("longer")
    resumed = judge(pytester, fresh, "-m", "pairwise")
    assert resumed.ret == 0, output(resumed)
    # Everything received was kept, but for the (at most 2, the concurrency) comparisons whose
    # replies were on their way when Ctrl-C came.
    asked = len(answered(fresh)) // 2
    assert total - complete <= asked <= total - complete + 2



def test_a_run_killed_mid_batch_keeps_the_verdicts_of_that_batch(pytester, stubs):
    # One scenario of 30 pairs is one batch; kill -9 (no Ctrl-C handling, no batch end) once 20
    # verdicts have come. Those that came more than a second before the kill are in the cache.
    thirty_pair_scenario(pytester.path)
    slow = stubs("longer", "--latency", "0.2")
    common = ["--rmb-model", "openai:stub-judge", "--rmb-model-arg", "concurrency=1", "--rmb-model-arg",
              "order=fixed", "--rmb-scenarios", "sets.toml"]
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *common, "--rmb-model-arg",
               f"base_url={slow.base_url}"]
    process = subprocess.Popen(command, cwd=pytester.path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    signal_after_answers(process, slow, 20, signal.SIGKILL)
    at_kill = len(answered(slow))
    assert 20 <= at_kill < 30

    fresh = stubs("longer")
    resumed = pytester.runpytest("-p", "no:cacheprovider", *common, "--rmb-model-arg", f"base_url={fresh.base_url}",
                                 "--rmb-json", "s.json")
    assert resumed.ret == 0, output(resumed)
    asked = len(answered(fresh))
    # At 5 answers a second and a save every second, at most 6 answers (and the one in flight)
    # can be lost; without saves during the batch all 30 would be asked again.
    assert 30 - at_kill <= asked <= 30 - at_kill + 7
    summary = json.loads((pytester.path / "s.json").read_text())
    scored = summary["scenarios"]["custom/q"]["pairwise"]
    assert (scored["correct"], scored["total"]) == (30, 30)  # saved verdicts read back as whole ones


def test_progress_moves_with_each_comparison_and_shows_requests_and_tokens(pytester, stubs):
    # A CI log (not a terminal): the first progress line comes after 2 s, in the middle of the one
    # batch of this one scenario, so it can only come from the judge's per-comparison progress.
    thirty_pair_scenario(pytester.path)
    stub = stubs("longer", "--latency", "0.1")
    result = pytester.runpytest("-p", "no:cacheprovider", "--rmb-model", "openai:stub-judge", "--rmb-model-arg",
                                f"base_url={stub.base_url}", "--rmb-scenarios", "sets.toml", "--rmb-model-arg",
                                "concurrency=1", "--rmb-model-arg", "order=fixed")
    assert result.ret == 0, output(result)
    lines = re.findall(r"rmb: scoring custom/q (\d+)/30 comparisons \(\d+%\), [\d.]+ comparisons/s, "
                       r"(\d+)/(\d+) requests, [\d.]+ requests/s, ([\d,]+) tokens", output(result))
    assert lines, output(result)
    done, requests, planned, tokens = lines[0]
    assert 0 < int(done) < 30  # within the batch, not at its end
    assert int(requests) == int(done) and int(planned) == 30  # order=fixed: one request each
    assert int(tokens.replace(",", "")) > 0
    assert "rmb: scored custom/q: 30/30 comparisons" in output(result)


def test_a_base_url_httpx_cannot_use_is_a_usage_error_naming_why_without_the_password(pytester):
    result = pytester.runpytest("-p", "no:cacheprovider", "--rmb-model", "openai:stub-judge", "--rmb-model-arg",
                                "base_url=http://user:hunter2@127.0.0.1:abc/v1", "--rmb-data", "sample")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert ("--rmb-model-arg base_url: 'http://user:***@127.0.0.1:abc/v1' is not a usable URL: "
            "Invalid port: 'abc'") in output(result)
    assert "hunter2" not in output(result)


# -- empty replies ----------------------------------------------------------------------------


def judged(path: Path) -> dict[str, list]:
    """Per sample: what each comparison's verdict says, without its usage (the tokens differ when
    empty replies were paid for on the way)."""
    return {record["uid"]: [None if v is None else (v["won"], v["p_first"], v["reason"], v["detail"]["orders"])
                            for v in record["verdicts"]]
            for record in records(path)}


def test_empty_replies_that_recover_within_the_retries_cost_only_the_retries(pytester, stubs):
    select = ["-m", "harmlessness and pairwise"]
    clean = stubs("longer", "--logprobs")
    assert judge(pytester, clean, *select, "--rmb-cache-dir", "clean", "--rmb-json", "clean.json",
                 "--rmb-jsonl", "clean.jsonl").ret == 0
    # Every question (each comparison in each order) gets whitespace twice, then its answer.
    flaky = stubs("longer", "--logprobs", "--empty-first", "2", "--empty-as", "whitespace")
    result = judge(pytester, flaky, *select, "--rmb-cache-dir", "flaky", "--rmb-json", "flaky.json",
                   "--rmb-jsonl", "flaky.jsonl")
    assert result.ret == 0, output(result)
    assert judged(pytester.path / "flaky.jsonl") == judged(pytester.path / "clean.jsonl")
    flaky_summary = json.loads((pytester.path / "flaky.json").read_text())
    assert flaky_summary["outcomes"] == json.loads((pytester.path / "clean.json").read_text())["outcomes"]
    assert sections(pytester.path / "flaky.json") == length_sections(SAMPLE_DATA, goals=("Harmlessness",),
                                                                     kinds=("Pairwise_set",))
    comparisons = unique_comparisons(SAMPLE_DATA, goals=("Harmlessness",), kinds=("Pairwise_set",))
    log = flaky.requests()
    asked = Counter((entry["pair"], entry["a_sha256"]) for entry in log)
    assert len(asked) == 2 * comparisons and set(asked.values()) == {3}
    assert sum(bool(entry.get("empty")) for entry in log) == 2 * 2 * comparisons
    # Asked again with the client's backoff (0.5 s x 2^n, jittered down to half at most).
    times: dict[tuple[str, str], list[float]] = {}
    for entry in log:
        times.setdefault((entry["pair"], entry["a_sha256"]), []).append(entry["t"])
    for first, second, third in times.values():
        assert second - first >= 0.25 and third - second >= 0.5
    engine = flaky_summary["engine"]
    assert engine["http_retries"] == engine["empty_reply_retries"] == 2 * 2 * comparisons
    assert "empty_replies" not in engine and flaky_summary["judge"]["overall"]["empty_replies"] == 0
    assert not re.search(r"No verdict\s+Empty\s", output(result))  # the column appears only when needed
    # The empty replies were paid for: their tokens are counted.
    assert engine["requests"] == len(log)
    assert engine["prompt_tokens"] == sum(entry["usage"]["prompt_tokens"] for entry in log)


def comparison_of(record: dict, raw: dict[str, dict]) -> tuple[str, str]:
    """SHA-256 of the chosen and the rejected answer of a pairwise JSONL record, from the data file."""
    source = raw[record["uid"]]
    return (hashlib.sha256(source["chosen"]["answer"].encode()).hexdigest(),
            hashlib.sha256(source["reject"]["answer"].encode()).hexdigest())


def test_empty_replies_that_persist_are_misses_asked_again_by_the_next_run(pytester, stubs):
    select = ["-m", "harmlessness and pairwise"]
    # A seeded share of the questions stays empty (null content) however often it is asked.
    broken = stubs("longer", "--empty-first", "1000", "--empty-share", "0.4")
    result = judge(pytester, broken, *select, "--rmb-model-arg", "retries=1", "--rmb-json", "s.json",
                   "--rmb-jsonl", "s.jsonl")
    assert result.ret == 0, output(result)
    log = broken.requests()
    # The answer shown as A in each question that stayed empty, by comparison (pair digest).
    stayed_empty: dict[str, set[str]] = {}
    for entry in log:
        if entry.get("empty"):
            stayed_empty.setdefault(entry["pair"], set()).add(entry["a_sha256"])
    asked = Counter((entry["pair"], entry["a_sha256"]) for entry in log)
    empty_questions = sum(len(shown) for shown in stayed_empty.values())
    # retries=1: each empty question asked twice, every other one once.
    assert {asked[pair, shown] for pair, shown_first in stayed_empty.items() for shown in shown_first} == {2}
    assert len(log) == len(asked) + empty_questions
    comparisons = unique_comparisons(SAMPLE_DATA, goals=("Harmlessness",), kinds=("Pairwise_set",))
    assert 0 < len(stayed_empty) < comparisons

    raw = {str(r["pair_uid"]): r for records_ in all_files(SAMPLE_DATA).values() for r in records_ if "pair_uid" in r}
    empty_shown = set().union(*stayed_empty.values())
    misses = 0
    for record in records(pytester.path / "s.jsonl"):
        chosen, rejected = comparison_of(record, raw)
        verdict = record["verdicts"][0]
        slots = [slot for slot, shown in (("A", chosen), ("B", rejected)) if shown in empty_shown]
        if slots:
            misses += 1
            assert verdict["won"] is None and verdict["error"] is None and verdict["ask_again"] is True
            assert verdict["reason"] == "empty reply (" + " and ".join(f"chosen as {s}" for s in slots) + ")"
            notes = [o.get("notes") for o in verdict["detail"]["orders"]]
            assert notes == [["empty reply"] if o["chosen"] in slots else None for o in verdict["detail"]["orders"]]
        else:
            assert verdict["won"] is not None and "ask_again" not in verdict
    assert misses == len(stayed_empty)
    summary = json.loads((pytester.path / "s.json").read_text())
    assert summary["engine"]["empty_replies"] == misses
    assert summary["engine"]["http_retries"] == empty_questions
    judge_figures = summary["judge"]["overall"]
    assert (judge_figures["empty_replies"], judge_figures["no_verdict"]) == (misses, 0)
    assert "empty reply (chosen as" in output(result)
    assert f"; {misses} comparisons got only empty replies (a rerun asks them again)" in output(result)
    assert re.search(r"No verdict\s+Empty\s+API fail", output(result))

    # None of them was cached: a healthy server is asked exactly those comparisons, in both orders.
    healthy = stubs("longer")
    rerun = judge(pytester, healthy, *select, "--rmb-json", "rerun.json")
    assert rerun.ret == 0, output(rerun)
    assert f"rmb: {2 * misses} requests" in output(rerun)
    again = Counter(entry["pair"] for entry in healthy.requests())
    assert set(again) == set(stayed_empty) and set(again.values()) == {2}
    assert sections(pytester.path / "rerun.json") == length_sections(SAMPLE_DATA, goals=("Harmlessness",),
                                                                      kinds=("Pairwise_set",))
    assert "empty_replies" not in json.loads((pytester.path / "rerun.json").read_text())["engine"]
    assert judge(pytester, healthy, *select).ret == 0
    assert len(healthy.requests()) == 2 * misses  # now all cached


def test_a_server_that_replies_only_empty_stops_the_run_and_nothing_is_cached(pytester, stubs):
    mute = stubs("longer", "--empty-first", "1000", "--empty-as", "blank")
    result = judge(pytester, mute, "-m", "pairwise", "--rmb-model-arg", "retries=0",
                   "--rmb-model-arg", "concurrency=2")
    assert result.ret not in (0, 4), output(result)
    assert "requests in a row failed, the last: an empty reply after 0 retries" in output(result)
    assert 32 <= len(mute.requests()) <= 32 + 2  # the streak, and what was in flight
    healthy = stubs("longer")
    assert judge(pytester, healthy, "-m", "pairwise").ret == 0
    assert len(healthy.requests()) == 2 * unique_comparisons(SAMPLE_DATA, kinds=("Pairwise_set",))
