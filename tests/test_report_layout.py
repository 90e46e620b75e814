"""The run's tables as a reader sees them: at 80 columns (CI logs, output piped to a file) and at 150.

Runs go through pytester as a user types them; the tables are read back from the text alone
(the parsing here knows nothing of pytest_rmb.report) and every number is checked against the
summary JSON written in the same run, or against counts taken from the data files directly.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from pytest_rmb.report import fit_width, grouped_table
from pytest_rmb.scenarios import registry
from tests.helpers import SAMPLE_DATA, SHARED_DATA, all_files, expected_correct, pair, run_rmb, write_dataset

# Where a name may break without splitting a word: after one of these, or at a space.
BOUNDARIES = "/_.:-"
NUMBER = re.compile(r"-|\d\.\d{4}(?: \(\d+/\d+\)|!)?")
# A row: a name, then two or more spaces, then cells that start with a number or a dash.
ROW = re.compile(r"^(?P<name>.*?\S)\s{2,}(?P<cells>(?:-|\d\.\d{4}).*)$")


def natural(text: str) -> list:
    """Natural order, written here without pytest_rmb: digit runs compare as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part]


def run(pytester, monkeypatch, columns: int | None, *args: str):
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", str(columns))
    return run_rmb(pytester, *args)


# --- reading a table back from the terminal text ---------------------------------------------------


LEGEND_LINE = re.compile(r"^(?P<term>[^\s:][^:]*): ")


def block(lines: list[str], title: str) -> list[str]:
    """The lines of the table titled ``title``: title, header, rule, rows, then its legend (lines
    ``Header: meaning`` for its own headers or its Overall row, and their indented continuations),
    up to the first line that is neither."""
    start = next(i for i, line in enumerate(lines) if line.rstrip() == title or line.startswith(title + " "))
    own = set(re.split(r"\s{2,}", lines[start + 1].strip()))
    end, in_legend = start + 3, False
    while end < len(lines) and lines[end].strip():
        line = lines[end]
        match = LEGEND_LINE.match(line)
        is_legend = bool(match) and (match["term"] in own or match["term"].startswith("Overall"))
        if in_legend and not (is_legend or line.startswith("    ")):
            break
        in_legend = in_legend or is_legend
        end += 1
    return lines[start:end]


def headers(table: list[str]) -> list[str]:
    return re.split(r"\s{2,}", table[1].strip())


def body(table: list[str]) -> list[str]:
    """The table's rows: between the rule under the header and the first legend line."""
    rows = []
    for line in table[3:]:
        if LEGEND_LINE.match(line) and not ROW.match(line):
            break
        rows.append(line.rstrip())
    return rows


def grouped_rows(table: list[str]) -> tuple[list[str], list[tuple[str, list[str], list[str]]]]:
    """(goals, [(goal, name fragments, cells)]) of a per-task or per-scenario table: a goal line at
    the left edge, each row indented under it, a name that wraps continuing on lines without cells."""
    goals, rows = [], []
    for line in body(table):
        match = ROW.match(line)
        if not line.startswith(" "):
            assert match is None, f"a goal line with cells: {line!r}"
            goals.append(line.strip())
        elif match:
            rows.append((goals[-1], [match["name"].strip()], NUMBER.findall(match["cells"])))
        else:
            rows[-1][1].append(line.strip())
    return goals, rows


def check_whole(name: str, fragments: list[str]) -> None:
    """The fragments a name was printed in put it back together, each break at a word boundary."""
    assert "".join(fragments).replace(" ", "") == name.replace(" ", ""), (name, fragments)
    position = 0
    for fragment in fragments[:-1]:
        position = name.index(fragment, position) + len(fragment)
        assert fragment[-1] in BOUNDARIES or name[position] == " ", f"{name!r} broken mid-word: {fragments}"


def legend_counts(lines: list[str], names: set[str]) -> dict[str, int]:
    return {name: sum(line.startswith(f"{name}: ") for line in lines) for name in names}


