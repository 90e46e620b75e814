"""``--rmb-model panel:NAME`` as users run it: pytest sessions against three stand-in judge servers
on 127.0.0.1 (tests/judge_stub.py, each in its own process).

Two stand-ins prefer the longer answer; the third is the same server asked through a prompt file
that shows the answers the other way round (Assistant A's markers around answer B), so it prefers
the shorter one. The expected numbers are computed here from the raw data files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from pytest_rmb.backends.panel import decide
from pytest_rmb.models import Verdict
from tests.helpers import SAMPLE_DATA, all_files, expected_correct, length_sections

# Answer B shown as Assistant A and answer A as Assistant B: a judge that prefers the longer of what
# it sees as A and B then prefers the shorter of the harness's answers.
SWAPPED_TEMPLATE = (
    "[User Question]\n{question}\n\n"
    "[The Start of Assistant A's Answer]\n{answer_b}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{answer_a}\n[The End of Assistant B's Answer]\n\n"
    "Which is better? End with {verdict_a} or {verdict_b}."
)


def pair_lengths() -> dict[str, tuple[int, int]]:
    """Each pairwise sample's (chosen, rejected) answer lengths by its pair_uid, from the raw files."""
    return {record["pair_uid"]: (len(record["chosen"]["answer"]), len(record["reject"]["answer"]))
            for relative, records in all_files(SAMPLE_DATA).items() if relative.startswith("Pairwise_set")
            for record in records}


def sections(path: Path) -> dict[str, tuple[int, int]]:
    summary = json.loads(path.read_text())
    return {name: (entry["correct"], entry["total"]) for name, entry in summary["sections"].items() if entry["total"]}


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def output(result) -> str:
    return result.stdout.str() + "\n" + result.stderr.str()


def chat_requests(stub) -> int:
    return len(stub.requests())


def complete_comparisons(stub) -> set[str]:
    """Comparisons a stand-in answered in both orders (from its request log: once with each answer as A)."""
    orders: dict[str, set[str]] = {}
    for entry in stub.requests():
        if entry["status"] == 200:
            orders.setdefault(entry["pair"], set()).add(entry["a_sha256"])
    return {pair for pair, shown_first in orders.items() if len(shown_first) == 2}


@pytest.fixture
def swapped_prompt(tmp_path) -> Path:
    path = tmp_path / "swapped.txt"
    path.write_text(SWAPPED_TEMPLATE)
    return path


@pytest.fixture
def trio(stubs, swapped_prompt):
    """Three stand-ins (longer, shorter, longer) and the judges= value that names them."""
    servers = [stubs("--model", "long-1"), stubs("--model", "short"), stubs("--model", "long-2")]
    judges = (f"openai:long-1 base_url={servers[0].base_url};"
              f"openai:short base_url={servers[1].base_url} prompt_file={swapped_prompt};"
              f"openai:long-2 base_url={servers[2].base_url}")
    return servers, judges


def panel(pytester, judges: str, *args: str):
    return pytester.runpytest("-p", "no:cacheprovider", "--rmb-model", "panel:trio", "--rmb-model-arg",
                              f"judges={judges}", "--rmb-data", "sample", *args)


def expected_member(chosen: int, rejected: int, prefers_longer: bool) -> bool:
    """What a stand-in says of (chosen, rejected) asked in both orders: an equal length is a tie,
    which it gives to whichever answer it sees as A, so the two orders disagree: a flip, lost."""
    return (chosen > rejected) if prefers_longer else (chosen < rejected)


# -- the majority gives the right numbers ---------------------------------------------------------


