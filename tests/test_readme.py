"""The README and the docs/ pages must stay true: their examples run, every option is documented,
every relative link resolves, and the README stays a front page."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from tests.helpers import SAMPLE_DATA, all_files

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOC_FILES = sorted((ROOT / "docs").rglob("*.md"))
# Every page a reader may land on, README first: examples moved from the README into docs/.
PAGES = {"README.md": README} | {
    path.relative_to(ROOT).as_posix(): path.read_text(encoding="utf-8") for path in DOC_FILES
}
README_MAX_LINES = 300


def docs_hooks():
    """docs/hooks.py, the mkdocs hook that generates the reference pages, loaded by path."""
    spec = importlib.util.spec_from_file_location("rmb_docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pages_with(marker: str) -> list[str]:
    found = [name for name, text in PAGES.items() if marker in text]
    assert found, f"no page of README.md or docs/ holds {marker!r}"
    return found


def python_blocks_after(marker: str) -> list[str]:
    """The first ```python block after ``marker``, on every page that has the marker."""
    blocks = []
    for name in pages_with(marker):
        text = PAGES[name]
        match = re.compile(r"```python\n(.*?)```", re.S).search(text, text.index(marker))
        blocks.append(match.group(1))
    return blocks


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
    [block] = python_blocks_after("<!-- example: conftest-override")
    pytester.makeconftest(block)
    result = pytester.runpytest("--rmb-model", "keyword-refusal", "--rmb-data", "sample", "--rmb-json", "s.json")
    assert result.ret == 0
    summary = json.loads((pytester.path / "s.json").read_text())
    assert summary["model"] == "keyword-refusal"
    for section, count in expected_keyword_refusal().items():
        assert summary["sections"][section]["correct"] == count, section


@pytest.mark.parametrize("page", pages_with("# my_rms.py, importable from where pytest runs"))
def test_python_factory_example_runs_as_documented(pytester, monkeypatch, page):
    text = PAGES[page]
    start = text.index("# my_rms.py, importable from where pytest runs")
    pytester.makepyfile(my_rms=text[start:].split("```", 1)[0])
    monkeypatch.syspath_prepend(pytester.path)
    result = pytester.runpytest("--rmb-model", "python:my_rms:make", "--rmb-data", "sample", "--rmb-json", "s.json")
    assert result.ret == 0
    assert json.loads((pytester.path / "s.json").read_text())["model"] == "python:my_rms:make"


def test_every_rmb_option_and_ini_setting_is_documented(pytester):
    help_text = pytester.runpytest("--help").stdout.str()
    options = set(re.findall(r"(--rmb-[a-z-]+)", help_text))
    inis = set(re.findall(r"^  (rmb_[a-z_]+) \(", help_text, re.M))
    assert len(options) >= 9 and len(inis) >= 4
    # The hand-written pages plus the reference the docs build generates from the package.
    documented = "\n".join(PAGES.values()) + docs_hooks().options_markdown()
    for name in sorted(options | inis):
        assert f"`{name}" in documented, f"{name} is not documented in README.md or docs/"


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
        for page in pages_with(marker):
            source = PAGES[page][PAGES[page].index(marker):].split("```", 1)[0]
            code = compile(source, marker, "exec")
            assert "make" in code.co_names and "score" in source


def test_readme_is_a_front_page():
    lines = len(README.splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_relative_link_points_at_a_file_that_exists(page):
    base = (ROOT / page).parent
    text = re.sub(r"```.*?```", "", PAGES[page], flags=re.S)  # code blocks hold no links
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        path = target.split("#", 1)[0]
        if not (base / path).exists():
            broken.append(target)
    assert not broken, f"{page}: links to missing files: {broken}"


def test_generated_reference_pages_render():
    hooks = docs_hooks()
    backends = hooks.backends_markdown()
    for scheme in ("baseline", "dpo", "hf", "hf-judge", "openai", "python", "sglang", "vllm"):
        assert f"### `{scheme}:`" in backends
    assert "| `budget_tokens` |" in backends
    for name, render in hooks.GENERATED.items():
        page = next(p for p, text in PAGES.items() if f"<!-- generated: {name} -->" in text)
        assert page.startswith("docs/reference/") and render().strip(), name


def test_summary_reference_renders_a_schema(tmp_path, monkeypatch):
    hooks = docs_hooks()
    schema = {
        "type": "object", "required": ["schema_version"],
        "properties": {
            "schema_version": {"type": "integer", "description": "version | of the layout"},
            "overall": {"type": ["number", "null"], "description": "mean of the sections"},
            "gates": {"type": "array", "items": {"$ref": "#/$defs/gate"}},
        },
    }
    path = tmp_path / "summary.schema.json"
    path.write_text(json.dumps(schema, indent=2))
    monkeypatch.setattr(hooks, "SCHEMA_PATH", path)
    page = hooks.summary_markdown()
    assert "| `schema_version` | integer | yes | version \\| of the layout |" in page
    assert "| `overall` | number or null |  | mean of the sections |" in page
    assert "| `gates` | array of `gate` |" in page
    assert '"schema_version"' in page.split("```json", 1)[1]
