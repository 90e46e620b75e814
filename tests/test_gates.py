"""Gates: thresholds, baseline comparison with a paired bootstrap, exit status, CI reports."""

from __future__ import annotations

import json
from functools import partial

import pytest

from pytest_rmb.gate import GateError, evaluate_thresholds, parse_gate
from pytest_rmb.metrics import paired_comparison
from tests.helpers import SAMPLE_DATA, all_files, expected_correct, run_rmb

SCENARIOS = {"code/data_management", "chat/discussion"}
TASKS = {"code", "chat"}


@pytest.mark.parametrize(
    ("text", "metric", "op", "bar"),
    [
        ("overall>=0.7", "overall", ">=", 0.7),
        (" helpfulness.bon > 0.5 ", "helpfulness.bon", ">", 0.5),
        ("harmlessness.pairwise<=1", "harmlessness.pairwise", "<=", 1.0),
        ("task:code.pairwise>=0.75", "task:code.pairwise", ">=", 0.75),
        ("scenario:chat/discussion.bon<0.9", "scenario:chat/discussion.bon", "<", 0.9),
    ],
)
def test_gate_expressions_parse(text, metric, op, bar):
    gate = parse_gate(text, SCENARIOS, TASKS)
    assert (gate.metric, gate.op, gate.bar) == (metric, op, bar)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("overall=0.7", "expected METRIC OP NUMBER"),
        ("overall >= high", "expected METRIC OP NUMBER"),
        ("overall >= 1.2.3", "is not a number"),
        ("accuracy >= 0.7", "unknown metric 'accuracy'"),
        ("task:poetry.bon >= 0.7", "unknown task 'poetry'"),
        ("scenario:chat/nothing.bon >= 0.7", "unknown scenario 'chat/nothing'"),
        ("task:code.both >= 0.7", "must end in .pairwise or .bon"),
    ],
)
def test_bad_gate_expressions_are_named(text, message):
    with pytest.raises(GateError, match=message):
        parse_gate(text, SCENARIOS, TASKS)


def test_threshold_on_an_empty_metric_fails_unless_allowed():
    summary = {"overall": None, "overall_ci95": None, "sections": {}, "tasks": {}, "scenarios": {}}
    gate = parse_gate("task:code.bon>=0.5", SCENARIOS, TASKS)
    (strict,) = evaluate_thresholds([gate], summary, allow_empty=False)
    (lenient,) = evaluate_thresholds([gate], summary, allow_empty=True)
    assert (strict.status, lenient.status) == ("FAIL", "NOT EVALUATED")
    assert "no samples" in strict.detail


def test_paired_comparison_counts_discordant_pairs_and_is_seeded():
    old = [True] * 80 + [False] * 20
    new = [True] * 60 + [False] * 20 + [True] * 5 + [False] * 15
    result = paired_comparison({"s": old}, {"s": new}, seed=1, resamples=2000)["s"]
    assert (result["lost"], result["gained"], result["shared"]) == (20, 5, 100)
    assert result["delta"] == pytest.approx(-0.15)
    low, high = result["ci95"]
    assert low < -0.15 < high < 0
    assert result["p_drop"] < 0.01
    assert paired_comparison({"s": old}, {"s": new}, seed=1, resamples=2000)["s"] == result
    same = paired_comparison({"s": old}, {"s": old})["s"]
    assert (same["delta"], same["p_drop"], same["ci95"]) == (0.0, 1.0, [0.0, 0.0])


def test_overall_comparison_is_the_mean_of_the_sections():
    result = paired_comparison({"a": [True, True], "b": [True, False]}, {"a": [True, False], "b": [True, True]})
    assert result["overall"]["baseline"] == pytest.approx(0.75)
    assert result["overall"]["current"] == pytest.approx(0.75)
    assert result["overall"]["delta"] == pytest.approx(0.0)


run = partial(run_rmb, options=("--rmb-data", "sample"))


def sample_accuracy(section):
    correct = total = 0
    for relative, records in all_files(SAMPLE_DATA).items():
        kind = "pairwise" if relative.startswith("Pairwise") else "bon"
        if f"{relative.split('/')[1].lower()}.{kind}" == section:
            for record in records:
                total += 1
                correct += expected_correct(record)[0]
    return correct / total