def test_two_longer_judges_outvote_a_shorter_one_and_each_verdict_is_recorded(pytester, trio):
    servers, judges = trio
    result = panel(pytester, judges, "--rmb-json", "panel.json", "--rmb-jsonl", "panel.jsonl")
    assert result.ret == 0, output(result)
    assert "rmb: panel trio of 3 judges; judge 1 (openai:long-1): " in output(result)
    assert "an even split" not in output(result)
    expected = length_sections(SAMPLE_DATA)
    assert len(expected) == 4
    assert sections(pytester.path / "panel.json") == expected
    lengths = pair_lengths()
    splits = 0
    seen = 0
    for record in records(pytester.path / "panel.jsonl"):
        if record.get("kind") != "pairwise":
            continue
        chosen, rejected = lengths[record["uid"]]
        longer = expected_member(chosen, rejected, prefers_longer=True)
        shorter = expected_member(chosen, rejected, prefers_longer=False)
        (verdict,) = record["verdicts"]
        members = verdict["detail"]["members"]
        assert [(m["judge"], m["won"]) for m in members] == [
            ("openai:long-1", longer), ("openai:short", shorter), ("openai:long-2", longer)]
        assert verdict["won"] == longer
        splits += chosen != rejected
        seen += 1
    assert seen == sum(total for section, (_, total) in expected.items() if section.endswith("pairwise"))
    assert splits == sum(c != r for c, r in lengths.values()) > 0
    # Each judge was asked every comparison, in both orders: the same number of requests each.
    counts = [chat_requests(server) for server in servers]
    assert counts[0] == counts[1] == counts[2] > 0
    summary = json.loads((pytester.path / "panel.json").read_text())
    info = summary["provenance"]["model_info"]
    assert [j["judge"] for j in info["judges"]] == ["openai:long-1", "openai:short", "openai:long-2"]
    assert summary["engine"]["requests"] == sum(counts)
    assert [summary["engine"][f"judge_{n}_requests"] for n in (1, 2, 3)] == counts
    # Each judge's agreement with the panel and its accuracy alone, from the raw files: the panel
    # says what the longer judges say; a list stops at its first lost comparison.
    comparisons = agree_short = 0
    for relative, raw in all_files(SAMPLE_DATA).items():
        for record in raw:
            _, (first, *others) = expected_correct(record)
            for other in others:
                comparisons += 1
                agree_short += expected_member(first, other, True) == expected_member(first, other, False)
                if not first > other:
                    break
    pairs = list(lengths.values())
    expected_panel = [
        {"judge": judge, "comparisons": comparisons, "decided": comparisons, "agree": agree,
         "agreement": agree / comparisons, "pairwise_judged": len(pairs), "pairwise_correct": right,
         "accuracy": right / len(pairs)}
        for judge, agree, right in [("openai:long-1", comparisons, sum(c > r for c, r in pairs)),
                                    ("openai:short", agree_short, sum(c < r for c, r in pairs)),
                                    ("openai:long-2", comparisons, sum(c > r for c, r in pairs))]]
    assert summary["judge"]["panel"] == expected_panel
    assert 0 < agree_short < comparisons
    assert (f"panel judge openai:short: agrees with the panel on {agree_short / comparisons:.1%} "
            f"({agree_short}/{comparisons}); alone {expected_panel[1]['accuracy']:.4f} on the {len(pairs)} "
            "pairwise samples it judged") in output(result)


def test_a_panel_needs_no_name(pytester, trio):
    _, judges = trio
    result = pytester.runpytest("-p", "no:cacheprovider", "--rmb-model", "panel:", "--rmb-model-arg",
                                f"judges={judges}", "--rmb-data", "sample", "--rmb-json", "bare.json")
    assert result.ret == 0, output(result)
    assert "rmb: panel of 3 judges; judge 1 (openai:long-1): " in output(result)
    assert sections(pytester.path / "bare.json") == length_sections(SAMPLE_DATA)


def test_an_even_split_is_no_verdict(pytester, stubs, swapped_prompt):
    # Two judges of one spec (the same model name on two servers) are told apart by their place.
    longer, shorter = stubs(), stubs()
    judges = (f"openai:stub-judge base_url={longer.base_url};"
              f"openai:stub-judge base_url={shorter.base_url} prompt_file={swapped_prompt}")
    result = panel(pytester, judges, "-m", "pairwise", "--rmb-json", "even.json", "--rmb-jsonl", "even.jsonl")
    out = output(result)
    assert ("panel trio of 2 judges (an even split, 1-1, is no verdict, so ties will be common; an odd number of "
            "judges, 3 or more, is recommended)") in out
    lengths = pair_lengths()
    reasons = Counter(record["verdicts"][0]["reason"] for record in records(pytester.path / "even.jsonl"))
    # An equal length is a flip for both judges, so both say lost: no split there.
    expected = Counter({"panel split 1-1": sum(c != r for c, r in lengths.values()),
                        "": sum(c == r for c, r in lengths.values())})
    assert reasons == +expected
    members = {tuple(m["judge"] for m in r["verdicts"][0]["detail"]["members"])
               for r in records(pytester.path / "even.jsonl")}
    assert members == {("openai:stub-judge #1", "openai:stub-judge #2")}
    assert all(correct == 0 for correct, _ in sections(pytester.path / "even.json").values())


