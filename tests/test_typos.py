"""A mistyped name gets the closest right one, the way a user meets it: ``pytest --rmb-model ...``.

Every expected name here comes from RMB's own facts (its 12 helpfulness tasks, two goals, two kinds,
49 scenarios, as the design notes list them) or from the test's own files, never from pytest-rmb.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest

from tests.helpers import SAMPLE_DATA, all_files, pair, run_rmb, write_dataset

run = partial(run_rmb, options=("--rmb-model", "length"))

HELPFULNESS_TASKS = ("Brainstorming", "Chat", "Classification", "Closed QA", "Code", "Generation", "Open QA",
                     "Reasoning", "Rewrite", "Role Playing", "Summarization", "Translation")
# The markers of RMB's items as the message lists them: goals, kinds, then the tasks' ids.
RMB_MARKERS = ", ".join(["harmlessness", "helpfulness", "pairwise", "bon",
                         *sorted(task.lower().replace(" ", "_") for task in HELPFULNESS_TASKS)])
MARKERS_LINE = f"rmb: the markers of this run's items: {RMB_MARKERS} (pytest --markers describes them)"


def output(result) -> str:
    return result.stdout.str() + result.stderr.str()


# --- -m: a marker that no item carries ------------------------------------------------------------


def test_a_misspelt_marker_names_the_closest_and_every_marker_after_an_empty_run(pytester):
    result = run(pytester, "--rmb-data", "sample", "-m", "harmlesness")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    lines = result.stdout.lines
    hint = [
        "rmb: -m 'harmlesness' selected no RMB item.",
        "rmb: no RMB item has the marker 'harmlesness'; did you mean 'harmlessness'?",
        MARKERS_LINE,
    ]
    start = lines.index(hint[0])
    assert lines[start:start + 3] == hint
    # At the end, just before pytest's own last line, and instead of a table of empty rows.
    assert lines[start + 3:] == [line for line in lines[start + 3:] if "deselected" in line]
    assert "RMB accuracy" not in result.stdout.str()


def test_a_misspelt_keyword_names_the_closest_part_of_an_item_name_after_an_empty_run(pytester):
    result = run(pytester, "--rmb-data", "sample", "-k", "brainstrom and not idea")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    lines = result.stdout.lines
    start = lines.index("rmb: -k 'brainstrom and not idea' selected no RMB item.")
    # 'idea' is part of rmb/brainstorming/idea_development: no complaint about it.
    assert lines[start + 1] == "rmb: no RMB item's name or marker contains 'brainstrom'; did you mean 'brainstorming'?"
    assert lines[start + 2].startswith("rmb: -k matches parts of item names such as ")
    assert "RMB accuracy" not in result.stdout.str()


def test_a_keyword_that_selects_items_gets_no_hint(pytester):
    result = run(pytester, "--rmb-data", "sample", "-k", "brainstorming")
    assert result.ret == pytest.ExitCode.OK
    assert "selected no RMB item" not in result.stdout.str()


def test_markers_are_case_sensitive_and_the_hint_says_so(pytester):
    result = run(pytester, "--rmb-data", "sample", "-m", "Chat and not BON")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result.stdout.fnmatch_lines([
        "rmb: -m 'Chat and not BON' selected no RMB item.",
        "rmb: no RMB item has the marker 'Chat'; did you mean 'chat'? (markers are case-sensitive)",
        "rmb: no RMB item has the marker 'BON'; did you mean 'bon'? (markers are case-sensitive)",
        MARKERS_LINE,
    ])


def test_under_xdist_the_controller_gives_the_same_hint(pytester):
    # The controller collects nothing itself there: it counts the workers' collections.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--rmb-model", "length", "--rmb-data", "sample",
                                           "-m", "Chat", "-n", "2")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result.stdout.fnmatch_lines([
        "rmb: no RMB item has the marker 'Chat'; did you mean 'chat'? (markers are case-sensitive)",
        MARKERS_LINE,
    ])


def test_known_markers_that_select_nothing_together_are_told_apart_from_a_typo(pytester):
    # Harmlessness scenarios have no task: chat and harmlessness share no item.
    result = run(pytester, "--rmb-data", "sample", "-m", "chat and harmlessness")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result.stdout.fnmatch_lines([
        "rmb: -m 'chat and harmlessness' selected no RMB item.",
        "rmb: each name in it is a marker, but no RMB item matches the expression as a whole",
        MARKERS_LINE,
    ])
    assert "did you mean" not in result.stdout.str()

    # -k deselects too: the first line names it, as it may be what selected nothing.
    both = run(pytester, "--rmb-data", "sample", "-m", "chat", "-k", "nothing_is_called_so")
    assert both.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    both.stdout.fnmatch_lines(["rmb: -m 'chat' with -k 'nothing_is_called_so' selected no RMB item."])


def test_a_misspelt_marker_of_your_own_sets_gets_your_marker(pytester):
    rows = [{"id": "a", "prompt": "Hi", "chosen": "Hello, how can I help?", "rejected": "Hi"}]
    (pytester.path / "support.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (pytester.path / "sets.toml").write_text(
        '[[scenario]]\nname = "support"\nkind = "pairwise"\npath = "support.jsonl"\nmarkers = ["team_a"]\n')
    result = run(pytester, "--rmb-scenarios", "sets.toml", "-m", "team-a")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result.stdout.fnmatch_lines([
        "rmb: no RMB item has the marker 'team-a'; did you mean 'team_a'?",
        # Goal and task default to "custom", the kind is pairwise: no RMB data, so no RMB marker.
        "rmb: the markers of this run's items: custom, pairwise, team_a (pytest --markers describes them)",
    ])


# --- --rmb-gate: an unknown scenario or task ------------------------------------------------------


def test_an_unknown_gate_scenario_names_the_closest_few_not_all_49(pytester):
    result = run(pytester, "--rmb-data", "sample", "--rmb-gate", "scenario:chat/discusion.bon>=0.5")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    message = output(result)
    assert ("'scenario:chat/discusion.bon>=0.5': unknown scenario 'chat/discusion'; did you mean chat/discussion, "
            in message)
    assert ("(49 scenarios in this run; `pytest --rmb-model length --collect-only -q` lists them as "
            "rmb/<task>/<scenario>)") in message
    suggested = message.split("did you mean ", 1)[1].split("?", 1)[0].split(", ")
    assert len(suggested) == 3
    assert "translation/technical_and_scientific_translation" not in message


def test_a_gate_id_with_hyphens_is_an_unknown_name_not_a_bad_operator(pytester):
    result = run(pytester, "--rmb-data", "sample", "--rmb-gate", "scenario:open-qa/factual.pairwise>=0.5")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    message = output(result)
    assert "unknown scenario 'open-qa/factual'; did you mean open_qa/factual, " in message
    assert "OP one of" not in message

    task = run(pytester, "--rmb-data", "sample", "--rmb-gate", "task:role-playing.bon>0.5")
    assert task.ret == pytest.ExitCode.USAGE_ERROR
    assert "unknown task 'role-playing'; did you mean role_playing, " in output(task)
    assert "(13 tasks in this run; " in output(task)  # the 12 helpfulness tasks and harmlessness


# --- --rmb-model-arg: a misspelt key, a value shown as typed --------------------------------------


def test_a_misspelt_setting_gets_the_closest_and_the_accepted_ones(pytester):
    result = run(pytester, "--rmb-data", "sample", "--rmb-model", "openai:judge", "--rmb-model-arg", "concurency=4")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    message = output(result)
    assert ("--rmb-model-arg concurency: the openai backend has no setting 'concurency' (did you mean "
            "'concurrency'?); accepted: mode, scale, base_url, api_key_env, concurrency, routing, ") in message


def test_a_refused_value_is_shown_as_typed_unless_it_is_a_credential(pytester, monkeypatch):
    result = run(pytester, "--rmb-data", "sample", "--rmb-model", "openai:judge",
                 "--rmb-model-arg", "base_url=localhost:8000")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--rmb-model-arg base_url: expected an http:// or https:// base URL, got 'localhost:8000'" in output(result)

    # The key the environment holds, pasted into another setting: masked, whatever its shape.
    monkeypatch.setenv("OPENAI_API_KEY", "open.sesame:42")
    pasted = run(pytester, "--rmb-data", "sample", "--rmb-model", "openai:judge",
                 "--rmb-model-arg", "max_tokens=open.sesame:42")
    assert pasted.ret == pytest.ExitCode.USAGE_ERROR
    assert "--rmb-model-arg max_tokens: expected a positive integer, got '***'" in output(pasted)
    assert "sesame" not in output(pasted)


# --- --rmb-data: a misspelt word, and what the words mean ---------------------------------------


def test_a_misspelt_data_word_gets_the_word(pytester):
    result = run(pytester, "--rmb-data", "samples")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert (f"--rmb-data samples: no such directory ({pytester.path / 'samples'}); did you mean 'sample'?"
            in output(result))
    elsewhere = run(pytester, "--rmb-data", "/no/such/place")
    assert "no such directory (/no/such/place)" in output(elsewhere) and "did you mean" not in output(elsewhere)


@pytest.fixture
def local_folders(pytester, monkeypatch) -> dict[str, Path]:
    """A ./sample and a ./rmb folder in RMB's layout, one pair each, and no fetched copy of RMB."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(pytester.path / "cache"))
    monkeypatch.delenv("RMB_DATA", raising=False)
    return {
        word: write_dataset(pytester.path / word, {
            "Pairwise_set/Helpfulness/Chat/Discussion.json": [pair(f"{word}-1", "Hi?", "Hello, how are you?", "Hi")],
        })
        for word in ("sample", "rmb")
    }