def test_passing_thresholds_exit_0_and_the_gates_table_comes_last(pytester):
    bar = sample_accuracy("helpfulness.pairwise") - 0.01
    result = run(pytester, "--rmb-model", "length", "--rmb-gate", f"helpfulness.pairwise>={bar}",
                 "--rmb-gate", "overall>0.5")
    assert result.ret == 0
    lines = [line for line in result.outlines if line.strip()]
    assert lines[-1].startswith("=") and "passed" in lines[-1]
    assert lines[-2] == "rmb: all gates passed"
    result.stdout.fnmatch_lines(["*RMB gates*", "*helpfulness.pairwise*>= *PASS*", "*overall*> 0.5*PASS*"])


def test_a_failing_threshold_exits_1_and_says_which(pytester):
    result = run(pytester, "--rmb-model", "length", "--rmb-gate", "task:closed_qa.bon>0.5", "--rmb-json", "s.json")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*task:closed_qa.bon*0.0000*> 0.5*FAIL*", "rmb: 1 gate(s) failed: task:closed_qa.bon > 0.5 (threshold)"])
    gates = json.loads((pytester.path / "s.json").read_text())["gates"]
    assert gates == [{"metric": "task:closed_qa.bon", "value": 0.0, "reference": "> 0.5",
                      "interval": None, "status": "FAIL", "detail": ""}]


@pytest.mark.parametrize(
    ("gate", "message"),
    [("overall=0.7", "expected METRIC OP NUMBER"), ("task:poetry.bon>=0.1", "unknown task 'poetry'")],
)
def test_bad_gates_are_usage_errors_before_anything_loads(pytester, gate, message):
    result = run(pytester, "--rmb-model", "python:module_that_does_not_exist:make", "--rmb-gate", gate)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*argument --rmb-gate: *{message}*"])
    assert "module_that_does_not_exist" not in result.stdout.str()


def test_gates_from_the_ini_file(pytester):
    pytester.makeini("[pytest]\nrmb_gates =\n    overall >= 0.5\n    helpfulness.bon >= 0.99\n")
    result = run(pytester, "--rmb-model", "length")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*overall*PASS*", "*helpfulness.bon*FAIL*"])
    pytester.makeini("[pytest]\nrmb_gates = overall >= lots\n")
    result = run(pytester, "--rmb-model", "length")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini option rmb_gates:*expected METRIC OP NUMBER*"])


def test_a_gate_on_deselected_samples_fails_unless_allowed(pytester):
    args = ("--rmb-model", "length", "-m", "pairwise", "--rmb-gate", "helpfulness.bon>=0.1")
    result = run(pytester, *args)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*helpfulness.bon*-*FAIL*", "*no samples in this run*--rmb-gate-allow-empty*"])
    result = run(pytester, *args, "--rmb-gate-allow-empty")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*helpfulness.bon*NOT EVALUATED*"])


def test_same_model_against_its_own_baseline_passes(pytester):
    assert run(pytester, "--rmb-model", "length", "--rmb-json", "main.json").ret == 0
    baseline = json.loads((pytester.path / "main.json").read_text())
    assert len(baseline["outcomes"]) == 147
    result = run(pytester, "--rmb-model", "length", "--rmb-baseline", "main.json", "--rmb-json", "new.json")
    assert result.ret == 0
    summary = json.loads((pytester.path / "new.json").read_text())
    assert [g["status"] for g in summary["gates"]] == ["PASS"] * 5
    assert summary["baseline"]["sections"]["overall"]["delta"] == 0.0
    assert summary["baseline"]["sections"]["overall"]["p_drop"] == 1.0


def test_random_against_a_length_baseline_fails_with_significance(pytester):
    run(pytester, "--rmb-model", "length", "--rmb-json", "main.json")
    result = run(pytester, "--rmb-model", "random", "--rmb-baseline", "main.json", "--rmb-json", "new.json")
    assert result.ret == 1
    summary = json.loads((pytester.path / "new.json").read_text())
    overall = summary["baseline"]["sections"]["overall"]
    main = json.loads((pytester.path / "main.json").read_text())
    assert overall["baseline"] == pytest.approx(main["overall"])
    assert overall["current"] == pytest.approx(summary["overall"])
    assert overall["p_drop"] < 0.05 and overall["ci95"][1] < 0
    result.stdout.fnmatch_lines([
        "Baseline gates*",
        f"overall *{overall['current']:.4f} *{overall['baseline']:.4f} *{overall['delta']:+.4f} *"
        f"[[]{overall['ci95'][0]:+.4f}, {overall['ci95'][1]:+.4f}] *FAIL*",
        "*overall: delta -0.*p=0.0*n=147*",
        f"rmb: * gate(s) failed: overall vs baseline ({overall['delta']:+.4f} < -0.01), *"])
    # The same drop passes when more is allowed.
    result = run(pytester, "--rmb-model", "random", "--rmb-baseline", "main.json", "--rmb-max-drop", "0.9")
    assert result.ret == 0