def test_a_local_judge_sits_on_a_panel_with_http_judges(pytester, stubs, tmp_path):
    from tests.tiny_models import save_causal_lm

    tiny = save_causal_lm(tmp_path / "tiny", max_length=4096, seed=31)
    long1, long2 = stubs("--model", "long-1"), stubs("--model", "long-2")
    judges = (f"openai:long-1 base_url={long1.base_url};hf-judge:{tiny} order=fixed;"
              f"openai:long-2 base_url={long2.base_url}")
    select = ("-m", "pairwise", "-k", "brainstorming or chat", "--rmb-device", "cpu")
    result = panel(pytester, judges, *select, "--rmb-jsonl", "panel.jsonl")
    assert result.ret in (0, 1), output(result)
    # The local judge's verdicts are those it gives alone, asked through its own backend.
    alone = pytester.runpytest("-p", "no:cacheprovider", "--rmb-model", f"hf-judge:{tiny}", "--rmb-model-arg",
                               "order=fixed", "--rmb-data", "sample", *select, "--rmb-jsonl", "alone.jsonl")
    assert alone.ret in (0, 1), output(alone)
    own = {r["uid"]: r["verdicts"][0]["won"] for r in records(pytester.path / "alone.jsonl")}
    lengths = pair_lengths()
    panel_records = records(pytester.path / "panel.jsonl")
    assert len(panel_records) == len(own) == 10
    for record in panel_records:
        (verdict,) = record["verdicts"]
        longer = expected_member(*lengths[record["uid"]], prefers_longer=True)
        assert [m["won"] for m in verdict["detail"]["members"]] == [longer, own[record["uid"]], longer]
        assert verdict["won"] is longer
    # Both outcomes of the local judge appear, so its place in the members list is pinned.
    assert len(set(own.values())) == 2


# A judge of the user's own (python: backend) that prefers the longer answer and runs out of memory
# on its first batch of more than one comparison, as a local model on a full GPU does.
MEMORY_HUNGRY_JUDGE = """
from pytest_rmb.models import Verdict


class LongerJudge:
    def __init__(self):
        self.failed = False
        self.batches = []

    def compare(self, batch):
        if len(batch) > 1 and not self.failed:
            self.failed = True
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.batches.append(len(batch))
        return [Verdict(len(r.first) > len(r.second)) for r in batch]


def make():
    return LongerJudge()
"""


def test_a_judge_out_of_memory_halves_the_batch_and_the_others_are_not_asked_twice(pytester, stubs):
    pytester.makepyfile(hungry_judge=MEMORY_HUNGRY_JUDGE)
    long1, long2 = stubs("--model", "long-1"), stubs("--model", "long-2")
    judges = (f"openai:long-1 base_url={long1.base_url};python:hungry_judge:make;"
              f"openai:long-2 base_url={long2.base_url}")
    result = panel(pytester, judges, "-m", "pairwise", "--rmb-json", "oom.json", "--rmb-jsonl", "oom.jsonl")
    assert result.ret == 0, output(result)
    assert sections(pytester.path / "oom.json") == length_sections(SAMPLE_DATA, kinds=("Pairwise_set",))
    assert json.loads((pytester.path / "oom.json").read_text())["engine"]["oom_retries"] >= 1
    # Each HTTP judge answered each comparison once in each order: nothing asked twice.
    pairs = len(pair_lengths())
    assert [chat_requests(long1), chat_requests(long2)] == [2 * pairs, 2 * pairs]
    assert all(len(record["verdicts"][0]["detail"]["members"]) == 3 for record in records(pytester.path / "oom.jsonl"))