def tally_cell(entry: dict) -> str:
    if not entry["total"]:
        return "-"
    return f"{entry['correct'] / entry['total']:.4f} ({entry['correct']}/{entry['total']})"


def null_cell(entry: dict) -> str:
    if "null_accuracy" not in entry:
        return "-"
    return f"{entry['null_accuracy']:.4f}" + ("!" if not entry["beats_null"] else "")


# --- the real tables at 80 and 150 columns ------------------------------------------------------------


TASK_NAMES = {scenario.task for scenario in registry()}
SCENARIO_IDS = {scenario.id for scenario in registry()}


@pytest.mark.parametrize(("data", "columns"), [("sample", 80), ("sample", 150), ("full", 80)])
def test_tables_keep_names_whole_numbers_intact_and_explain_each_column_once(pytester, monkeypatch, data, columns):
    if data == "full" and not SHARED_DATA.is_dir():
        pytest.skip("the RMB data is not in ../shared")
    where = "sample" if data == "sample" else str(SHARED_DATA)
    # random: a model with a Length column beside each of its own, the widest tables there are.
    result = run(pytester, monkeypatch, columns, "--rmb-model", "random", "--rmb-data", where,
                 "--rmb-show-scenarios", "--rmb-show-misses", "0", "--rmb-json", "s.json")
    summary = json.loads((pytester.path / "s.json").read_text())
    lines = result.outlines

    seen_headers: set[str] = set()
    for title, rows, names in (("Per task", summary["tasks"], TASK_NAMES), ("Per scenario", summary["scenarios"],
                                                                          SCENARIO_IDS)):
        table = block(lines, title)
        assert max(len(line.rstrip()) for line in table) <= columns
        assert headers(table) == ["Task" if title == "Per task" else "Scenario",
                                  "Pairwise", "Length", "BoN", "Length"]
        seen_headers |= set(headers(table))
        goals, printed = grouped_rows(table)
        assert goals == ["helpfulness", "harmlessness"]
        id_of = {(row["name"] if title == "Per task" else row_id): row_id for row_id, row in rows.items()}
        assert {"".join(fragments).replace(" ", "") for _, fragments, _ in printed} == {
            name.replace(" ", "") for name in names}
        order = []
        for goal, fragments, cells in printed:
            label = next(name for name in names if name.replace(" ", "") == "".join(fragments).replace(" ", ""))
            check_whole(label, fragments)
            if columns >= 150:
                assert len(fragments) == 1, f"{label!r} wraps at {columns} columns"
            row = rows[id_of[label]]
            assert row["goal"] == goal
            assert cells == [tally_cell(row["pairwise"]), null_cell(row["pairwise"]),
                             tally_cell(row["bon"]), null_cell(row["bon"])]
            order.append((goal, id_of[label]))
        for goal in goals:
            ids = [row_id for g, row_id in order if g == goal]
            assert ids == sorted(ids, key=natural), f"{title} not in natural order: {ids}"

    headline = block(lines, "RMB accuracy")
    assert max(len(line.rstrip()) for line in headline) <= columns
    assert headers(headline) == ["Section", "Accuracy", "Length", "95% CI", "Correct", "Macro"]
    seen_headers |= set(headers(headline))
    for line, section in zip(body(headline), ("helpfulness.pairwise", "helpfulness.bon", "harmlessness.pairwise",
                                              "harmlessness.bon")):
        entry = summary["sections"][section]
        goal, kind = section.split(".")
        label = f"{goal.capitalize()} {'Pairwise' if kind == 'pairwise' else 'BoN'}"
        low, high = entry["ci95"]
        assert re.split(r"\s{2,}", line.strip()) == [
            label, f"{entry['correct'] / entry['total']:.4f}", null_cell(entry), f"[{low:.4f}, {high:.4f}]",
            f"{entry['correct']}/{entry['total']}", f"{entry['macro']:.4f}"]
    # Every header explained exactly once in the whole output, the Length legend once for 5 columns.
    assert legend_counts(lines, seen_headers) == dict.fromkeys(seen_headers, 1)
    assert sum("the length baseline (longer answer wins)" in line for line in lines) == 1


