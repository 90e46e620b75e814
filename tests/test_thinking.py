"""Judges that think: the verdict read from the answer and never from the reasoning (a server's
separate reasoning field, inline ``<think>``), reasoning tokens counted apart, and replies cut off
at the reply limit counted as "cut off" (never a judged loss, never silent), with the early stop
of a run whose first replies are mostly cut off.

Runs go through pytest sessions against tests/judge_stub.py (its own process); every expected
count is computed here from the raw data, the stand-in's request log or the rule itself.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from pytest_rmb.judging.cutoffs import EARLY_CUT_OFFS, EARLY_REPLIES, CutOffWatch, is_cut_off
from tests.helpers import SAMPLE_DATA
from tests.judge_stub import REASONING, VERDICTS, StubServer
from tests.test_openai_judge import answered, judge, length_sections, output, records, sections

PAIRS = 30


def pair_scenario(folder: Path) -> dict[str, str]:
    """A custom scenario ``q`` of 30 pairs (a full answer against "No."), which the prefer-longer
    judge gets right every time; returns each pair's id by the SHA-256 of its chosen answer."""
    rows = [{"id": f"q{i}", "prompt": f"Question {i}?", "chosen": f"A full answer to question {i}.",
             "rejected": "No."} for i in range(PAIRS)]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "sets.toml").write_text('[[scenario]]\nname = "q"\nkind = "pairwise"\npath = "pairs.jsonl"\n')
    return {hashlib.sha256(row["chosen"].encode()).hexdigest(): row["id"] for row in rows}


def run_pairs(pytester, stub: StubServer, *args: str):
    return pytester.runpytest("-p", "no:cacheprovider", "--rmb-model", "openai:stub-judge", "--rmb-model-arg",
                              f"base_url={stub.base_url}", "--rmb-scenarios", "sets.toml", *args)


def cut_ids(stub: StubServer, ids: dict[str, str]) -> set[str]:
    """The pairs the stand-in cut off, from its log (either order shows the chosen answer as A once)."""
    return {ids[entry["a_sha256"]] for entry in answered(stub) if entry.get("cut_off") and entry["a_sha256"] in ids}


def summary(path: Path) -> dict:
    return json.loads(path.read_text())


# -- the rule ---------------------------------------------------------------------------------


def test_a_cut_off_is_a_length_finish_or_reasoning_without_an_answer():
    assert is_cut_off("length", "Assistant A is", None)
    assert is_cut_off("stop", "", "I was weighing the two when")
    assert is_cut_off("stop", None, "I was weighing")
    # An answer, or nothing at all (an empty reply, asked again as a passing fault), is no cut-off.
    assert not is_cut_off("stop", "[[A]]", "I was weighing")
    assert not is_cut_off("stop", "", "")
    assert not is_cut_off("length", "", "")
    assert not is_cut_off("length", None, " ")
    assert not is_cut_off(None, " \n", None)


def watch_stops_at(sequence: list[bool]) -> int | None:
    """The 1-based reply at which a watch fed ``sequence`` says to stop, or None."""
    watch = CutOffWatch("max_tokens=8", "raise it")
    for number, cut in enumerate(sequence, 1):
        if watch.see(cut) is not None:
            return number
    return None


def test_the_early_stop_is_twenty_cut_offs_within_the_first_fifty_replies():
    assert (EARLY_CUT_OFFS, EARLY_REPLIES) == (20, 50)
    assert watch_stops_at([True] * 20) == 20
    assert watch_stops_at([True] * 19 + [False] * 100) is None
    # The 50th reply is still among the first fifty; the 51st is not.
    assert watch_stops_at([False] * 30 + [True] * 20) == 50
    assert watch_stops_at([False] * 31 + [True] * 19 + [True] * 10) is None
    assert watch_stops_at([True, False] * 25) == 39  # the 20th cut-off is the 39th reply
    watch = CutOffWatch("max_tokens=8", "rerun with max_tokens=32")
    stops = [watch.see(True) for _ in range(30)]
    assert [i for i, stop in enumerate(stops, 1) if stop is not None] == [20]  # said once
    assert str(stops[19]) == ("20 of the judge's first 20 replies were cut off at max_tokens=8 before their verdict "
                              "(a judge that reasons needs more room); rerun with max_tokens=32. Every verdict "
                              "received is cached: the rerun asks only for the rest")