def test_a_small_drop_that_is_not_significant_passes(pytester):
    run(pytester, "--rmb-model", "length", "--rmb-json", "main.json")
    main = json.loads((pytester.path / "main.json").read_text())
    # Pretend the baseline got one more sample right: a one-sample difference is noise.
    miss = next(k for k, v in main["outcomes"].items() if v == 0)
    main["outcomes"][miss] = 1
    (pytester.path / "main.json").write_text(json.dumps(main))
    result = run(pytester, "--rmb-model", "length", "--rmb-baseline", "main.json", "--rmb-max-drop", "0")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*drop not significant at alpha=0.05*"])


def test_baseline_on_other_data_is_reported(pytester):
    run(pytester, "--rmb-model", "length", "-m", "code", "--rmb-json", "main.json")
    main = json.loads((pytester.path / "main.json").read_text())
    main["dataset"] = "/somewhere/else"
    (pytester.path / "main.json").write_text(json.dumps(main))
    result = run(pytester, "--rmb-model", "length", "--rmb-baseline", "main.json", "--rmb-json", "new.json")
    result.stdout.fnmatch_lines([
        "baseline: baseline ran on dataset '/somewhere/else', this run on 'sample'",
        "baseline: compared on the 12 samples both runs share; 0 only in the baseline, 135 only in this run",
    ])
    summary = json.loads((pytester.path / "new.json").read_text())
    assert summary["baseline"]["only_in_this_run"] == 135
    assert summary["baseline"]["sections"]["overall"]["shared"] == 12


@pytest.mark.parametrize(
    ("content", "message"), [("{", "invalid JSON"), ('{"a": 1}', "not a pytest-rmb --rmb-json summary")]
)
def test_an_unusable_baseline_is_a_usage_error(pytester, content, message):
    (pytester.path / "bad.json").write_text(content)
    result = run(pytester, "--rmb-model", "length", "--rmb-baseline", "bad.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--rmb-baseline *bad.json: {message}*"])
    result = run(pytester, "--rmb-model", "length", "--rmb-baseline", "absent.json")
    result.stderr.fnmatch_lines(["*--rmb-baseline *absent.json: No such file or directory*"])


def test_real_errors_keep_their_exit_status_even_when_gates_pass(pytester):
    data = pytester.path / "data"
    (data / "Pairwise_set/Harmlessness").mkdir(parents=True)
    (data / "Pairwise_set/Harmlessness/S1.json").write_text("[{]")
    result = pytester.runpytest("-p", "no:cacheprovider", "--rmb-data", "data", "--rmb-model", "length",
                                "--rmb-gate", "overall>=0", "--rmb-gate-allow-empty")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["rmb: all gates passed"])


def test_markdown_report_for_the_step_summary(pytester):
    run(pytester, "--rmb-model", "length", "--rmb-json", "main.json")
    result = run(pytester, "--rmb-model", "random", "--rmb-baseline", "main.json",
                 "--rmb-gate", "overall>=0.3", "--rmb-markdown", "summary.md")
    markdown = (pytester.path / "summary.md").read_text()
    assert markdown.startswith("## RMB: `random` on `sample`\n")
    assert "| Section | Accuracy | Length | 95% CI | Correct | Macro |" in markdown
    assert "| `overall` | " in markdown and ":x: FAIL" in markdown and ":white_check_mark: PASS" in markdown
    assert "<details><summary>Per scenario</summary>" in markdown
    result.stdout.fnmatch_lines(["rmb: Markdown report written to *summary.md"])