def test_output_piped_to_a_file_is_80_columns_with_every_task_name_whole(pytester, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--rmb-model", "length", "--rmb-data", "sample",
                                           "--rmb-show-misses", "0")
    table = block(result.outlines, "Per task")
    assert max(len(line.rstrip()) for line in table) <= 80
    _, printed = grouped_rows(table)
    assert sorted(" ".join(fragments) for _, fragments, _ in printed) == sorted(TASK_NAMES)


def test_a_table_that_cannot_fit_is_drawn_wider_rather_than_breaking_a_word_or_a_number():
    word = "x" * 40
    rows = {f"own/{word}": {"name": "n", "goal": "custom", "pairwise": {"correct": 1, "total": 2, "accuracy": 0.5},
                            "bon": {"correct": 0, "total": 0, "accuracy": None}}}
    table = grouped_table("Per scenario", "Scenario", rows, "")
    buffer = io.StringIO()
    fit_width(Console(file=buffer, width=30, color_system=None), table).print(table)
    lines = buffer.getvalue().splitlines()
    assert any(line.split() == ["own/", "0.5000", "(1/2)"] for line in lines)
    assert any(line.strip() == word for line in lines)


@pytest.mark.parametrize("width", [24, 40, 80])
def test_a_name_wraps_only_between_words(width):
    from pytest_rmb.report import Name

    for scenario in registry():
        for text in (scenario.id, f"{scenario.task} {scenario.name}"):
            buffer = io.StringIO()
            Console(file=buffer, width=width, color_system=None).print(Name(text))
            fragments = [line.strip() for line in buffer.getvalue().splitlines()]
            longest_word = max(len(word) for word in re.split(r"(?<=[/_.:\- ])", text))
            assert all(len(fragment) <= max(width, longest_word) for fragment in fragments)
            check_whole(text, fragments)


# --- less noise -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["length", "baseline:length"])
def test_the_length_model_gets_no_length_column(pytester, monkeypatch, spec):
    result = run(pytester, monkeypatch, 80, "--rmb-model", spec, "--rmb-data", "sample", "--rmb-show-scenarios",
                 "--rmb-markdown", "s.md", "--rmb-json", "s.json")
    lines = result.outlines
    for title in ("RMB accuracy", "Per task", "Per scenario"):
        table = block(lines, title)
        assert "Length" not in headers(table)
        assert not any("!" in line for line in body(table))
    assert legend_counts(lines, {"Length"}) == {"Length": 0}
    assert "| Length |" not in (pytester.path / "s.md").read_text()
    # The figures are still in the summary: only the column that would repeat them is left out.
    summary = json.loads((pytester.path / "s.json").read_text())
    assert summary["overall_null"] == summary["overall"]