# -- reasoning --------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_a_separate_reasoning_field_is_never_read_and_its_tokens_are_counted_apart(pytester, stubs, field):
    stub = stubs("--reason", "field", "--reasoning-field", field, "--reasoning-tokens")
    result = judge(pytester, stub, "-m", "pairwise", "--rmb-json", "out.json")
    assert result.ret == 0, output(result)
    # The reasoning's decoy names the other answer: read, it would turn every verdict around.
    assert sections(pytester.path / "out.json") == length_sections(SAMPLE_DATA, kinds=("Pairwise_set",))
    log = answered(stub)
    reasoning = sum(entry["usage"]["completion_tokens_details"]["reasoning_tokens"] for entry in log)
    completion = sum(entry["usage"]["completion_tokens"] for entry in log)
    assert reasoning == len(log) * (len(REASONING.replace("@", VERDICTS["tags"].replace("@", "A"))) // 4 + 1)
    run = summary(pytester.path / "out.json")
    assert (run["engine"]["reasoning_tokens"], run["engine"]["completion_tokens"]) == (reasoning, completion)
    assert "reasoning_tokens_unknown" not in run["engine"]
    assert run["judge"]["overall"]["reasoning_tokens"] == reasoning
    line = f"completion ({reasoning} reasoning + {completion - reasoning} answer) in {len(log)} requests"
    assert line in output(result)

    # Cached verdicts keep what their reasoning cost.
    again = judge(pytester, stub, "-m", "pairwise", "--rmb-json", "again.json")
    assert again.ret == 0 and len(answered(stub)) == len(log)
    assert summary(pytester.path / "again.json")["engine"]["cached_reasoning_tokens"] == reasoning


def test_inline_think_with_a_decoy_verdict_is_masked_and_its_tokens_are_unknown(pytester, stubs):
    stub = stubs("--reason", "inline")
    result = judge(pytester, stub, "-m", "pairwise", "--rmb-json", "out.json")
    assert result.ret == 0, output(result)
    assert sections(pytester.path / "out.json") == length_sections(SAMPLE_DATA, kinds=("Pairwise_set",))
    log = answered(stub)
    engine = summary(pytester.path / "out.json")["engine"]
    # The server said no reasoning tokens: every reply that reasoned is counted as unknown, none made up.
    assert engine["reasoning_tokens_unknown"] == len(log)
    assert "reasoning_tokens" not in engine
    assert f"(reasoning tokens unknown in {len(log)} replies)" in output(result)


def test_thinking_raises_max_tokens_and_the_preview_names_the_most_replies_can_cost(pytester, stubs):
    pair_scenario(pytester.path)
    stub = stubs("--reason", "field")
    plain = run_pairs(pytester, stub, "--rmb-model-arg", "order=fixed")
    assert plain.ret == 0, output(plain)
    assert {entry["max_tokens"] for entry in answered(stub)} == {1024}
    assert f"replies at most {PAIRS * 1024} tokens (max_tokens=1024 each, reasoning included)" in output(plain)
    thinking = run_pairs(pytester, stub, "--rmb-model-arg", "order=fixed", "--rmb-model-arg", "thinking=true")
    assert thinking.ret == 0, output(thinking)
    # Another reply limit is another judge: asked afresh, at the thinking limit.
    assert [entry["max_tokens"] for entry in answered(stub)][PAIRS:] == [32768] * PAIRS
    assert f"replies at most {PAIRS * 32768} tokens (max_tokens=32768 each" in output(thinking)


# -- cut-offs ---------------------------------------------------------------------------------


def test_cut_off_replies_are_misses_of_their_own_never_losses(pytester, stubs):
    ids = pair_scenario(pytester.path)
    stub = stubs("--reason", "field", "--cut-off-share", "0.4", "--cut-off-follow-ups")
    result = run_pairs(pytester, stub, "--rmb-model-arg", "parse_retries=1", "--rmb-model-arg",
                       "stop_on_cut_offs=false", "--rmb-jsonl", "out.jsonl", "--rmb-json", "out.json")
    assert result.ret == 0, output(result)  # misses, not failures
    cut = cut_ids(stub, ids)
    assert 0 < len(cut) < PAIRS
    # Each cut pair: both orders, each asked once more by a follow-up turn, cut off again.
    cut_replies = sum(bool(entry.get("cut_off")) for entry in answered(stub))
    assert cut_replies == 2 * 2 * len(cut)
    by_id = {record["uid"]: record for record in records(pytester.path / "out.jsonl")}
    assert len(by_id) == PAIRS
    for uid, record in by_id.items():
        verdict = record["verdicts"][0]
        if uid in cut:
            assert verdict["won"] is None and verdict["detail"]["cut_off"] is True
            assert verdict["reason"] == "cut off at the reply limit (chosen as A and chosen as B)"
            assert verdict["detail"]["parse_failures"] == 0
            for order in verdict["detail"]["orders"]:
                # The reasoning is quoted in the note, its decoy verdict never taken.
                assert order["verdict"] is None and order["notes"][0].startswith("cut off at the reply limit: ")
        else:
            assert verdict["won"] is True and "cut_off" not in verdict["detail"]
    run = summary(pytester.path / "out.json")
    overall = run["judge"]["overall"]
    assert (overall["cut_off"], overall["no_verdict"], overall["correct"]) == (len(cut), 0, PAIRS - len(cut))
    assert (run["engine"]["cut_off_replies"], run["engine"].get("cut_offs_rescued", 0)) == (cut_replies, 0)
    text = output(result)
    assert re.search(r"No verdict\s.*Cut off", text), text
    # The all-samples row: accuracy, tie-adjusted, flips, A share, then no verdict 0, cut off, API failures 0.
    assert re.search(rf"all samples\s+\S+\s+\S+\s+\S+\s+\S+\s+0\s+{len(cut)}\s+0\b", text), text
    assert f"{cut_replies} replies cut off at the reply limit before their verdict, 0 rescued by a follow-up turn" \
        in text


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_an_empty_answer_after_reasoning_is_a_cut_off_whatever_the_finish_reason(pytester, stubs, field):
    ids = pair_scenario(pytester.path)
    stub = stubs("--reason", "field", "--reasoning-field", field, "--cut-off-share", "0.4", "--cut-off-finish",
                 "stop", "--cut-off-follow-ups")
    result = run_pairs(pytester, stub, "--rmb-model-arg", "parse_retries=0", "--rmb-model-arg", "stop_on_cut_offs=false",
                       "--rmb-jsonl", "out.jsonl", "--rmb-json", "out.json")
    assert result.ret == 0, output(result)
    cut = cut_ids(stub, ids)
    assert 0 < len(cut) < PAIRS
    # Not an empty reply (those are asked again): each cut request was asked once.
    assert len(answered(stub)) == 2 * PAIRS
    overall = summary(pytester.path / "out.json")["judge"]["overall"]
    assert (overall["cut_off"], overall["empty_replies"], overall["no_verdict"]) == (len(cut), 0, 0)
    for record in records(pytester.path / "out.jsonl"):
        if record["uid"] in cut:
            notes = [order["notes"][0] for order in record["verdicts"][0]["detail"]["orders"]]
            # The note quotes the reasoning the judge was cut off in.
            assert len(notes) == 2
            assert all(note.startswith(f"cut off at the reply limit: {REASONING[:26]!r}"[:-1]) for note in notes)


def test_a_reply_stopped_at_the_limit_after_its_verdict_gives_that_verdict(pytester, stubs):
    """A verdict-first prompt with a small max_tokens: the verdict came before the limit."""
    pair_scenario(pytester.path)
    stub = stubs("--length-after-verdict")
    result = run_pairs(pytester, stub, "--rmb-json", "out.json")
    assert result.ret == 0, output(result)
    assert {entry["status"] for entry in answered(stub)} == {200} and len(answered(stub)) == 2 * PAIRS
    run = summary(pytester.path / "out.json")
    assert (run["judge"]["overall"]["correct"], run["judge"]["overall"]["cut_off"]) == (PAIRS, 0)
    assert "cut_off_replies" not in run["engine"]


def test_a_follow_up_turn_rescues_a_cut_off_vote(pytester, stubs):
    ids = pair_scenario(pytester.path)
    # Only the first turn is cut off (an unfinished <think> holding a decoy): the follow-up asks
    # for the verdict alone, and gets it.
    stub = stubs("--reason", "inline", "--cut-off-share", "0.4")
    result = run_pairs(pytester, stub, "--rmb-model-arg", "stop_on_cut_offs=false",
                       "--rmb-jsonl", "out.jsonl", "--rmb-json", "out.json")
    assert result.ret == 0, output(result)
    cut = cut_ids(stub, ids)
    assert 0 < len(cut) < PAIRS
    follow_ups = [entry for entry in answered(stub) if entry["messages"] > 2]
    assert len(follow_ups) == 2 * len(cut)
    run = summary(pytester.path / "out.json")
    assert (run["engine"]["cut_off_replies"], run["engine"]["cut_offs_rescued"]) == (2 * len(cut), 2 * len(cut))
    assert run["judge"]["overall"]["cut_offs_rescued"] == 2 * len(cut)
    assert (run["judge"]["overall"]["cut_off"], run["judge"]["overall"]["correct"]) == (0, PAIRS)
    rescued = {r["uid"] for r in records(pytester.path / "out.jsonl")
               if r["verdicts"][0]["detail"].get("cut_offs_rescued")}
    assert rescued == cut


def test_a_run_whose_first_replies_are_cut_off_stops_early_and_the_rerun_resumes(pytester, stubs):
    pair_scenario(pytester.path)
    stub = stubs("--reason", "field", "--cut-off-share", "1", "--latency", "0.05")
    args = ["--rmb-model-arg", "parse_retries=0", "--rmb-model-arg", "concurrency=2", "--rmb-json", "out.json"]
    result = run_pairs(pytester, stub, *args)
    assert result.ret == 2, output(result)
    message = ("20 of the judge's first 20 replies were cut off at max_tokens=1024 before their verdict (a judge "
               "that reasons needs more room); rerun with --rmb-model-arg max_tokens=4096 or thinking=true "
               "(max_tokens=32768). Every verdict received is cached: the rerun asks only for the rest")
    assert message in output(result)
    run = summary(pytester.path / "out.json")
    assert run["status"] == "partial" and message in run["stop_reason"]
    first = answered(stub)
    # Two in flight: the stop comes with the 20th reply, and at most the other request still lands.
    assert 20 <= len(first) <= 21
    shown_first: dict[str, set[str]] = {}
    for entry in first:
        shown_first.setdefault(entry["pair"], set()).add(entry["a_sha256"])
    complete = {pair for pair, seen in shown_first.items() if len(seen) == 2}
    assert len(complete) >= 9

    rerun = run_pairs(pytester, stub, *args)
    assert rerun.ret == 2, output(rerun)
    asked_again = {entry["pair"] for entry in answered(stub)[len(first):]}
    assert asked_again and not asked_again & complete


# -- the local judge --------------------------------------------------------------------------


def rambling_judge(folder: Path) -> Path:
    """A tiny causal LM that never ends its reply: every step's greedy token is one of two visible
    tokens (the sign of one hidden unit picks which), never the end-of-sequence token."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tests.tiny_models import save_causal_lm

    path = save_causal_lm(folder / "rambling", max_length=4096)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path)
    visible = [i for i in range(len(tokenizer)) if i not in tokenizer.all_special_ids
               and tokenizer.decode([i]).strip().isalpha()][:2]
    assert len(visible) == 2
    with torch.no_grad():
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[visible[0], 0] = 10.0
        model.lm_head.weight[visible[1], 0] = -10.0
    model.save_pretrained(path)
    return path


def test_a_local_judge_that_reaches_max_new_tokens_is_cut_off_and_stops_early(pytester, tmp_path):
    path = rambling_judge(tmp_path)
    pair_scenario(pytester.path)
    common = ["-p", "no:cacheprovider", "--rmb-model", f"hf-judge:{path}", "--rmb-scenarios", "sets.toml",
              "--rmb-model-arg", "mode=generate", "--rmb-model-arg", "max_new_tokens=3",
              "--rmb-model-arg", "parse_retries=0"]
    stopped = pytester.runpytest(*common, "--rmb-json", "stopped.json")
    assert stopped.ret == 2, output(stopped)
    assert ("20 of the judge's first 20 replies were cut off at max_new_tokens=3 before their verdict (a judge that "
            "reasons needs more room); rerun with --rmb-model-arg max_new_tokens=12") in output(stopped)

    rest = pytester.runpytest(*common, "--rmb-model-arg", "stop_on_cut_offs=false", "--rmb-json", "rest.json",
                              "--rmb-jsonl", "rest.jsonl")
    assert rest.ret == 0, output(rest)
    run = summary(pytester.path / "rest.json")
    # The stop came once its batch was judged (20 replies: 10 comparisons at least), and that batch
    # was kept: the rerun asks only the rest.
    kept = run["engine"]["cache_hits"]
    assert 10 <= kept < PAIRS
    assert run["engine"]["comparisons_made"] == PAIRS - kept
    # Every reply (two orders per pair) ran to the limit: every comparison is cut off, none "no verdict".
    assert run["engine"]["cut_off_replies"] == 2 * (PAIRS - kept)
    assert (run["judge"]["overall"]["cut_off"], run["judge"]["overall"]["no_verdict"]) == (PAIRS, 0)
    for record in records(pytester.path / "rest.jsonl"):
        assert record["verdicts"][0]["detail"]["cut_off"] is True