def test_the_data_words_mean_their_data_wherever_pytest_runs(pytester, local_folders):
    bundled = run(pytester, "--rmb-data", "sample", "--rmb-json", "bundled.json", "--rmb-jsonl", "bundled.jsonl")
    assert bundled.ret == 0
    assert json.loads((pytester.path / "bundled.json").read_text())["dataset"] == "sample"
    ran = {json.loads(line)["uid"] for line in (pytester.path / "bundled.jsonl").read_text().splitlines()}
    shipped = {record.get("pair_uid") or record["bon_uid"] for records in all_files(SAMPLE_DATA).values()
               for record in records}
    assert ran == shipped
    # The run says that the word won over the folder, and how to name the folder.
    assert (f"--rmb-data sample means the bundled sample, not the folder {local_folders['sample']}; "
            "to run on that folder give --rmb-data ./sample") in bundled.stdout.str()

    fetched = run(pytester, "--rmb-data", "rmb")
    assert fetched.ret == pytest.ExitCode.USAGE_ERROR
    assert (f"--rmb-data rmb: no fetched copy of RMB under {pytester.path / 'cache' / 'pytest-rmb'}; get one with "
            "`pytest-rmb fetch`, or give --rmb-data PATH; the folder rmb/ here is --rmb-data ./rmb") in output(fetched)


