"""Rendering only: rich tables on the terminal, JSON and JSONL files. No computation here."""

from __future__ import annotations

import html
import io
import json
from collections.abc import Iterable
from pathlib import Path

import jsonlines
from rich import box
from rich.console import Console
from rich.table import Table

from pytest_rmb.metrics import KINDS, SECTIONS, section_key

KIND_TITLES = {"pairwise": "Pairwise", "bon": "BoN"}
# Pointing at a partial copy of RMB should not print a line for each of 98 files.
MISSING_SHOWN = 10


def fmt_accuracy(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def fmt_interval(interval: list[float] | None) -> str:
    return "-" if interval is None else f"[{interval[0]:.4f}, {interval[1]:.4f}]"


def fmt_tally(tally: dict) -> str:
    if not tally["total"]:
        return "-"
    return f"{tally['accuracy']:.4f} ({tally['correct']}/{tally['total']})"


def headline_table(summary: dict) -> Table:
    table = Table(title="RMB accuracy", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("Section", "Accuracy", "95% CI", "Correct", "Macro"):
        table.add_column(column, justify="left" if column == "Section" else "right", no_wrap=True)
    for goal, kind in SECTIONS:
        entry = summary["sections"][section_key(goal, kind)]
        table.add_row(
            f"{goal.capitalize()} {KIND_TITLES[kind]}",
            fmt_accuracy(entry["accuracy"]),
            fmt_interval(entry["ci95"]),
            f"{entry['correct']}/{entry['total']}",
            fmt_accuracy(entry["macro"]),
        )
    sections = summary["overall_sections"]
    label = "Overall" if sections == len(SECTIONS) else f"Overall ({sections}/{len(SECTIONS)} sections)"
    table.add_row(
        label, fmt_accuracy(summary["overall"]), fmt_interval(summary["overall_ci95"]), "", "",
        style="bold",
    )
    return table


def grouped_table(title: str, first_column: str, rows: dict, name_key: str) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column(first_column, overflow="fold")
    table.add_column("Goal", no_wrap=True)
    for kind in KINDS:
        table.add_column(KIND_TITLES[kind], justify="right", no_wrap=True)
    for row_id, row in rows.items():
        label = row[name_key] if name_key else row_id
        table.add_row(label, row["goal"], *(fmt_tally(row[kind]) for kind in KINDS))
    return table


GATE_STYLES = {"PASS": "green", "FAIL": "bold red", "NOT EVALUATED": "yellow"}


def gates_table(gates: list[dict]) -> Table:
    """Metric, value, bar or baseline, interval, result. For a baseline gate the interval is that
    of the paired difference; the details go on lines of their own below."""
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("Metric", no_wrap=True)
    table.add_column("Value", no_wrap=True, justify="right")
    table.add_column("Bar / baseline")  # the one column that may wrap on a narrow terminal
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
            console.print(renderable)
        for line in buffer.getvalue().rstrip("\n").split("\n"):
            self._tr.write_line(line)

    def render(self, summary: dict, *, show_scenarios: bool, misses: list, misses_shown: int) -> None:
        self._tr.section(f"RMB: {summary['model']} on {summary['dataset']}", sep="=")
        if summary.get("partial"):
            self._tr.write_line("PARTIAL RESULTS: the run was interrupted before every item ran.", red=True)
        tables = [headline_table(summary)]
        tables.append(grouped_table("Per task", "Task", summary["tasks"], "name"))
        if show_scenarios:
            tables.append(grouped_table("Per scenario", "Scenario", summary["scenarios"], ""))
        self._print(*tables)
        if not show_scenarios and summary["scenarios"]:
            self._tr.write_line("(per-scenario table: -v or --rmb-show-scenarios)")
        engine = summary["engine"]
        self._tr.write_line(
            f"engine: {engine['texts_scored']} unique texts scored for {engine['response_slots']} "
            f"response slots in {engine['batches']} batches, {engine['scoring_seconds']:.2f} s"
            + (f", {engine['cache_hits']} from the score cache" if engine.get("cache_hits") else "")
            + (f", {engine['truncated']} truncated" if engine.get("truncated") else "")
            + (f", {engine['oom_retries']} out-of-memory retries" if engine.get("oom_retries") else "")
        )
        missing = summary["missing"]
        for entry in missing[:MISSING_SHOWN]:
            self._tr.write_line(
                f"missing data: {entry['scenario']} {entry['kind']}: {entry['file']}", yellow=True
            )
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

    def render_gates(self, summary: dict) -> None:
        self._tr.section("RMB gates", sep="=")
        self._print(gates_table(summary["gates"]))
        for gate in summary["gates"]:
            if gate["detail"]:
                self._tr.write_line(f"  {gate['metric']}: {gate['detail']}")
        for note in (summary.get("baseline") or {}).get("notes", []):
            self._tr.write_line(f"baseline: {note}", yellow=True)
        failed = [g["metric"] for g in summary["gates"] if g["status"] == "FAIL"]
        if failed:
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


def write_json(path: Path, summary: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with jsonlines.open(path, mode="w") as writer:
        writer.write_all(records)


def markdown_document(summary: dict) -> str:
    """The tables and gates as GitHub-flavoured Markdown, for $GITHUB_STEP_SUMMARY or a PR comment."""
    lines = [f"## RMB: `{summary['model']}` on `{summary['dataset']}`", ""]
    if summary.get("partial"):
        lines += ["**Partial results: the run was interrupted.**", ""]
    lines += ["| Section | Accuracy | 95% CI | Correct | Macro |", "| --- | ---: | ---: | ---: | ---: |"]
    for goal, kind in SECTIONS:
        entry = summary["sections"][section_key(goal, kind)]
        lines.append(
            f"| {goal.capitalize()} {KIND_TITLES[kind]} | {fmt_accuracy(entry['accuracy'])} | "
            f"{fmt_interval(entry['ci95'])} | {entry['correct']}/{entry['total']} | {fmt_accuracy(entry['macro'])} |"
        )
    lines.append(f"| **Overall** | **{fmt_accuracy(summary['overall'])}** | {fmt_interval(summary['overall_ci95'])} | | |")
    if summary["gates"]:
        lines += ["", "### Gates", "", "| Metric | Value | Bar / baseline | 95% CI | Result | Detail |",
                  "| --- | ---: | --- | --- | --- | --- |"]
        icons = {"PASS": ":white_check_mark: PASS", "FAIL": ":x: FAIL", "NOT EVALUATED": ":warning: NOT EVALUATED"}
        for gate in summary["gates"]:
            lines.append(
                f"| `{gate['metric']}` | {fmt_accuracy(gate['value'])} | {gate['reference']} | "
                f"{fmt_interval(gate['interval'])} | {icons[gate['status']]} | {gate['detail']} |"
            )
    for title, rows, key in (("Per task", summary["tasks"], "name"), ("Per scenario", summary["scenarios"], None)):
        lines += ["", f"<details><summary>{title}</summary>", "", f"| {title[4:].capitalize()} | Goal | Pairwise | BoN |",
                  "| --- | --- | ---: | ---: |"]
        for row_id, row in rows.items():
            label = row[key] if key else f"`{row_id}`"
            lines.append(f"| {label} | {row['goal']} | {fmt_tally(row['pairwise'])} | {fmt_tally(row['bon'])} |")
        lines += ["", "</details>"]
    missing, errors = summary["missing"], summary["errors"]
    if missing or errors:
        lines += ["", f"Missing data files: {len(missing)}. Data or scoring errors: {len(errors)}."]
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, summary: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown_document(summary), encoding="utf-8")


SIGNIFICANCE = 0.05
RUN_COLOURS = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6", "#9d755d")


def fmt_delta(delta: float | None, p_drop: float | None, p_gain: float | None) -> tuple[str, str]:
    """(text, style) of a delta; a star marks a difference significant at 5% (paired bootstrap)."""
    if delta is None:
        return "", ""
    if p_drop is not None and p_drop < SIGNIFICANCE:
        return f"{delta:+.4f}*", "red"
    if p_gain is not None and p_gain < SIGNIFICANCE:
        return f"{delta:+.4f}*", "green"
    return f"{delta:+.4f}", ""


def print_comparison(names: list[str], rows: list[dict], *, show_scenarios: bool) -> None:
    table = Table(title="RMB runs compared (deltas against the first; * significant at 5%, paired bootstrap)",
                  title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("Metric", no_wrap=True)
    table.add_column(names[0], justify="right")
    for name in names[1:]:
        table.add_column(name, justify="right")
        table.add_column("delta", justify="right")
    previous_group = None
    for row in rows:
        if row["group"] == "scenario" and not show_scenarios:
            continue
        if previous_group is not None and row["group"] != previous_group:
            table.add_section()
        previous_group = row["group"]
        cells = [row["metric"], fmt_accuracy(row["values"][0])]
        for value, delta, p_drop, p_gain in zip(row["values"][1:], row["deltas"], row["p_drop"], row["p_gain"]):
            text, style = fmt_delta(delta, p_drop, p_gain)
            cells += [fmt_accuracy(value), f"[{style}]{text}[/]" if style else text]
        table.add_row(*cells)
    Console(highlight=False).print(table)


def _bar_chart(title: str, names: list[str], rows: list[dict]) -> str:
    """A horizontal bar chart as inline SVG: one group of bars per scenario, one bar per run."""
    bar, gap, label_width, plot_width = 7, 6, 330, 520
    group = bar * len(names) + gap
    height = 30 + group * len(rows) + 20
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_width + plot_width + 70}" height="{height}" '
             f'role="img" aria-label="{html.escape(title)}">',
             f'<text x="0" y="16" font-weight="bold">{html.escape(title)}</text>']
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        x = label_width + tick * plot_width
        parts.append(f'<line x1="{x}" y1="24" x2="{x}" y2="{height - 18}" stroke="#ddd"/>'
                     f'<text x="{x}" y="{height - 4}" font-size="10" text-anchor="middle">{tick:g}</text>')
    for i, row in enumerate(rows):
        top = 30 + i * group
        label = row["metric"].removeprefix("scenario:").rsplit(".", 1)[0]
        parts.append(f'<text x="{label_width - 6}" y="{top + bar * len(names) / 2 + 4}" font-size="11" '
                     f'text-anchor="end">{html.escape(label)}</text>')
        for j, value in enumerate(row["values"]):
            if value is None:
                continue
            width = value * plot_width
            parts.append(f'<rect x="{label_width}" y="{top + j * bar}" width="{width:.1f}" height="{bar - 1}" '
                         f'fill="{RUN_COLOURS[j % len(RUN_COLOURS)]}"><title>{html.escape(names[j])}: '
                         f'{value:.4f}</title></rect>')
    parts.append("</svg>")
    return "".join(parts)


def comparison_html(names: list[str], rows: list[dict]) -> str:
    """One self-contained page: the comparison table and per-scenario charts, no external assets."""
    head = "".join(f"<th>{html.escape(n)}</th>" + ("<th>delta</th>" if i else "") for i, n in enumerate(names))
    body = []
    for row in rows:
        if row["group"] == "scenario":
            continue
        cells = [f"<td><code>{html.escape(row['metric'])}</code></td>", f"<td>{fmt_accuracy(row['values'][0])}</td>"]
        for value, delta, p_drop, p_gain in zip(row["values"][1:], row["deltas"], row["p_drop"], row["p_gain"]):
            text, style = fmt_delta(delta, p_drop, p_gain)
            cells.append(f"<td>{fmt_accuracy(value)}</td><td class='{style}'>{text}</td>")
        body.append(f"<tr class='{row['group']}'>{''.join(cells)}</tr>")
    legend = " ".join(
        f'<span class="key" style="background:{RUN_COLOURS[i % len(RUN_COLOURS)]}"></span>{html.escape(n)}'
        for i, n in enumerate(names)
    )
    charts = [
        _bar_chart(f"Per scenario, {KIND_TITLES[kind]}", names,
                   [r for r in rows if r["group"] == "scenario" and r["metric"].endswith(f".{kind}")])
        for kind in KINDS
    ]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>RMB comparison</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
td, th {{ padding: 3px 10px; border-bottom: 1px solid #eee; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
tr.overall td {{ font-weight: bold; }}
.red {{ color: #c0392b; font-weight: bold; }} .green {{ color: #1e8449; font-weight: bold; }}
.key {{ display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 12px; vertical-align: middle; }}
</style></head><body>
<h1>RMB runs compared</h1>
<p>Deltas are against the first run; <b>*</b> marks a difference significant at 5% by a paired bootstrap
over the samples both runs share.</p>
<table><tr><th>Metric</th>{head}</tr>
{"".join(body)}
</table>
<p>{legend}</p>
{"".join(charts)}
</body></html>
"""