def test_a_judge_that_raises_is_named_in_the_error(pytester, stubs):
    pytester.makepyfile(broken_judge=(
        "def make():\n    return Broken()\n\n\nclass Broken:\n"
        "    def compare(self, batch):\n        raise ValueError('the weights are corrupt')\n"))
    long1, long2 = stubs("--model", "long-1"), stubs("--model", "long-2")
    judges = f"openai:long-1 base_url={long1.base_url};python:broken_judge:make;openai:long-2 base_url={long2.base_url}"
    result = panel(pytester, judges, "-m", "pairwise", "-k", "brainstorming")
    assert result.ret not in (0, 4)
    assert "panel judge 2 (python:broken_judge:make): ValueError: the weights are corrupt" in output(result)


# -- errors name the judge ------------------------------------------------------------------------


@pytest.mark.parametrize(("judges", "message"), [
    ("openai:m1;openai:m2 verdict=bogus;openai:m3",
     "panel judge 2 (openai:m2): setting verdict: expected one of tags, answer-tags"),
    ("openai:m1;openai:m2 tempreature=0.5",
     "panel judge 2 (openai:m2): setting tempreature: the openai backend has no setting 'tempreature' "
     "(did you mean 'temperature'?)"),
    ("openai:m1;length;openai:m3",
     "panel judge 2 (length): a pointwise model (one score per answer), not a judge"),
    ("openai:m1;nosuch:m2",
     "panel judge 2 (nosuch:m2): unknown backend scheme 'nosuch'"),
    ("openai:m1",
     "a panel needs at least 2 judges, got 1 (openai:m1)"),
    ("openai:m1;openai:m2 prompt_file=my prompt.txt",
     "judge 2 (openai:m2): 'prompt.txt' is not KEY=VALUE; a judge's settings are KEY=VALUE words separated "
     "by spaces, so a value cannot hold a space or ';'"),
    ("openai:m1;;openai:m3", "judge 2 is empty"),
])
def test_a_judge_that_cannot_be_loaded_is_named(pytester, judges, message):
    result = panel(pytester, judges)
    assert result.ret not in (0, 1)
    assert message in output(result)


def test_a_panel_without_judges_says_how_to_give_them(pytester):
    result = pytester.runpytest("-p", "no:cacheprovider", "--rmb-model", "panel:trio", "--rmb-data", "sample")
    assert result.ret not in (0, 1)
    assert "a panel needs its judges: --rmb-model-arg 'judges=SPEC;SPEC;SPEC'" in output(result)


def test_a_dead_judge_server_stops_the_run_and_what_the_others_decide_is_kept(pytester, stubs, swapped_prompt,
                                                                              tmp_path):
    alive = stubs("--model", "long-1")
    dying = stubs("--model", "short", "--die-after", "30")
    other = stubs("--model", "long-2")
    template = ("openai:long-1 base_url={long1};openai:short base_url={short} prompt_file={prompt} retries=0;"
                "openai:long-2 base_url={long2}")
    judges = template.format(long1=alive.base_url, short=dying.base_url, prompt=swapped_prompt, long2=other.base_url)
    cache = str(tmp_path / "cache")
    result = panel(pytester, judges, "-m", "pairwise", "--rmb-cache-dir", cache)
    out = output(result)
    assert result.ret != 0
    assert "panel judge 2 (openai:short): the judge server stopped answering" in out
    assert not dying.alive()
    # The two longer judges agree, so every comparison both answered is decided whatever the dead
    # judge would have said: kept. A rerun with the judge back asks every judge only the others.
    decided = complete_comparisons(alive) & complete_comparisons(other)
    assert 0 < len(decided) < len(pair_lengths())
    asked = [chat_requests(alive), chat_requests(other)]
    back = stubs("--model", "short")
    judges = template.format(long1=alive.base_url, short=back.base_url, prompt=swapped_prompt, long2=other.base_url)
    rerun = panel(pytester, judges, "-m", "pairwise", "--rmb-cache-dir", cache, "--rmb-json", "rerun.json")
    assert rerun.ret == 0, output(rerun)
    left = 2 * (len(pair_lengths()) - len(decided))
    assert [chat_requests(alive) - asked[0], chat_requests(other) - asked[1], chat_requests(back)] == [left] * 3
    assert sections(pytester.path / "rerun.json") == length_sections(SAMPLE_DATA, kinds=("Pairwise_set",))


# -- the cache and workers ------------------------------------------------------------------------


