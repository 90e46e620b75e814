"""Your own preference sets as scenarios (--rmb-scenarios): TOML files and JSONL rows, run as users run them.

Expectations are computed here from the rows themselves (the length baseline: the longer answer wins),
never read back from pytest-rmb.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest

from pytest_rmb.data import DataFileError
from pytest_rmb.user_sets import read_rows
from tests.helpers import run_rmb, turn

SYSTEM = {"role": "system", "content": "You are the support assistant of Acme."}

# Pairwise rows in every accepted shape; uid -> row (None marks a blank line).
PAIR_ROWS: list[tuple[str | None, dict | None]] = [
    # TRL "standard": strings.
    ("1", {"prompt": "How do I reset my password?",
           "chosen": "Open Settings > Security > Reset password, then follow the link we email you.",
           "rejected": "Make a new account."}),
    # TRL "conversational", implicit prompt: the shared prefix is the conversation.
    ("2", {"chosen": [SYSTEM, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}],
           "rejected": [SYSTEM, {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "Hello there, what can I do for you today?"}]}),
    # TRL "conversational", explicit prompt: chosen/rejected continue it.
    ("3", {"prompt": [{"role": "user", "content": "My order is late."},
                      {"role": "assistant", "content": "Sorry! What is the order number?"},
                      {"role": "user", "content": "A-1234"}],
           "chosen": [{"role": "assistant", "content": "A-1234 ships tomorrow; here is the tracking link."}],
           "rejected": [{"role": "assistant", "content": "Wait."}]}),
    (None, None),
    ("ticket-7", {"id": "ticket-7", "prompt": "Can I get a refund after 30 days?",
                  "chosen": "Within 60 days, yes.", "rejected": "Refunds are possible within 60 days of purchase."}),
    # RMB's own pair record.
    ("r1", {"pair_uid": "r1", "category_path": "x", "conversation_input": [turn("user", "Cancel my plan")],
            "chosen": {"llm_name": "a", "answer": "Done: your plan ends on the 30th."},
            "reject": {"llm_name": "b", "answer": "No."}}),
]

BON_ROWS: list[tuple[str, dict]] = [
    ("1", {"prompt": "Say hello to a new customer", "best": "Welcome aboard, glad to have you!",
           "losers": ["hi", "Hello."]}),
    ("42", {"id": 42, "prompt": [{"role": "user", "content": "Where is my invoice?"}],
            "best": [{"role": "assistant", "content": "Under Billing > Invoices."}],
            "losers": [[{"role": "assistant", "content": "Check the billing page for all invoices we sent."}],
                       "Dunno"]}),
    ("b9", {"bon_uid": "b9", "conversation_input": [turn("user", "Thanks!")],
            "bon_best": {"llm_name": "a", "answer": "You are welcome, happy to help."},
            "loser_list": [{"llm_name": "b", "answer": "ok"}, {"llm_name": "c", "answer": "k"}]}),
]

TOML = """\
[[scenario]]
name = "support"
kind = "pairwise"
path = "data/support.jsonl"
markers = ["team_a"]