def write_own_sets(root: Path, names: list[str]) -> None:
    """Pairwise sets own/<name>, each with uids p1..p12 whose chosen answer is longer for odd ids."""
    tables = []
    for name in names:
        rows = [{"id": f"p{i}", "prompt": f"question {i}", "chosen": "a" * (10 + i % 2 * 10), "rejected": "b" * 15}
                for i in range(1, 13)]
        (root / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        tables.append(f'[[scenario]]\nname = "{name}"\nkind = "pairwise"\npath = "{name}.jsonl"\ntask = "own"\n')
    (root / "sets.toml").write_text("\n".join(tables))


def test_a_run_on_only_own_sets_prints_no_rmb_table_and_its_scenarios_in_natural_order(pytester, monkeypatch):
    names = ["s10", "s2", "s11", "s1"]
    write_own_sets(pytester.path, names)
    result = run(pytester, monkeypatch, 80, "--rmb-model", "length", "--rmb-scenarios", "sets.toml",
                 "--rmb-show-scenarios", "--rmb-markdown", "s.md")
    lines = result.outlines
    assert not any(line.startswith("RMB accuracy") for line in lines)
    assert not any(line.startswith("Section") for line in lines)
    goals, printed = grouped_rows(block(lines, "Per scenario"))
    assert goals == ["custom"]
    assert [" ".join(fragments) for _, fragments, _ in printed] == ["own/s1", "own/s2", "own/s10", "own/s11"]
    # Odd uids 1, 3, ..., 11 have the longer chosen answer: 6 of 12 right in each set.
    assert {tuple(cells) for _, _, cells in printed} == {("0.5000 (6/12)",)}
    markdown = (pytester.path / "s.md").read_text()
    assert "| Section |" not in markdown
    order = [markdown.index(f"`own/{name}`") for name in ("s1", "s2", "s10", "s11")]
    assert order == sorted(order)


def test_failed_gates_are_named_and_the_two_kinds_of_interval_are_apart(pytester, monkeypatch):
    assert run(pytester, monkeypatch, 80, "--rmb-model", "length", "--rmb-data", "sample",
               "--rmb-json", "base.json").ret == 0
    result = run(pytester, monkeypatch, 80, "--rmb-model", "random", "--rmb-data", "sample", "--rmb-show-misses", "0",
                 "--rmb-baseline", "base.json", "--rmb-gate", "overall>=0.99", "--rmb-gate", "harmlessness.bon<0.9",
                 "--rmb-max-drop", "0.02", "--rmb-json", "s.json", "--rmb-markdown", "s.md")
    assert result.ret == 1
    summary = json.loads((pytester.path / "s.json").read_text())
    base = json.loads((pytester.path / "base.json").read_text())
    compared = summary["baseline"]["sections"]
    sections = ["overall", "helpfulness.pairwise", "helpfulness.bon", "harmlessness.pairwise", "harmlessness.bon"]
    # The random model loses to length everywhere on the sample: every baseline gate fails.
    assert all(compared[name]["delta"] < -0.02 and compared[name]["p_drop"] < 0.05 for name in sections)
    named = ["overall >= 0.99 (threshold)"]
    named += [f"{name} vs baseline ({compared[name]['delta']:+.4f} < -0.02)" for name in sections]
    lines = result.outlines
    assert f"rmb: {len(named)} gate(s) failed: {', '.join(named)}" in lines

    own = block(lines, "Gates")
    assert headers(own) == ["Metric", "Value", "Bar", "95% CI", "Result"]
    low, high = summary["overall_ci95"]
    expected = [f"overall {summary['overall']:.4f} >= 0.99 [{low:.4f}, {high:.4f}] FAIL",
                f"harmlessness.bon {summary['sections']['harmlessness.bon']['accuracy']:.4f} < 0.9 "
                f"[{summary['sections']['harmlessness.bon']['ci95'][0]:.4f}, "
                f"{summary['sections']['harmlessness.bon']['ci95'][1]:.4f}] PASS"]
    assert [" ".join(line.split()) for line in body(own)] == expected

    against = block(lines, "Baseline gates")
    assert headers(against) == ["Metric", "Now", "Baseline", "Delta", "Delta 95% CI", "Result"]
    rows = [" ".join(line.split()) for line in body(against)]
    for name, row in zip(sections, rows):
        entry = compared[name]
        own_value = base["overall"] if name == "overall" else base["sections"][name]["accuracy"]
        assert entry["baseline"] == pytest.approx(own_value)  # both runs have every sample
        low, high = entry["ci95"]
        assert row == (f"{name} {entry['current']:.4f} {entry['baseline']:.4f} {entry['delta']:+.4f} "
                       f"[{low:+.4f}, {high:+.4f}] FAIL")
    explained = legend_counts(lines, {"95% CI", "Delta 95% CI", "Delta", "Bar", "Now", "Baseline"})
    assert explained == dict.fromkeys(explained, 1)
    markdown = (pytester.path / "s.md").read_text()
    assert "| Metric | Value | Bar | 95% CI | Result | Detail |" in markdown
    assert "| Metric | Now | Baseline | Delta | Delta 95% CI | Result | Detail |" in markdown


# --- the bundled sample says what its numbers are for ------------------------------------------------


def test_a_run_on_the_bundled_sample_says_its_numbers_are_for_trying_the_tool(pytester, monkeypatch):
    result = run(pytester, monkeypatch, 80, "--rmb-model", "length", "--rmb-data", "sample", "--rmb-json", "s.json",
                 "--rmb-markdown", "s.md")
    assert json.loads((pytester.path / "s.json").read_text())["dataset"] == "sample"
    title = next(line for line in result.outlines if "RMB: length on sample" in line)
    assert title.startswith("=====") and "(for trying the tool only)" in title and len(title) <= 80
    text = " ".join(" ".join(result.outlines).split())
    assert ("the bundled sample is small and favours longer answers: its numbers are for trying the tool, "
            "not for judging a model") in text
    # Why the warning: on the sample the length baseline is right far more often than on RMB.
    right = total = 0
    for records in all_files(SAMPLE_DATA).values():
        for record in records:
            right += expected_correct(record)[0]
            total += 1
    assert right / total > 0.9
    assert "for trying the tool, not for judging a model" in (pytester.path / "s.md").read_text()


def test_a_data_folder_of_ones_own_gets_no_sample_warning(pytester, monkeypatch):
    records = [pair(str(i), f"q{i}", "long answer " * (1 + i % 2), "short") for i in range(6)]
    write_dataset(pytester.path / "data", {"Pairwise_set/Helpfulness/Code/Data Management.json": records})
    result = run(pytester, monkeypatch, 80, "--rmb-model", "length", "--rmb-data", "data", "-m", "code")
    assert "for trying the tool" not in result.stdout.str()
    assert "bundled sample" not in result.stdout.str()


def test_the_quick_start_screen_is_what_the_run_prints_at_80_columns(pytester, monkeypatch):
    page = (Path(__file__).resolve().parents[1] / "docs" / "tutorials" / "quick-start.md").read_text()
    screen = re.search(r"```\n(=+ RMB: length on sample.*?)\n```", page, re.S).group(1).splitlines()
    result = run(pytester, monkeypatch, 80, "--rmb-model", "length", "--rmb-data", "sample")
    # Blank lines aside: whether pytest's writer adds one under the title depends on where its last
    # module line was left, which differs between a terminal and an in-process run after others.
    printed = [line.rstrip() for line in result.outlines if line.strip()]
    screen = [line for line in screen if line.strip()]
    start = printed.index(screen[0])
    # Up to the engine line, whose seconds differ from run to run.
    engine = next(i for i, line in enumerate(screen) if line.startswith("engine: "))
    assert printed[start:start + engine] == screen[:engine]


def test_the_judge_table_keeps_section_names_and_numbers_on_one_line_at_80_columns():
    from pytest_rmb.report import judge_table

    def entry(accuracy, flips, a_share, no_verdict, failures):
        return {"accuracy": accuracy, "tie_adjusted": accuracy + flips / 2, "flip_rate": flips, "a_share": a_share,
                "no_verdict": no_verdict, "api_failures": failures}

    sections = {"helpfulness.pairwise": entry(0.8017, 0.1234, 0.5321, 12, 3),
                "helpfulness.bon": entry(0.6505, 0.2, 0.61, 1234, 10067),
                "harmlessness.pairwise": entry(0.8058, 0.0567, 0.4999, 0, 0),
                "harmlessness.bon": entry(0.6625, 0.3, 0.7, 7, 1)}
    judge = {"overall": entry(0.75, 0.15, 0.55, 1253, 10071), "sections": sections, "scenarios": {}}
    buffer = io.StringIO()
    table = judge_table(judge)
    fit_width(Console(file=buffer, width=80, color_system=None), table).print(table)
    lines = buffer.getvalue().splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[3:]]
    expected = [[name, f"{e['accuracy']:.4f}", f"{e['tie_adjusted']:.4f}", f"{100 * e['flip_rate']:.1f}%",
                 f"{100 * e['a_share']:.1f}%", str(e["no_verdict"]), str(e["api_failures"])]
                for name, e in [*sections.items(), ("all samples", judge["overall"])]]
    assert rows == expected