def test_a_rerun_asks_no_judge_anything(pytester, trio, tmp_path):
    servers, judges = trio
    cache = str(tmp_path / "cache")
    first = panel(pytester, judges, "-m", "pairwise", "--rmb-cache-dir", cache, "--rmb-json", "first.json")
    assert first.ret == 0, output(first)
    asked = [chat_requests(server) for server in servers]
    assert all(asked)
    second = panel(pytester, judges, "-m", "pairwise", "--rmb-cache-dir", cache, "--rmb-json", "second.json")
    assert second.ret == 0, output(second)
    assert [chat_requests(server) for server in servers] == asked
    assert sections(pytester.path / "second.json") == sections(pytester.path / "first.json") == length_sections(
        SAMPLE_DATA, kinds=("Pairwise_set",))
    # Another panel (one judge asked differently) keeps verdicts of its own: it asks again.
    changed = judges.replace("openai:long-2 ", "openai:long-2 verdict=json ")
    third = panel(pytester, changed, "-m", "pairwise", "--rmb-cache-dir", cache)
    assert third.ret == 0, output(third)
    assert all(now > before for now, before in zip([chat_requests(s) for s in servers], asked))


def test_two_workers_give_the_same_numbers(pytester, trio, tmp_path):
    _, judges = trio
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", "--rmb-model", "panel:trio",
         "--rmb-model-arg", f"judges={judges}", "--rmb-data", "sample", "--rmb-json", str(tmp_path / "n2.json")],
        cwd=pytester.path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sections(tmp_path / "n2.json") == length_sections(SAMPLE_DATA)


# -- the rule -------------------------------------------------------------------------------------


def verdicts(*codes: str) -> list[tuple[str, Verdict | None]]:
    """Judges' verdicts from codes: W won, L lost, M a miss, E an error, Q an empty reply, - no answer."""
    made = {"W": Verdict(True), "L": Verdict(False), "M": Verdict(None, reason="no verdict"),
            "E": Verdict(None, error="HTTP 500"), "Q": Verdict(None, reason="empty reply", ask_again=True),
            "-": None}
    return [(f"j{n}", made[code]) for n, code in enumerate(codes, start=1)]


@pytest.mark.parametrize(("codes", "won", "reason", "error", "ask_again"), [
    ("WWL", True, "", False, False),
    ("LLW", False, "", False, False),
    ("WL", None, "panel split 1-1", False, False),
    ("WLM", None, "panel split 1-1", False, False),
    ("WMM", True, "", False, False),
    ("LMM", False, "", False, False),
    ("MMM", None, "no judge gave a verdict", False, False),
    # A failed judge: the others decide only when its vote, either way, changes nothing.
    ("WWE", True, "", False, False),
    ("LLE", False, "", False, False),
    ("WLE", None, "", True, False),
    ("WME", None, "", True, False),
    ("LME", None, "", True, False),
    ("WWLE", None, "", True, False),
    ("WWWLE", True, "", False, False),
    ("WW-", True, "", False, False),
    ("W-M", None, "", True, False),
    # An empty reply: the same, but a miss to ask again, not an error.
    ("WWQ", True, "", False, False),
    ("WLQ", None, "no majority yet: j3 gave only empty replies", False, True),
    ("WWLQ", None, "no majority yet: j4 gave only empty replies", False, True),
    ("LLWQ", None, "no majority yet: j4 gave only empty replies", False, True),
    ("LLLWQ", False, "", False, False),
    ("WLWL", None, "panel split 2-2", False, False),
    ("WMQ", None, "no majority yet: j3 gave only empty replies", False, True),
])
def test_the_majority_rule(codes, won, reason, error, ask_again):
    verdict = decide(verdicts(*codes))
    assert verdict.won is won
    assert verdict.reason == reason
    assert (verdict.error is not None) is error
    assert verdict.ask_again is ask_again
    members = verdict.detail["members"]
    assert [m["judge"] for m in members] == [f"j{n}" for n in range(1, len(codes) + 1)]
    assert [m["won"] for m in members] == [{"W": True, "L": False}.get(c) for c in codes]
    if error:
        failed = [n for n, c in enumerate(codes, start=1) if c in "E-"]
        assert verdict.error.startswith(f"panel judge {failed[0]} (j{failed[0]}) failed: ")