[[scenario]]
name = "support"
kind = "bon"
path = "data/support_bon.jsonl"
"""

# A python: model that scores like the length baseline and records what it was asked.
RECORDER = '''
import json

class Recorder:
    def score(self, batch):
        with open("seen.jsonl", "a") as out:
            for request in batch:
                conversation = [[m.role, m.content] for m in request.conversation]
                out.write(json.dumps([conversation, request.response]) + "\\n")
        return [float(len(request.response)) for request in batch]

    def fingerprint(self):
        return "recorder-v1"

def make():
    return Recorder()
'''


def write_rows(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((json.dumps(row) if row is not None else "") + "\n" for _, row in rows), encoding="utf-8")
    return path


@pytest.fixture
def sets(pytester) -> Path:
    write_rows(pytester.path / "data/support.jsonl", PAIR_ROWS)
    write_rows(pytester.path / "data/support_bon.jsonl", BON_ROWS)
    toml = pytester.path / "sets.toml"
    toml.write_text(TOML, encoding="utf-8")
    return toml


run = partial(run_rmb, options=("--strict-markers",))


# --- what the rows mean, worked out here without pytest-rmb -------------------------------------


def _chat(messages) -> list[list[str]]:
    return [[m["role"], m["content"]] for m in messages]


def pair_meaning(row: dict) -> tuple[list, str, str]:
    """(conversation, chosen answer, rejected answer) of a pairwise row."""
    if "conversation_input" in row:
        return _chat(row["conversation_input"]), row["chosen"]["answer"], row["reject"]["answer"]
    prompt = row.get("prompt")
    if isinstance(row["chosen"], str):
        return [["user", prompt]], row["chosen"], row["rejected"]
    full = _chat(prompt or []) + _chat(row["chosen"])
    return full[:-1], full[-1][1], _chat(row["rejected"])[-1][1]


def bon_meaning(row: dict) -> tuple[list, str, list[str]]:
    if "conversation_input" in row:
        return (_chat(row["conversation_input"]), row["bon_best"]["answer"],
                [loser["answer"] for loser in row["loser_list"]])
    prompt = row["prompt"]
    conversation = [["user", prompt]] if isinstance(prompt, str) else _chat(prompt)

    def text(answer):
        return answer if isinstance(answer, str) else answer[-1]["content"]

    return conversation, text(row["best"]), [text(loser) for loser in row["losers"]]


def expected_pairs() -> dict[str, bool]:
    out = {}
    for uid, row in PAIR_ROWS:
        if row is not None:
            _, chosen, rejected = pair_meaning(row)
            out[uid] = len(chosen) > len(rejected)
    return out


def expected_bon() -> dict[str, bool]:
    out = {}
    for uid, row in BON_ROWS:
        _, best, losers = bon_meaning(row)
        out[uid] = all(len(best) > len(loser) for loser in losers)
    return out


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def by_kind(records: list[dict], scenario: str = "custom/support") -> dict[str, dict[str, bool]]:
    out: dict[str, dict[str, bool]] = {"pairwise": {}, "bon": {}}
    for record in records:
        if record["scenario"] == scenario:
            out[record["kind"]][record["uid"]] = record["correct"]
    return out


def collected(result) -> list[str]:
    return [line for line in result.outlines if line.startswith("rmb/") and "::" in line]


# --- rows in the formats people have ------------------------------------------------------------


def test_trl_rows_strings_and_message_lists_become_conversation_and_answer(pytester, sets):
    pytester.makepyfile(recorder=RECORDER)
    result = run(pytester, "--rmb-model", "python:recorder:make", "--rmb-scenarios", "sets.toml", "-m", "pairwise",
                 "--rmb-jsonl", "s.jsonl", "--rmb-no-cache")
    assert result.ret == 0
    # Exactly what the model was asked: each row's conversation with each of its two answers.
    seen = {json.dumps(entry) for entry in jsonl(pytester.path / "seen.jsonl")}
    wanted = set()
    for _, row in PAIR_ROWS:
        if row is not None:
            conversation, chosen, rejected = pair_meaning(row)
            wanted |= {json.dumps([conversation, chosen]), json.dumps([conversation, rejected])}
    assert seen == wanted
    assert by_kind(jsonl(pytester.path / "s.jsonl"))["pairwise"] == expected_pairs()
    correct = sum(expected_pairs().values())
    assert result.parseoutcomes().get("passed", 0) == correct
    assert result.parseoutcomes().get("missed", 0) == len(expected_pairs()) - correct


def test_bon_rows_prompt_best_losers_and_rmb_records(pytester, sets):
    pytester.makepyfile(recorder=RECORDER)
    result = run(pytester, "--rmb-model", "python:recorder:make", "--rmb-scenarios", "sets.toml", "-m", "bon",
                 "--rmb-jsonl", "s.jsonl", "--rmb-no-cache")
    assert result.ret == 0
    seen = {json.dumps(entry) for entry in jsonl(pytester.path / "seen.jsonl")}
    wanted = set()
    for _, row in BON_ROWS:
        conversation, best, losers = bon_meaning(row)
        wanted |= {json.dumps([conversation, answer]) for answer in (best, *losers)}
    assert seen == wanted
    assert by_kind(jsonl(pytester.path / "s.jsonl"))["bon"] == expected_bon()


def test_items_have_rmb_node_ids_and_only_the_kinds_declared(pytester, sets, tmp_path):
    result = run(pytester, "--rmb-model", "length", "--rmb-scenarios", "sets.toml", "--collect-only", "-q")
    expected = {f"rmb/custom/support::test_pairwise[{uid}]" for uid in expected_pairs()}
    expected |= {f"rmb/custom/support::test_bon[{uid}]" for uid in expected_bon()}
    assert set(collected(result)) == expected
    # A scenario with one kind collects no test of the other kind.
    (pytester.path / "one.toml").write_text('[[scenario]]\nname = "only pairs"\nkind = "pairwise"\n'
                                            'path = "data/support.jsonl"\n')
    result = run(pytester, "--rmb-model", "length", "--rmb-scenarios", "one.toml", "--collect-only", "-q")
    assert set(collected(result)) == {f"rmb/custom/only_pairs::test_pairwise[{uid}]" for uid in expected_pairs()}


def test_uids_run_in_natural_order_numbers_as_numbers(pytester):
    """``[2]`` before ``[11]`` and ``[p2]`` before ``[p10]``, in the items and in every file the run writes."""
    rows = [{"id": uid, "prompt": f"Question {uid}", "chosen": f"A long answer to {uid}", "rejected": "No"}
            for uid in ("p10", "11", "p2", "p1", "2")]
    write_rows(pytester.path / "numbered.jsonl", [(str(row["id"]), row) for row in rows])
    (pytester.path / "numbered.toml").write_text('[[scenario]]\nname = "numbered"\nkind = "pairwise"\n'
                                                 'path = "numbered.jsonl"\n')
    natural = ["2", "11", "p1", "p2", "p10"]
    args = ("--rmb-model", "length", "--rmb-scenarios", "numbered.toml")
    listed = collected(run(pytester, *args, "--collect-only", "-q"))
    assert listed == [f"rmb/custom/numbered::test_pairwise[{uid}]" for uid in natural]
    result = run(pytester, *args, "-v", "--rmb-jsonl", "s.jsonl", "--rmb-json", "s.json")
    assert result.ret == 0
    ran = [line.split(" ", 1)[0] for line in result.outlines if line.startswith("rmb/custom/numbered::")]
    assert ran == listed
    assert [record["uid"] for record in jsonl(pytester.path / "s.jsonl")] == natural
    outcomes = json.loads((pytester.path / "s.json").read_text())["outcomes"]
    assert [key.rsplit("|", 1)[-1] for key in outcomes] == natural


def test_node_ids_sort_by_test_then_uid_in_natural_order():
    # The order a listing of node ids (the misses) takes to match the items'.
    from pytest_rmb.nodeids import nodeid_sort_key

    ids = ["rmb/c/s::test_pairwise[p10]", "rmb/c/s::test_pairwise[2]", "rmb/c/s::test_bon[p2]",
           "rmb/c/s::test_pairwise[p2]", "rmb/c/s::test_pairwise[11]"]
    assert sorted(ids, key=nodeid_sort_key) == [
        "rmb/c/s::test_bon[p2]", "rmb/c/s::test_pairwise[2]", "rmb/c/s::test_pairwise[11]",
        "rmb/c/s::test_pairwise[p2]", "rmb/c/s::test_pairwise[p10]"]


def test_rmb_data_from_the_environment_adds_rmb_to_the_users_sets(pytester, sets, monkeypatch):
    ours = {f"rmb/custom/support::test_pairwise[{uid}]" for uid in expected_pairs()}
    ours |= {f"rmb/custom/support::test_bon[{uid}]" for uid in expected_bon()}
    args = ("--rmb-model", "length", "--rmb-scenarios", "sets.toml", "--collect-only", "-q")
    assert set(collected(run(pytester, *args))) == ours
    monkeypatch.setenv("RMB_DATA", "sample")
    both = set(collected(run(pytester, *args)))
    assert ours < both
    assert {nodeid.split("::")[0] for nodeid in both - ours} == {
        nodeid.split("::")[0] for nodeid in collected(run(pytester, "--rmb-model", "length", "--collect-only", "-q"))}


def test_header_title_and_json_name_the_users_sets(pytester, sets):
    result = run(pytester, "--rmb-model", "length", "--rmb-scenarios", "sets.toml", "--rmb-json", "s.json")
    assert result.ret == 0
    result.stdout.fnmatch_lines([f"rmb: model length, 1 of your own from {sets}", f"*RMB: length on {sets}*"])
    summary = json.loads((pytester.path / "s.json").read_text())
    pairs, lists = expected_pairs(), expected_bon()
    row = summary["scenarios"]["custom/support"]
    assert (row["goal"], row["task"], row["name"]) == ("custom", "custom", "support")
    assert (row["pairwise"]["correct"], row["pairwise"]["total"]) == (sum(pairs.values()), len(pairs))
    assert (row["bon"]["correct"], row["bon"]["total"]) == (sum(lists.values()), len(lists))
    assert summary["tasks"]["custom"]["pairwise"]["total"] == len(pairs)
    # Nothing of the user's lands in RMB's sections: there is no RMB data in this run.
    assert all(section["total"] == 0 for section in summary["sections"].values())
    assert summary["overall"] is None
    assert str(pytester.path / "data/support.jsonl") in summary["provenance"]["data_files"]


# --- selection: -m, -k, node ids ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "kinds"),
    [("custom", {"pairwise", "bon"}), ("custom and pairwise", {"pairwise"}), ("team_a", {"pairwise"}),
     ("custom and not team_a", {"bon"})],
)
def test_markers_select_the_users_scenarios_beside_rmb(pytester, sets, expression, kinds):
    result = run(pytester, "--rmb-model", "length", "--rmb-data", "sample", "--rmb-scenarios", "sets.toml",
                 "-m", expression, "--collect-only", "-q")
    assert result.ret == 0
    expected = {f"rmb/custom/support::test_pairwise[{uid}]" for uid in expected_pairs() if "pairwise" in kinds}
    expected |= {f"rmb/custom/support::test_bon[{uid}]" for uid in expected_bon() if "bon" in kinds}
    assert set(collected(result)) == expected


def test_the_users_markers_are_registered(pytester, sets):
    result = run(pytester, "--rmb-model", "length", "--rmb-scenarios", "sets.toml", "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.custom: your own scenarios*custom/support*",
                                 "@pytest.mark.team_a: your own scenarios*custom/support*"], consecutive=False)


def test_k_and_node_ids_select_the_users_scenarios(pytester, sets):
    base = ("--rmb-model", "length", "--rmb-data", "sample", "--rmb-scenarios", "sets.toml", "--collect-only", "-q")
    everything = set(collected(run(pytester, *base)))
    ours = {nodeid for nodeid in everything if nodeid.startswith("rmb/custom/support::")}
    assert len(ours) == len(expected_pairs()) + len(expected_bon())
    # The task and scenario names are keywords, as for RMB's (-k support alone also matches RMB's
    # chat/supportive_conversation).
    assert set(collected(run(pytester, *base, "-k", "custom and support"))) == ours
    assert set(collected(run(pytester, *base, "-k", "not custom"))) == everything - ours
    bon = set(collected(run(pytester, *base, "rmb/custom/support::test_bon")))
    assert bon == {f"rmb/custom/support::test_bon[{uid}]" for uid in expected_bon()}
    wrong = run(pytester, *base, "rmb/custom/suport")
    assert wrong.ret == pytest.ExitCode.USAGE_ERROR
    wrong.stderr.fnmatch_lines(["*rmb/custom/suport*did you mean rmb/custom/support*"])


def test_xdist_gives_the_same_results_as_one_process(pytester, sets):
    args = ("-p", "no:cacheprovider", "--rmb-model", "length", "--rmb-data", "sample", "--rmb-scenarios", "sets.toml")
    single = pytester.runpytest_subprocess(*args, "--rmb-json", "one.json", "--rmb-jsonl", "one.jsonl")
    multi = pytester.runpytest_subprocess(*args, "-n", "2", "--rmb-json", "two.json", "--rmb-jsonl", "two.jsonl")
    assert single.ret == multi.ret == 0
    one, two = (json.loads((pytester.path / f"{n}.json").read_text()) for n in ("one", "two"))
    # Each process that scored loaded the model once: the one process, or both workers.
    assert (one["engine"].pop("model_loads"), two["engine"].pop("model_loads")) == (1, 2)
    for summary in one, two:
        summary["engine"].pop("scoring_seconds")
    assert one == two
    assert (pytester.path / "one.jsonl").read_text() == (pytester.path / "two.jsonl").read_text()
    assert by_kind(jsonl(pytester.path / "two.jsonl")) == {"pairwise": expected_pairs(), "bon": expected_bon()}
    assert single.parseoutcomes() == multi.parseoutcomes()


def test_the_score_cache_serves_a_second_run(pytester, sets):
    pytester.makepyfile(recorder=RECORDER)
    texts = set()
    for _, row in PAIR_ROWS:
        if row is not None:
            conversation, *answers = pair_meaning(row)
            texts |= {json.dumps([conversation, answer]) for answer in answers}
    for _, row in BON_ROWS:
        conversation, best, losers = bon_meaning(row)
        texts |= {json.dumps([conversation, answer]) for answer in (best, *losers)}
    args = ("--rmb-model", "python:recorder:make", "--rmb-scenarios", "sets.toml", "--rmb-cache-dir", "cache")
    assert run(pytester, *args, "--rmb-json", "one.json").ret == 0
    assert run(pytester, *args, "--rmb-json", "two.json").ret == 0
    cold, warm = (json.loads((pytester.path / name).read_text())["engine"] for name in ("one.json", "two.json"))
    assert (cold["texts_scored"], cold["cache_hits"]) == (len(texts), 0)
    assert (warm["texts_scored"], warm["cache_hits"]) == (0, len(texts))


# --- gates and RMB's sections ---------------------------------------------------------------------


def test_a_gate_on_a_users_scenario_passes_and_fails_on_its_accuracy(pytester, sets):
    pairs = expected_pairs()
    accuracy = sum(pairs.values()) / len(pairs)
    base = ("--rmb-model", "length", "--rmb-scenarios", "sets.toml", "--rmb-json", "s.json")
    passing = run(pytester, *base, "--rmb-gate", f"scenario:custom/support.pairwise>={accuracy - 0.001:.4f}")
    assert passing.ret == 0
    gate = json.loads((pytester.path / "s.json").read_text())["gates"][0]
    assert (gate["status"], gate["value"]) == ("PASS", pytest.approx(accuracy))
    failing = run(pytester, *base, "--rmb-gate", f"scenario:custom/support.pairwise>={accuracy + 0.001:.4f}")
    assert failing.ret == 1
    failing.stdout.fnmatch_lines(
        [f"rmb: 1 gate(s) failed: scenario:custom/support.pairwise >= {float(f'{accuracy + 0.001:.4f}'):g} (threshold)"])
    task_gate = run(pytester, *base, "--rmb-gate", "task:custom.bon>=0")
    assert task_gate.ret == 0
    unknown = run(pytester, *base, "--rmb-gate", "scenario:custom/nothing.pairwise>=0.5")
    assert unknown.ret == pytest.ExitCode.USAGE_ERROR
    unknown.stderr.fnmatch_lines(["*argument --rmb-gate: *unknown scenario 'custom/nothing'*custom/support*"])


def test_rmb_sections_and_overall_are_the_same_with_and_without_custom_sets(pytester, sets):
    base = ("--rmb-model", "length", "--rmb-data", "sample")
    assert run(pytester, *base, "--rmb-json", "plain.json").ret == 0
    assert run(pytester, *base, "--rmb-scenarios", "sets.toml", "--rmb-json", "mixed.json").ret == 0
    plain, mixed = (json.loads((pytester.path / n).read_text()) for n in ("plain.json", "mixed.json"))
    for key in ("sections", "overall", "overall_ci95"):
        assert mixed[key] == plain[key]
    assert set(mixed["scenarios"]) - set(plain["scenarios"]) == {"custom/support"}
    assert set(mixed["tasks"]) - set(plain["tasks"]) == {"custom"}


def test_goal_helpfulness_counts_a_set_in_that_section(pytester, sets):
    (pytester.path / "help.toml").write_text(
        '[[scenario]]\nname = "support"\ntask = "Support Desk"\ngoal = "helpfulness"\nkind = "pairwise"\n'
        'path = "data/support.jsonl"\n')
    base = ("--rmb-model", "length", "--rmb-data", "sample")
    assert run(pytester, *base, "--rmb-json", "plain.json").ret == 0
    result = run(pytester, *base, "--rmb-scenarios", "help.toml", "--rmb-json", "mixed.json", "-m", "helpfulness")
    assert result.ret == 0
    plain, mixed = (json.loads((pytester.path / n).read_text()) for n in ("plain.json", "mixed.json"))
    pairs = expected_pairs()
    before, after = plain["sections"]["helpfulness.pairwise"], mixed["sections"]["helpfulness.pairwise"]
    assert after["total"] == before["total"] + len(pairs)
    assert after["correct"] == before["correct"] + sum(pairs.values())
    for section in ("harmlessness.pairwise", "harmlessness.bon"):
        assert mixed["sections"][section]["total"] == 0  # deselected by -m helpfulness
    assert mixed["scenarios"]["support_desk/support"]["goal"] == "helpfulness"


# --- bad rows and bad TOML files ------------------------------------------------------------------


def test_a_bad_row_is_one_error_item_and_the_rest_is_scored(pytester):
    lines = [
        json.dumps({"prompt": "q", "chosen": "a longer answer", "rejected": "short"}),
        '{"prompt": "q", "chosen": "a", ',
        json.dumps({"id": "x", "prompt": "q", "chosen": None, "rejected": "b"}),
        json.dumps({"id": "d", "prompt": "q", "chosen": "a", "rejected": "bbb"}),
        json.dumps({"id": "d", "prompt": "q", "chosen": "again", "rejected": "b"}),
        json.dumps({"prompt": "q", "best": "best", "losers": ["a"]}),
    ]
    data = pytester.path / "rows.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (pytester.path / "sets.toml").write_text('[[scenario]]\nname = "rows"\nkind = "pairwise"\npath = "rows.jsonl"\n')
    result = run(pytester, "--rmb-model", "length", "--rmb-scenarios", "sets.toml", "--rmb-jsonl", "s.jsonl",
                 "--rmb-json", "s.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        f"*{data}: line 2: invalid JSON at column *",
        f"*{data}: line 3 (id 'x'): field 'chosen': expected a string or a list of messages, got null",
        f"*{data}: line 5 (id 'd'): field 'id': duplicate uid 'd' (first at line 4)",
        f"*{data}: line 6: field 'chosen': missing (the row looks like a bon row*",
    ], consecutive=False)
    failed = sorted(line.split(" - ")[0] for line in result.outlines if line.startswith("FAILED"))
    assert failed == [
        "FAILED rmb/custom/rows::test_pairwise[data-error-2]",
        "FAILED rmb/custom/rows::test_pairwise[data-error-6]",
        "FAILED rmb/custom/rows::test_pairwise[data-error-line-5]",
        "FAILED rmb/custom/rows::test_pairwise[data-error-x]",
    ]
    scored = {r["uid"]: r["correct"] for r in jsonl(pytester.path / "s.jsonl")}
    assert scored == {"1": True, "d": False}
    errors = json.loads((pytester.path / "s.json").read_text())["errors"]
    assert [(e["scenario"], e["kind"], e["items"]) for e in errors] == [("custom/rows", "pairwise", 4)]


NAME_KIND_PATH = 'name = "a"\nkind = "pairwise"\npath = "rows.jsonl"\n'


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[[scenario]]\nname = "a"\npath = "rows.jsonl"\n',
         "[[scenario]] #1 (name 'a'): field 'kind': missing (required: name, kind, path)"),
        ('[[scenario]]\nname = "a"\nkind = "pairs"\npath = "rows.jsonl"\n',
         "[[scenario]] #1 (name 'a'): field 'kind': expected \"pairwise\" or \"bon\", got 'pairs'"),
        (f'[[scenario]]\n{NAME_KIND_PATH}\n[[scenario]]\nname = "b"\nkind = "bon"\npath = "nope.jsonl"\n',
         "[[scenario]] #2 (name 'b'): field 'path': 'nope.jsonl': no such file"),
        (f'[[scenario]]\n{NAME_KIND_PATH}\n[[scenario]]\nkind = "bon"\npath = "rows.jsonl"\n',
         "[[scenario]] #2: field 'name': missing (required: name, kind, path)"),
        (f'[[scenario]]\n{NAME_KIND_PATH}paht = "x"\n', "[[scenario]] #1 (name 'a'): field 'paht': unknown field"),
        (f'[[scenario]]\n{NAME_KIND_PATH}\n[[scenario]]\n{NAME_KIND_PATH}',
         "[[scenario]] #2 (name 'a'): field 'kind': scenario custom/a already has a pairwise set"),
        (f'[[scenario]]\n{NAME_KIND_PATH}task = "Code"\n',
         "[[scenario]] #1 (name 'a'): field 'task': 'Code' is one of RMB's tasks"),
        (f'[[scenario]]\n{NAME_KIND_PATH}markers = ["skip"]\n',
         "[[scenario]] #1 (name 'a'): field 'markers[0]': 'skip' is reserved"),
        (f'[[scenario]]\n{NAME_KIND_PATH}markers = "fast"\n',
         "[[scenario]] #1 (name 'a'): field 'markers': expected a list"),
        ('[[scenario]\nname = "a"\n', "invalid TOML: "),
        ('[[scenarios]]\nname = "a"\n', "unknown key(s) scenarios"),
    ],
)
def test_a_bad_toml_is_a_usage_error_naming_file_table_and_field(pytester, toml, message):
    (pytester.path / "rows.jsonl").write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    path = pytester.path / "sets.toml"
    path.write_text(toml, encoding="utf-8")
    result = run(pytester, "--rmb-model", "length", "--rmb-scenarios", "sets.toml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    (line,) = [line for line in result.errlines if line.startswith("ERROR: pytest-rmb: ")]
    assert line.startswith(f"ERROR: pytest-rmb: --rmb-scenarios: {path}: {message}")


def test_a_missing_toml_file_is_a_usage_error(pytester):
    result = run(pytester, "--rmb-model", "length", "--rmb-scenarios", "nowhere.toml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--rmb-scenarios: {pytester.path / 'nowhere.toml'}: no such file"])


def test_ini_option_paths_are_relative_to_the_ini_file_and_data_to_the_toml(pytester, monkeypatch):
    write_rows(pytester.path / "data/support.jsonl", PAIR_ROWS)
    (pytester.path / "conf").mkdir()
    # '..' is fine: the TOML and the data are the user's own.
    (pytester.path / "conf/sets.toml").write_text(
        '[[scenario]]\nname = "support"\nkind = "pairwise"\npath = "../data/support.jsonl"\n')
    ini = pytester.makeini("[pytest]\nrmb_scenarios = conf/sets.toml\n")
    monkeypatch.chdir(pytester.mkdir("elsewhere"))
    result = pytester.runpytest("-p", "no:cacheprovider", "--rmb-model", "length", "-c", str(ini),
                                "--rmb-jsonl", str(pytester.path / "s.jsonl"))
    assert result.ret == 0
    assert by_kind(jsonl(pytester.path / "s.jsonl"))["pairwise"] == expected_pairs()


# --- the row parser on its own -----------------------------------------------------------------


def rows_of(tmp_path: Path, kind: str, *rows) -> tuple[list, list[str]]:
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    contents = read_rows(path, kind, "custom/x")
    return contents.samples, [bad.describe(path, kind).split(": ", 1)[1] for bad in contents.bad]


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
          "rejected": [{"role": "user", "content": "other q"}, {"role": "assistant", "content": "b"}]},
         "field 'rejected': the conversation before its answer differs from that of 'chosen'"),
        ({"chosen": [{"role": "user", "content": "q"}], "rejected": "b", "prompt": "q"},
         "field 'chosen[0].role': the final message is the answer and must come from the assistant, got 'user'"),
        ({"chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]},
         "field 'chosen': no conversation before the answer"),
        ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}], "chosen": "a",
          "rejected": "b"},
         "field 'prompt[1].role': the message before the answer must come from the user, got 'assistant'"),
        ({"chosen": "a", "rejected": "b"}, "field 'prompt': missing (needed when 'chosen' is a string)"),
        ({"prompt": "q", "chosen": [{"role": "assistant", "content": 3}], "rejected": "b"},
         "field 'chosen[0].content': expected a string, got int"),
        ({"id": True, "prompt": "q", "chosen": "a", "rejected": "b"},
         "field 'id': expected a non-empty string or an integer, got boolean"),
        ([1, 2], "expected a JSON object, got array"),
    ],
)
def test_row_problems_name_the_field(tmp_path, row, problem):
    samples, problems = rows_of(tmp_path, "pairwise", row)
    assert samples == []
    assert len(problems) == 1 and problems[0].startswith("line 1")
    assert problem in problems[0]


def test_uids_come_from_id_then_uid_then_the_line_number(tmp_path):
    good = {"prompt": "q", "chosen": "a", "rejected": "b"}
    samples, problems = rows_of(tmp_path, "pairwise", {**good, "id": 7}, {**good, "uid": "u"}, good)
    assert problems == []
    assert sorted(s.uid for s in samples) == ["3", "7", "u"]
    # A row without an id whose line number another row took as its id is the later duplicate.
    samples, problems = rows_of(tmp_path, "pairwise", {**good, "id": 2}, good)
    assert [s.uid for s in samples] == ["2"]
    assert problems == ["line 2: no id field, and its line number '2' is another row's id (first at line 1)"]


def test_bon_rows_need_losers_and_a_pairwise_row_is_named_as_such(tmp_path):
    samples, problems = rows_of(
        tmp_path, "bon", {"prompt": "q", "best": "a", "losers": []}, {"prompt": "q", "chosen": "a", "rejected": "b"},
        {"prompt": "q", "best": "a", "losers": "b"})
    assert samples == []
    assert problems == [
        "line 1: field 'losers': empty (a Best-of-N list needs at least one loser)",
        "line 2: field 'best': missing (the row looks like a pairwise row; its [[scenario]] table says kind = \"bon\")",
        "line 3: field 'losers': expected a list of answers, got string",
    ]


def test_undecodable_lines_are_bad_rows_and_an_unreadable_file_is_a_file_error(tmp_path):
    path = tmp_path / "rows.jsonl"
    good = json.dumps({"prompt": "q", "chosen": "a\u2028b", "rejected": "b"}, ensure_ascii=False).encode()
    path.write_bytes(b"\xef\xbb\xbf" + good + b"\r\n\xff\xfe\n" + good.replace(b'"q"', b'"r"') + b"\n")
    contents = read_rows(path, "pairwise", "custom/x")
    assert [s.uid for s in contents.samples] == ["1", "3"]
    assert contents.samples[0].chosen.text == "a\u2028b"
    assert [bad.describe(path, "pairwise") for bad in contents.bad] == [
        f"{path}: line 2: not UTF-8 text (invalid start byte at byte 0 of the line)"]
    with pytest.raises(DataFileError, match="cannot read"):
        read_rows(tmp_path, "pairwise", "custom/x")
