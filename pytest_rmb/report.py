"""Rendering of a run: rich tables on the terminal, JSON, JSONL and Markdown files. No computation here.

Tables fit the terminal by wrapping names; a number is never wrapped or cut: a table whose numbers
cannot fit is drawn wider than the terminal instead (``fit_width``). The compare command's rendering
lives beside it in compare.py.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonlines
from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from pytest_rmb.metrics import KINDS, SECTIONS, section_key
from pytest_rmb.self_check import describe as describe_self_check
from pytest_rmb.summary import RunSummary, partial_account

KIND_TITLES = {"pairwise": "Pairwise", "bon": "BoN"}
# Pointing at a partial copy of RMB should not print a line for each of 98 files.
MISSING_SHOWN = 10


def fmt_accuracy(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def fmt_interval(interval: list[float] | None) -> str:
    return "-" if interval is None else f"[{interval[0]:.4f}, {interval[1]:.4f}]"


def fmt_tally(tally: Mapping[str, Any]) -> str:
    if not tally["total"]:
        return "-"
    return f"{tally['accuracy']:.4f} ({tally['correct']}/{tally['total']})"


NULL_HEADER = "Length"
NULL_MARK = "!"
NULL_CAPTION = (f"{NULL_HEADER}: the length baseline (longer answer wins) on the same samples; "
                f"{NULL_MARK} where the model does not beat it")


def fmt_null(null: float | None, beats: bool | None) -> str:
    """The length baseline's accuracy, marked where the model does not beat it."""
    if null is None:
        return "-"
    return f"{null:.4f}{NULL_MARK}" if beats is False else f"{null:.4f} "


def has_null(entries: Iterable[Mapping[str, Any]]) -> bool:
    return any(entry.get("null_accuracy") is not None for entry in entries)


NAME_MIN_WIDTH = 8


def fit_width(console: Console, table: Table) -> Console:
    """The console to print ``table`` on: this one, or a wider twin when the table cannot fit.

    In our tables a no-wrap column (numbers, intervals) keeps its widest cell on one line; a
    right-justified column that may wrap holds several numbers and breaks only at the spaces between
    them (``0.8017 (8071/10067)``); the other columns are names, which fold as narrow as they must. When
    even that does not fit, the table is drawn wider than the terminal rather than with numbers cut.
    """
    names = []
    for column in table.columns:
        if column.no_wrap or column.justify == "right":
            cells = [Text.from_markup(c).plain for c in (column.header, *column.cells) if isinstance(c, str)]
            pieces = cells if column.no_wrap else [word for cell in cells for word in cell.split()]
            column.min_width = max([column.min_width or 0, *(cell_len(piece) for piece in pieces)])
        elif column.max_width is None:
            names.append(column)
    # Measure with the names folded to a few characters: as narrow as the table can be drawn.
    for column in names:
        column.max_width = NAME_MIN_WIDTH
    needed = Measurement.get(console, console.options.update_width(1 << 16), table).minimum
    for column in names:
        column.max_width = None
    if needed <= console.width:
        return console
    return Console(file=console.file, width=needed, force_terminal=console.is_terminal,
                   color_system=console.color_system, highlight=False)  # type: ignore[arg-type]


def run_title(summary: RunSummary) -> str:
    title = f"RMB: {summary['model']} on {summary['dataset']}"
    if summary.get("limit"):
        title += f", limited to {summary['limit']} samples per scenario and kind (seed {summary['seed']})"
    if summary.get("complete") is False:
        title += f", {incomplete_phrase(summary)}"
    if summary.get("partial"):
        title += f", {partial_phrase(summary)}"
    return title


def incomplete_phrase(summary: RunSummary) -> str:
    """What a run on a partial copy of the data says wherever its numbers are shown."""
    files = len({entry["file"] for entry in summary["missing"]})
    return f"INCOMPLETE DATA ({files} data file{'s' if files != 1 else ''} missing)"


def partial_phrase(summary: RunSummary) -> str:
    items = summary.get("items")
    ran = f": {items['ran']} of {items['selected']} items ran" if items else ""
    return f"PARTIAL RUN{ran}"




def missing_line(entry: Mapping[str, Any]) -> str:
    """One line for a scenario and kind without data: absent, empty, or something else there."""
    where = f"{entry['scenario']} {entry['kind']}: {entry['file']}"
    problem = entry.get("problem", "")
    if problem == "empty":
        return f"empty data: {where} (the file holds no records)"
    return f"missing data: {where}" + (f" ({problem})" if problem else "")


