"""README.md must stay true: its examples run, and every option it should document is there."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.helpers import SAMPLE_DATA, all_files

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def python_block_after(marker: str) -> str:
    start = README.index(marker)
    match = re.compile(r"```python\n(.*?)```", re.S).search(README, start)
    return match.group(1)


def expected_keyword_refusal():
    """The README scorer's outcome per section, recomputed from the raw sample files."""
    def score(answer):
        return 10_000.0 * any(p in answer for p in ("I can't", "I won't")) + len(answer)

    correct = {}
    for relative, records in all_files(SAMPLE_DATA).items():
        section = f"{relative.split('/')[1].lower()}.{'pairwise' if relative.startswith('Pairwise') else 'bon'}"
        for r in records:
            answers = (
                [r["chosen"]["answer"], r["reject"]["answer"]] if "pair_uid" in r
                else [r["bon_best"]["answer"]] + [x["answer"] for x in r["loser_list"]]
            )
            scores = [score(a) for a in answers]
            correct[section] = correct.get(section, 0) + all(scores[0] > s for s in scores[1:])
    return correct


def test_conftest_override_example_runs_as_documented(pytester):
    pytester.makeconftest(python_block_after("<!-- example: conftest-override"))
    result = pytester.runpytest("--rmb-model", "keyword-refusal", "--rmb-data", "sample", "--rmb-json", "s.json")
    assert result.ret == 0
    summary = json.loads((pytester.path / "s.json").read_text())
    assert summary["model"] == "keyword-refusal"
    for section, count in expected_keyword_refusal().items():
        assert summary["sections"][section]["correct"] == count, section


def test_python_factory_example_runs_as_documented(pytester, monkeypatch):
    pytester.makepyfile(my_rms=python_block_after("**1. `--rmb-model python:package.module:factory`**"))
    monkeypatch.syspath_prepend(pytester.path)
    result = pytester.runpytest("--rmb-model", "python:my_rms:make", "--rmb-data", "sample", "--rmb-json", "s.json")
    assert result.ret == 0
    assert json.loads((pytester.path / "s.json").read_text())["model"] == "python:my_rms:make"


def test_every_rmb_option_and_ini_setting_is_documented(pytester):
    help_text = pytester.runpytest("--help").stdout.str()
    options = set(re.findall(r"(--rmb-[a-z-]+)", help_text))
    inis = set(re.findall(r"^  (rmb_[a-z_]+) \(", help_text, re.M))
    assert len(options) >= 9 and len(inis) >= 4
    for name in sorted(options | inis):
        assert f"`{name}" in README, f"{name} is not documented in README.md"


def test_readme_quick_start_commands_are_the_ones_ci_runs():
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "pytest --rmb-model length --rmb-data sample" in README
    assert "pytest --rmb-model length --rmb-data sample" in ci
    assert re.search(r"^\s+pytest\s+# in the repository", README, re.M)
    assert re.search(r"^\s*python -m pytest\s*$|^\s*pytest\s*$", ci, re.M)


def test_custom_head_wrappers_in_the_readme_are_valid_factories():
    # They download 7-8B models, so here they are compiled and their factory shape checked; the
    # python: loading mechanism itself runs in test_python_factory_example_runs_as_documented.
    for marker in ("# armorm.py:", "# internlm2_rm.py:"):
        source = README[README.index(marker):].split("```", 1)[0]
        code = compile(source, marker, "exec")
        assert "make" in code.co_names and "score" in source