def test_compare_command_prints_deltas_with_significance_and_writes_html(pytester):
    import subprocess
    import sys
    from html.parser import HTMLParser

    run(pytester, "--rmb-model", "length", "--rmb-json", "length.json")
    run(pytester, "--rmb-model", "random", "--rmb-json", "random.json")
    run(pytester, "--rmb-model", "random", "--rmb-seed", "3", "--rmb-json", "random3.json")
    done = subprocess.run(
        [sys.executable, "-m", "pytest_rmb", "compare", "length.json", "random.json", "random3.json",
         "--html", "out/compare.html", "--scenarios"],
        cwd=pytester.path, capture_output=True, text=True, check=False,
        env={**__import__("os").environ, "COLUMNS": "160"},
    )
    assert done.returncode == 0, done.stderr
    length, random = (json.loads((pytester.path / n).read_text()) for n in ("length.json", "random.json"))
    delta = random["overall"] - length["overall"]
    overall_line = next(line for line in done.stdout.splitlines() if line.strip().startswith("overall"))
    assert f"{length['overall']:.4f}" in overall_line and f"{delta:+.4f}*" in overall_line
    assert "scenario:code/data_management.pairwise" in done.stdout

    page = (pytester.path / "out/compare.html").read_text()
    assert page.count("<svg") == 2 and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "src=" not in page and "<link" not in page and "<script" not in page
    HTMLParser().feed(page)
    assert f"{delta:+.4f}*" in page and "random (random3.json)" in page


def test_compare_needs_two_summaries():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "pytest_rmb", "compare", "one.json"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "at least two summaries" in done.stderr
    done = subprocess.run([sys.executable, "-m", "pytest_rmb"], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "usage: pytest-rmb COMMAND" in done.stderr and "\n  compare " in done.stderr


def test_a_baseline_sharing_no_samples_fails_and_says_nothing_was_compared(pytester):
    assert run(pytester, "--rmb-model", "length", "-m", "chat", "--rmb-json", "chat.json").ret == 0
    args = ("--rmb-model", "length", "-m", "harmlessness", "--rmb-baseline", "chat.json", "--rmb-json", "new.json")
    result = run(pytester, *args)
    assert result.ret == 1
    result.stdout.fnmatch_lines([
        "Baseline gates*",
        "overall * - * - * - * - *FAIL*",
        "*overall: no samples shared with the baseline*nothing was compared*--rmb-gate-allow-empty*",
        "baseline: no samples shared with the baseline: nothing was compared*",
    ])
    summary = json.loads((pytester.path / "new.json").read_text())
    chat = json.loads((pytester.path / "chat.json").read_text())
    statuses = {g["metric"]: g["status"] for g in summary["gates"]}
    assert statuses["overall"] == "FAIL"
    assert summary["baseline"]["only_in_baseline"] == len(chat["outcomes"])
    assert summary["baseline"]["only_in_this_run"] == len(summary["outcomes"])
    result = run(pytester, *args, "--rmb-gate-allow-empty")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*overall*NOT EVALUATED*", "rmb: all gates passed"])


def test_a_baseline_from_a_failed_run_is_a_usage_error_naming_file_and_reason(pytester):
    (pytester.path / "failed.json").write_text(json.dumps({"status": "error", "reason": "CUDA error: no device"}))
    result = run(pytester, "--rmb-model", "length", "--rmb-baseline", "failed.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--rmb-baseline *failed.json: that run failed*: CUDA error: no device*"])


@pytest.mark.parametrize(("bar", "hint"), [("70", "overall>=0.70"), ("7", "overall>=0.07")])
def test_a_percentage_threshold_is_a_usage_error_suggesting_the_fraction(pytester, bar, hint):
    result = run(pytester, "--rmb-model", "length", "--rmb-gate", f"overall>={bar}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*argument --rmb-gate: *fractions between 0 and 1*write '{hint}'*"])


def test_thresholds_exactly_at_the_accuracy(pytester):
    value = sample_accuracy("helpfulness.pairwise")
    gates = [f"helpfulness.pairwise{op}{value!r}" for op in (">=", ">", "<=", "<")]
    gate_args = [a for g in gates for a in ("--rmb-gate", g)]
    result = run(pytester, "--rmb-model", "length", *gate_args, "--rmb-json", "s.json")
    assert result.ret == 1
    rows = json.loads((pytester.path / "s.json").read_text())["gates"]
    assert [(r["reference"].split()[0], r["value"], r["status"]) for r in rows] == [
        (">=", value, "PASS"), (">", value, "FAIL"), ("<=", value, "PASS"), ("<", value, "FAIL")]
    result.stdout.fnmatch_lines([f"rmb: 2 gate(s) failed: helpfulness.pairwise > {value:g} (threshold), "
                                 f"helpfulness.pairwise < {value:g} (threshold)"])