def headline_table(summary: RunSummary, *, null_baseline: bool = True) -> Table:
    entries = [summary["sections"][section_key(goal, kind)] for goal, kind in SECTIONS]
    show_null = null_baseline and has_null(entries)
    # No edges: with the Length column the table then still fits 80 columns on the full data.
    title = "RMB accuracy"
    # The headline's overall must not read like a figure of the whole benchmark when it is not one.
    qualifiers = [phrase for phrase, applies in ((incomplete_phrase, summary.get("complete") is False),
                                                  (partial_phrase, summary.get("partial"))) if applies]
    if qualifiers:
        title += " - " + ", ".join(phrase(summary) for phrase in qualifiers)
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                  caption=NULL_CAPTION if show_null else None, caption_justify="left")
    # Section names may wrap on a narrow terminal; numbers never do.
    table.add_column("Section", overflow="fold")
    table.add_column("Accuracy", justify="right", no_wrap=True)
    if show_null:
        table.add_column(NULL_HEADER, justify="right", no_wrap=True)
    for column in ("95% CI", "Correct", "Macro"):
        table.add_column(column, justify="right", no_wrap=True)
    for (goal, kind), entry in zip(SECTIONS, entries):
        null = [fmt_null(entry.get("null_accuracy"), entry.get("beats_null"))] if show_null else []
        table.add_row(
            f"{goal.capitalize()} {KIND_TITLES[kind]}",
            fmt_accuracy(entry["accuracy"]),
            *null,
            fmt_interval(entry["ci95"]),
            f"{entry['correct']}/{entry['total']}",
            fmt_accuracy(entry["macro"]),
        )
    sections = summary["overall_sections"]
    label = "Overall" if sections == len(SECTIONS) else f"Overall ({sections}/{len(SECTIONS)} sections)"
    null = [fmt_null(summary.get("overall_null"), summary.get("overall_beats_null"))] if show_null else []
    table.add_row(
        label, fmt_accuracy(summary["overall"]), *null, fmt_interval(summary["overall_ci95"]), "", "",
        style="bold",
    )
    return table


def grouped_table(title: str, first_column: str, rows: Mapping[str, Mapping[str, Any]], name_key: str, *,
                  null_baseline: bool = True) -> Table:
    null_kinds = {kind for kind in KINDS if null_baseline and has_null(row[kind] for row in rows.values())}
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD,
                  caption=NULL_CAPTION if null_kinds else None, caption_justify="left")
    table.add_column(first_column, overflow="fold")
    table.add_column("Goal", overflow="fold")
    for kind in KINDS:
        # "0.8017 (8071/10067)" may break between the accuracy and the count, never inside either.
        table.add_column(KIND_TITLES[kind], justify="right")
        if kind in null_kinds:
            table.add_column(NULL_HEADER, justify="right", no_wrap=True)
    for row_id, row in rows.items():
        label = row[name_key] if name_key else row_id
        cells = [label, row["goal"]]
        for kind in KINDS:
            cells.append(fmt_tally(row[kind]))
            if kind in null_kinds:
                cells.append(fmt_null(row[kind].get("null_accuracy"), row[kind].get("beats_null")))
        table.add_row(*cells)
    return table


