"""Rendering only: rich tables on the terminal, JSON and JSONL files. No computation here."""

from __future__ import annotations

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