@pytest.mark.parametrize("word", ["sample", "rmb"])
def test_a_folder_named_like_a_word_is_dot_slash_word(pytester, local_folders, word):
    result = run(pytester, "--rmb-data", f"./{word}", "--rmb-json", "s.json", "--rmb-jsonl", "s.jsonl")
    assert result.ret == 0, output(result)
    summary = json.loads((pytester.path / "s.json").read_text())
    assert summary["dataset"] == str(local_folders[word])
    uids = [json.loads(line)["uid"] for line in (pytester.path / "s.jsonl").read_text().splitlines()]
    assert uids == [f"{word}-1"]
    assert "means the bundled sample" not in result.stdout.str()


def test_the_header_words_say_which_data_a_word_meant(pytester, local_folders, monkeypatch):
    from pytest_rmb.options import describe_dataset

    assert describe_dataset("sample") == "the bundled sample (--rmb-data sample)"
    assert describe_dataset(str(local_folders["rmb"])) == str(local_folders["rmb"])
    fetched = pytester.path / "cache" / "pytest-rmb" / "RMB_dataset"
    # By name: pytester's in-process runs may have replaced the module object this file imported.
    monkeypatch.setattr("pytest_rmb.fetch.cached_dataset", lambda: fetched)
    assert describe_dataset(str(fetched)) == f"the fetched copy {fetched} (--rmb-data rmb)"
    assert describe_dataset(str(local_folders["rmb"])) == str(local_folders["rmb"])