def fmt_share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def judge_table(judge: Mapping[str, Any], *, show_scenarios: bool = False) -> Table:
    """A pairwise model's protocol figures per section (and per scenario with ``show_scenarios``):
    what the plain accuracy does not show."""
    table = Table(title="Judge", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("Section", overflow="fold")
    # Empty: comparisons with only empty replies (misses a rerun asks again), shown when there are
    # any, so the usual table keeps its width at 80 columns; summaries written before they were
    # counted apart lack the key.
    empty = bool(judge["overall"].get("empty_replies"))
    for column in ("Accuracy", "Tie-adj.", "Flips", "A share", "No verdict", *(("Empty",) if empty else ()),
                   "API fail"):
        table.add_column(column, justify="right", no_wrap=True)

    def add(label: str, entry: dict, style: str | None = None) -> None:
        cells = [fmt_accuracy(entry["accuracy"]), fmt_accuracy(entry["tie_adjusted"]), fmt_share(entry["flip_rate"]),
                 fmt_share(entry["a_share"]), str(entry["no_verdict"])]
        if empty:
            cells.append(str(entry.get("empty_replies", 0)))
        table.add_row(label, *cells, str(entry["api_failures"]), style=style)

    for name in sorted(judge["sections"]):
        add(name, judge["sections"][name])
    # Micro over every sample of the run (the headline's Overall is the mean of the sections).
    add("all samples", judge["overall"], "bold")
    if show_scenarios:
        table.add_section()
        for scenario, kinds in judge["scenarios"].items():
            for kind, entry in kinds.items():
                add(f"{scenario} {kind}", entry)
    return table


def inexact_line(judge: Mapping[str, Any]) -> str:
    """Best-of-N lists stopped early after a flip: their tie-adjusted value is an upper bound."""
    count = judge["overall"].get("tie_adjusted_inexact", 0)
    if not count:
        return ""
    return (f"tie-adjusted: {count} Best-of-N list(s) stopped early after a flip count their skipped "
            "comparisons as won (an upper bound for those lists)")


def token_line(engine: dict) -> str:
    """Tokens the run's requests used, and those its cached verdicts had cost, apart."""
    if not any(engine.get(key) for key in ("prompt_tokens", "completion_tokens", "cached_prompt_tokens")):
        return ""
    return (f"tokens: {engine.get('prompt_tokens', 0):.0f} prompt + {engine.get('completion_tokens', 0):.0f} "
            f"completion in {engine.get('requests', 0):.0f} requests now; from the cache "
            f"{engine.get('cached_prompt_tokens', 0):.0f} + {engine.get('cached_completion_tokens', 0):.0f}")


def engine_line(engine: dict) -> str:
    """The terminal's account of the work: what the results rest on, scored now and from the cache apart."""
    seconds = f"{engine.get('scoring_seconds', 0):.2f} s"
    batches = f"{engine.get('batches', 0)} batches"
    cached = engine.get("cache_hits", 0)
    # Stats written before the engine counted loads do not say: take the model as loaded.
    loaded = engine.get("model_loads", 1) != 0
    not_loaded = "," if loaded else "; model not loaded;"
    if engine.get("comparison_slots"):
        made = engine.get("comparisons_made", 0)
        line = (f"engine: {made} comparisons judged now{not_loaded} {cached} from the cache, for "
                f"{engine['comparison_slots']} comparison slots in {batches}, {seconds}")
        if engine.get("comparisons_skipped"):
            line += f", {engine['comparisons_skipped']} skipped after a lost comparison"
    else:
        scored = engine.get("texts_scored", 0)
        texts = "unique texts" if loaded else "texts"
        line = (f"engine: {scored} {texts} scored now{not_loaded} {cached} from the score cache, for "
                f"{engine.get('response_slots', 0)} response slots in {batches}, {seconds}")
        if engine.get("truncated"):
            line += f"; {engine['truncated']} of {scored + cached} truncated"
    if engine.get("oom_retries"):
        line += f", {engine['oom_retries']} out-of-memory retries"
    if engine.get("empty_replies"):
        line += f"; {engine['empty_replies']} comparisons got only empty replies (a rerun asks them again)"
    if engine.get("cache_write_failures"):
        line += f"; {engine['cache_write_failures']} results not saved in the cache (a rerun asks them again)"
    return line


GATE_STYLES = {"PASS": "green", "FAIL": "bold red", "NOT EVALUATED": "yellow"}


def gates_table(gates: Sequence[Mapping[str, Any]]) -> Table:
    """Metric, value, bar or baseline, interval, result. For a baseline gate the interval is that
    of the paired difference; the details go on lines of their own below."""
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("Metric", overflow="fold")
    table.add_column("Value", no_wrap=True, justify="right")
    table.add_column("Bar / baseline", overflow="fold")
    table.add_column("95% CI", no_wrap=True)
    table.add_column("Result", no_wrap=True)
    for gate in gates:
        table.add_row(
            gate["metric"], fmt_accuracy(gate["value"]), gate["reference"], fmt_interval(gate["interval"]),
            f"[{GATE_STYLES[gate['status']]}]{gate['status']}[/]",
        )
    return table


class TableRenderer:
    """Draws the summary through the terminal reporter's public methods only."""

    def __init__(self, terminalreporter, width: int):
        self._tr = terminalreporter
        self._width = width

    def _print(self, *renderables) -> None:
        buffer = io.StringIO()
        console = Console(
            file=buffer,
            width=self._width,
            force_terminal=self._tr.hasmarkup,
            color_system="standard" if self._tr.hasmarkup else None,
            highlight=False,
        )
        for renderable in renderables:
            if isinstance(renderable, Table):
                fit_width(console, renderable).print(renderable)
            else:
                console.print(renderable)
        for line in buffer.getvalue().rstrip("\n").split("\n"):
            self._tr.write_line(line)

    def render(self, summary: RunSummary, *, show_scenarios: bool, misses: list, misses_shown: int,
               null_baseline: bool = True) -> None:
        self._tr.section(run_title(summary), sep="=")
        if summary.get("partial"):
            self._tr.write_line("PARTIAL RESULTS: the run was interrupted before every item ran.", red=True)
            self._tr.write_line(f"rmb: {partial_account(summary)}; its gates are not evaluated", red=True)
        tables = [headline_table(summary, null_baseline=null_baseline)]
        tables.append(grouped_table("Per task", "Task", summary["tasks"], "name", null_baseline=null_baseline))
        if show_scenarios:
            tables.append(grouped_table("Per scenario", "Scenario", summary["scenarios"], "",
                                        null_baseline=null_baseline))
        self._print(*tables)
        if not show_scenarios and summary["scenarios"]:
            self._tr.write_line("(per-scenario table: -v or --rmb-show-scenarios)")
        self._tr.write_line(engine_line(summary["engine"]))
        if summary.get("judge"):
            self._print(judge_table(summary["judge"], show_scenarios=show_scenarios))
            for line in (inexact_line(summary["judge"]), token_line(summary["engine"])):
                if line:
                    self._tr.write_line(line)
        # Something other than an absent file (an empty file, a directory) is always named.
        for entry in summary["missing"]:
            if entry.get("problem"):
                self._tr.write_line(missing_line(entry), yellow=True)
        missing = [entry for entry in summary["missing"] if not entry.get("problem")]
        for entry in missing[:MISSING_SHOWN]:
            self._tr.write_line(missing_line(entry), yellow=True)
        if len(missing) > MISSING_SHOWN:
            self._tr.write_line(
                f"missing data: ... and {len(missing) - MISSING_SHOWN} more (listed in --rmb-json under 'missing')",
                yellow=True,
            )
        for error in summary["errors"]:
            first = error["message"].splitlines()[0] if error["message"] else ""
            self._tr.write_line(
                f"error: {error['scenario']} {error['kind']} ({error['items']} items): {first}", red=True
            )
        self._render_misses(misses, misses_shown)

    def render_self_check(self, entry: Mapping[str, Any] | None) -> None:
        """The self-check's verdict: one line when it passed, the worst text and a hint when not."""
        if entry is None:
            return
        if entry["ok"]:
            self._tr.write_line(f"rmb: self-check passed: {describe_self_check(entry)}")
            return
        self._tr.write_line(f"rmb: SELF-CHECK FAILED: {describe_self_check(entry)}", red=True, bold=True)
        worst = entry.get("worst") or {}
        if "batched" in worst:
            self._tr.write_line(
                f"rmb: the worst text scored {worst['batched']:.6g} in its batch and {worst['alone']:.6g} alone "
                f"(response starts {worst['response_start']!r})", red=True)
        self._tr.write_line(
            "rmb: scores that depend on the batch make every comparison and gate on them unreliable; "
            "check padding, the pad token and the attention mask (--rmb-show-input UID shows what the model reads)",
            red=True)

    def render_gates(self, summary: RunSummary) -> None:
        self._tr.section("RMB gates", sep="=")
        self._print(gates_table(summary["gates"]))
        partial = summary.get("partial")
        for gate in summary["gates"]:
            # A partial run's rows all say the same: it is said once, below.
            if gate["detail"] and not partial:
                self._tr.write_line(f"  {gate['metric']}: {gate['detail']}")
        baseline = summary.get("baseline")
        for note in baseline["notes"] if baseline else []:
            self._tr.write_line(f"baseline: {note}", yellow=True)
        failed = [g["metric"] for g in summary["gates"] if g["status"] == "FAIL"]
        if partial:
            self._tr.write_line(f"rmb: {len(summary['gates'])} gate(s) NOT EVALUATED: {partial_account(summary)}",
                                red=True, bold=True)
        elif failed:
            self._tr.write_line(f"rmb: {len(failed)} gate(s) failed: {', '.join(failed)}", red=True, bold=True)
        else:
            self._tr.write_line("rmb: all gates passed", green=True, bold=True)

    def _render_misses(self, misses: list, shown: int) -> None:
        if not misses or shown <= 0:
            return
        self._tr.section(f"RMB misses ({len(misses)})", sep="-")
        for nodeid, line in sorted(misses)[:shown]:
            self._tr.write_line(f"{nodeid}: {line}")
        if len(misses) > shown:
            self._tr.write_line(
                f"... and {len(misses) - shown} more (every sample is in --rmb-jsonl; "
                f"show more with --rmb-show-misses N)"
            )


def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with jsonlines.open(path, mode="w") as writer:
        writer.write_all(records)


def markdown_document(summary: RunSummary, *, null_baseline: bool = True) -> str:
    """The tables and gates as GitHub-flavoured Markdown, for $GITHUB_STEP_SUMMARY or a PR comment."""
    lines = [f"## RMB: `{summary['model']}` on `{summary['dataset']}`", ""]
    if summary.get("limit"):
        lines += [f"Limited to {summary['limit']} samples per scenario and kind (seed {summary['seed']}).", ""]
    if summary.get("partial"):
        lines += [f"**Partial results: {partial_account(summary)}; its gates are not evaluated.**", ""]
    if summary.get("complete") is False:
        files = sorted({entry["file"] for entry in summary["missing"]})
        shown = ", ".join(f"`{name}`" for name in files[:MISSING_SHOWN])
        more = f" and {len(files) - MISSING_SHOWN} more" if len(files) > MISSING_SHOWN else ""
        lines += [f"**Incomplete data: {len(files)} data file(s) of the selected scenarios missing or empty**: "
                  f"{shown}{more}. The numbers are not the full benchmark's.", ""]
    entries = [summary["sections"][section_key(goal, kind)] for goal, kind in SECTIONS]
    show_null = null_baseline and has_null(entries)
    null_head = f" {NULL_HEADER} |" if show_null else ""
    lines += [f"| Section | Accuracy |{null_head} 95% CI | Correct | Macro |",
              "| --- | ---: |" + (" ---: |" if show_null else "") + " ---: | ---: | ---: |"]
    for (goal, kind), entry in zip(SECTIONS, entries):
        null = f" {fmt_null(entry.get('null_accuracy'), entry.get('beats_null')).strip()} |" if show_null else ""
        lines.append(
            f"| {goal.capitalize()} {KIND_TITLES[kind]} | {fmt_accuracy(entry['accuracy'])} |{null} "
            f"{fmt_interval(entry['ci95'])} | {entry['correct']}/{entry['total']} | {fmt_accuracy(entry['macro'])} |"
        )
    null = (f" {fmt_null(summary.get('overall_null'), summary.get('overall_beats_null')).strip()} |"
            if show_null else "")
    lines.append(f"| **Overall** | **{fmt_accuracy(summary['overall'])}** |{null} "
                 f"{fmt_interval(summary['overall_ci95'])} | | |")
    if show_null:
        lines += ["", NULL_CAPTION + "."]
    if summary["gates"]:
        lines += ["", "### Gates", "", "| Metric | Value | Bar / baseline | 95% CI | Result | Detail |",
                  "| --- | ---: | --- | --- | --- | --- |"]
        icons = {"PASS": ":white_check_mark: PASS", "FAIL": ":x: FAIL", "NOT EVALUATED": ":warning: NOT EVALUATED"}
        for gate in summary["gates"]:
            lines.append(
                f"| `{gate['metric']}` | {fmt_accuracy(gate['value'])} | {gate['reference']} | "
                f"{fmt_interval(gate['interval'])} | {icons[gate['status']]} | {gate['detail']} |"
            )
    tables: tuple[tuple[str, Mapping[str, Mapping[str, Any]], bool], ...] = (
        ("Per task", summary["tasks"], True), ("Per scenario", summary["scenarios"], False))
    for title, rows, named in tables:
        lines += ["", f"<details><summary>{title}</summary>", "",
                  f"| {title[4:].capitalize()} | Goal | Pairwise | BoN |", "| --- | --- | ---: | ---: |"]
        for row_id, row in rows.items():
            label = row["name"] if named else f"`{row_id}`"
            lines.append(f"| {label} | {row['goal']} | {fmt_tally(row['pairwise'])} | {fmt_tally(row['bon'])} |")
        lines += ["", "</details>"]
    missing, errors = summary["missing"], summary["errors"]
    if missing or errors:
        lines += ["", f"Missing data files: {len(missing)}. Data or scoring errors: {len(errors)}."]
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, summary: RunSummary, *, null_baseline: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown_document(summary, null_baseline=null_baseline), encoding="utf-8")
