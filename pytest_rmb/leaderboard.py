"""``pytest-rmb leaderboard RUN.json ...``: many runs ranked side by side, from their summaries alone.

The runs are ranked by overall accuracy, with the 95% intervals their summaries carry. Each run is
tested against the one ranked just below it: paired (the sign test compare uses) where both carry
per-sample outcomes on the same samples, else unpaired from the two intervals; the p-values of the
neighbour pairs are corrected together (Holm's by default). The scenario-by-model table follows, per
kind (pairwise, Best-of-N), scenarios grouped by goal and task as in the RMB paper's figures.

Runs read on different data are refused: a data file that two runs both read with different
contents means their numbers do not measure the same thing (``--allow-different-data`` ranks them
anyway, with the difference printed first). Everything else that differs between the runs'
provenance (versions, model settings, the dataset's label) is listed under the ranking.
"""

from __future__ import annotations

import argparse
import html
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from pytest_rmb import charts
from pytest_rmb.compare import LETTERS, caveat
from pytest_rmb.data import uid_sort_key
from pytest_rmb.gate import provenance_differences
from pytest_rmb.metrics import KINDS
from pytest_rmb.options import add_arguments
from pytest_rmb.report import KIND_TITLES, Name, fit_width, fmt_accuracy, fmt_interval, new_table, sample_caveat
from pytest_rmb.stats import CORRECTIONS, adjust_p_values, row_tests, unpaired_p
from pytest_rmb.summary import RunSummary, ScenarioRef, SummaryError, read_summary, scenario_refs

PROG = "pytest-rmb leaderboard"
# What makes --html and --plot work, as the error says it.


class UsageError(Exception):
    """A bad input of a command that reads summaries: its message names the file and what is wrong."""


# --- reading and checking the runs ----------------------------------------------------------------


def load_runs(paths: Sequence[Path]) -> list[RunSummary]:
    runs = []
    for path in paths:
        try:
            runs.append(read_summary(path, need_outcomes=False))
        except SummaryError as exc:
            raise UsageError(f"{path}: {exc}") from None
    return runs


def data_conflicts(paths: Sequence[Path], runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Pairs of runs that read the same data file with different contents, one line per pair.

    Data files are compared by the sha256 digests each summary's provenance records, so runs made
    on other machines, from other folders, compare; a file only one of two runs read is a selection
    (-m, -k), not a conflict."""
    lines = []
    for i, first in enumerate(runs):
        for j in range(i + 1, len(runs)):
            a = (first.get("provenance") or {}).get("data_files") or {}
            b = (runs[j].get("provenance") or {}).get("data_files") or {}
            changed = sorted(path for path in set(a) & set(b) if a[path] != b[path])
            if changed:
                more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
                lines.append(f"{paths[i]} and {paths[j]} read different contents of the data file "
                             f"{changed[0]}{more} (sha256 differs)")
    return lines


def provenance_lines(names: Sequence[str], runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """What differs between each run's provenance and the first-ranked run's, one line each."""
    lines = []
    first = runs[0]
    for name, run in zip(names[1:], runs[1:]):
        found = provenance_differences(first.get("provenance"), run.get("provenance"), (names[0], name))
        if first.get("dataset") != run.get("dataset"):
            found.insert(0, f"dataset: {first.get('dataset')} -> {run.get('dataset')}")
        lines += [f"{name} vs {names[0]}: {line}" for line in found]
    return lines


# --- ranking --------------------------------------------------------------------------------------


@dataclass
class Gap:
    """The difference between a run and the one ranked just below it, and its test."""

    delta: float | None
    paired: bool
    p: float | None
    p_adjusted: float | None = None


@dataclass
class Board:
    paths: list[Path]  # rank order, as every other list here
    runs: list[RunSummary]
    ranks: list[int | None]
    gaps: list[Gap]  # gaps[i]: run i against run i + 1
    correction: str
    alpha: float
    provenance: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)

    @property
    def letters(self) -> list[str]:
        return list(LETTERS[: len(self.runs)])

    @property
    def names(self) -> list[str]:
        return [f"{run.get('model')} ({path.name})" for run, path in zip(self.runs, self.paths)]


def same_samples(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str] | None:
    """The samples of two runs when both carry outcomes for exactly the same samples, else None."""
    if "outcomes" not in a or "outcomes" not in b or set(a["outcomes"]) != set(b["outcomes"]) or not a["outcomes"]:
        return None
    return sorted(a["outcomes"])


def gap(upper: Mapping[str, Any], lower: Mapping[str, Any], scenarios: Mapping[str, ScenarioRef]) -> Gap:
    if upper["overall"] is None or lower["overall"] is None:
        return Gap(None, False, None)
    delta = upper["overall"] - lower["overall"]
    keys = same_samples(upper, lower)
    if keys is not None:
        return Gap(delta, True, row_tests(upper, lower, keys, scenarios).get("overall"))
    return Gap(delta, False, unpaired_p(upper["overall"], upper.get("overall_ci95"),
                                       lower["overall"], lower.get("overall_ci95")))


def rank_runs(paths: Sequence[Path], runs: Sequence[RunSummary], *, correction: str = "holm",
              alpha: float = 0.05) -> Board:
    """The runs in rank order (best overall first; a run without an overall last, unranked), each
    gap to the next run tested, the gaps' p-values corrected together."""
    order = sorted(range(len(runs)), key=lambda i: (runs[i]["overall"] is None, -(runs[i]["overall"] or 0), i))
    ranked = [runs[i] for i in order]
    ranks: list[int | None] = []
    for position, run in enumerate(ranked):
        if run["overall"] is None:
            ranks.append(None)
        elif position and run["overall"] == ranked[position - 1]["overall"]:
            ranks.append(ranks[-1])  # a tie shares its rank
        else:
            ranks.append(position + 1)
    scenarios = scenario_refs(ranked)
    gaps = [gap(ranked[i], ranked[i + 1], scenarios) for i in range(len(ranked) - 1)]
    tested = [g for g in gaps if g.p is not None]
    for g, adjusted in zip(tested, adjust_p_values([g.p for g in tested if g.p is not None], correction)):
        g.p_adjusted = adjusted
    board = Board([Path(paths[i]) for i in order], ranked, ranks, gaps, correction, alpha)
    board.provenance = provenance_lines(board.names, ranked)
    return board


def significance_phrase(board: Board) -> str:
    tested = sum(1 for g in board.gaps if g.p is not None)
    how = ("no correction" if board.correction == "none"
           else f"{CORRECTIONS[board.correction]} over {tested} neighbour pair{'s' if tested != 1 else ''}")
    return (f"* the gap to the next run is significant at alpha={board.alpha:g} ({how}); paired: two-sided "
            "sign test on the same samples, as compare; unpaired: from the two runs' 95% intervals")


def fmt_gap(g: Gap, alpha: float) -> str:
    if g.delta is None:
        return "-"
    star = "*" if g.p_adjusted is not None and g.p_adjusted < alpha else " "
    how = ("paired" if g.paired else "unpaired") if g.p is not None else "untested"
    return f"{g.delta:+.4f}{star} {how}"


def ranking_rows(board: Board) -> list[list[str]]:
    """Rank, letter, run, overall, interval, gap to the next run and its corrected p-value: the cells of
    every ranking table."""
    rows = []
    for index, run in enumerate(board.runs):
        rank = board.ranks[index]
        gap_text = p_text = ""
        if index < len(board.gaps):
            gap_text = fmt_gap(board.gaps[index], board.alpha)
            adjusted = board.gaps[index].p_adjusted
            p_text = "-" if adjusted is None else f"{adjusted:.3g}"
        rows.append(["-" if rank is None else str(rank), board.letters[index], board.names[index],
                     fmt_accuracy(run["overall"]), fmt_interval(run.get("overall_ci95")), gap_text, p_text])
    return rows


RANKING_HEADERS = ("Rank", "Run", "Model (file)", "Overall", "95% interval", "Next", "p adj.")


# --- the scenario-by-model table ------------------------------------------------------------------


def scenario_order(board: Board) -> list[ScenarioRef]:
    """Every scenario of any run, grouped by goal, then task, as the paper's figures group them."""
    refs = scenario_refs(board.runs)
    return sorted(refs.values(), key=lambda s: (s.goal, uid_sort_key(s.task_id), uid_sort_key(s.id)))


def cell(run: Mapping[str, Any], scenario_id: str, kind: str) -> float | None:
    entry = ((run.get("scenarios") or {}).get(scenario_id) or {}).get(kind) or {}
    return entry.get("accuracy") if entry.get("total") else None


def heatmap_rows(board: Board, kind: str) -> list[tuple[ScenarioRef, list[float | None]]]:
    """(scenario, accuracy per run) for the scenarios that some run has samples of this kind for."""
    rows = []
    for scenario in scenario_order(board):
        values = [cell(run, scenario.id, kind) for run in board.runs]
        if any(v is not None for v in values):
            rows.append((scenario, values))
    return rows


# --- output ---------------------------------------------------------------------------------------


def legend_lines(board: Board) -> list[str]:
    """What the reader must know beside the numbers: data conflicts, runs whose numbers do not cover
    their selection, provenance differences, and the sample's caveat."""
    lines = [f"RUNS ON DIFFERENT DATA (ranked anyway, --allow-different-data): {line}" for line in board.conflicts]
    lines += [f"note: {name}{said}" for name, run in zip(board.names, board.runs) if (said := caveat(run))]
    lines += [f"provenance {line}" for line in board.provenance]
    warning = next((said for run in board.runs if (said := sample_caveat(run))), "")
    if warning:
        lines.append(f"note: {warning}")
    return lines


def print_board(board: Board, console: Console | None = None) -> None:
    console = console or Console(highlight=False)
    table = new_table("RMB leaderboard, by overall accuracy")
    for header in RANKING_HEADERS:
        if header == "Model (file)":
            table.add_column(header)
        else:
            table.add_column(header, justify="left" if header == "Next" else "right", no_wrap=True)
    for row in ranking_rows(board):
        table.add_row(*row[:2], Name(row[2]), *row[3:])
    fit_width(console, table).print(table)
    console.print(significance_phrase(board), markup=False, overflow="fold")
    for line in legend_lines(board):
        console.print(line, markup=False, overflow="fold")
    for kind in KINDS:
        rows = heatmap_rows(board, kind)
        if not rows:
            continue
        heat = new_table(f"{KIND_TITLES[kind]} accuracy per scenario (grouped by goal and task; runs by rank)")
        heat.add_column("Scenario")
        for letter in board.letters:
            heat.add_column(letter, justify="right", no_wrap=True)
        previous = None
        for scenario, values in rows:
            if previous is not None and (scenario.goal, scenario.task_id) != previous:
                heat.add_section()
            previous = (scenario.goal, scenario.task_id)
            best = max((v for v in values if v is not None), default=None)
            heat.add_row(Name(scenario.id), *(f"[bold]{fmt_accuracy(v)}[/]" if v is not None and v == best
                                              else fmt_accuracy(v) for v in values))
        console.print()
        fit_width(console, heat).print(heat)


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|")


def board_markdown(board: Board) -> str:
    lines = ["# RMB leaderboard", "", f"Ranked by overall accuracy. {significance_phrase(board)}.", "",
             "| " + " | ".join(RANKING_HEADERS) + " |", "|" + "---|" * len(RANKING_HEADERS)]
    lines += ["| " + " | ".join(_markdown_cell(c.strip()) for c in row) + " |" for row in ranking_rows(board)]
    lines.append("")
    lines += [f"- {_markdown_cell(line)}" for line in legend_lines(board)]
    for kind in KINDS:
        rows = heatmap_rows(board, kind)
        if not rows:
            continue
        lines += ["", f"## {KIND_TITLES[kind]} accuracy per scenario", "",
                  "| Goal | Task | Scenario | " + " | ".join(board.letters) + " |",
                  "|---|---|---|" + "---|" * len(board.letters)]
        lines += [f"| {s.goal} | {_markdown_cell(s.task)} | {_markdown_cell(s.id)} | "
                  + " | ".join(fmt_accuracy(v) for v in values) + " |" for s, values in rows]
    return "\n".join(lines) + "\n"


# --- charts (matplotlib, optional) ----------------------------------------------------------------


def new_figure(option: str, **kwargs: Any) -> Any:
    """A matplotlib figure; a usage error naming the pip command without matplotlib."""
    try:
        return charts.new_figure(option, **kwargs)
    except charts.ChartsUnavailable as exc:
        raise UsageError(str(exc)) from None


def heatmap_svg(board: Board, kind: str) -> str:
    """One kind's scenario-by-run heatmap: one rectangle per cell (its SVG id names scenario and run),
    coloured by accuracy, the value written in it; an empty cell is grey."""
    rows = heatmap_rows(board, kind)
    figure = new_figure("--html", figsize=(3.2 + 0.7 * len(board.runs), 1.2 + 0.24 * len(rows)))
    axes = figure.add_subplot()
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    colours = colormaps["RdYlGn"]
    for y, (scenario, values) in enumerate(rows):
        for x, value in enumerate(values):
            face = "#dddddd" if value is None else colours(value)
            axes.add_patch(Rectangle((x, y), 1, 1, facecolor=face, edgecolor="white",
                                     gid=f"cell-{kind}-{board.letters[x]}-{scenario.id}"))
            axes.text(x + 0.5, y + 0.5, "-" if value is None else f"{value:.2f}", ha="center", va="center",
                      fontsize=7)
    axes.set_xlim(0, len(board.runs))
    axes.set_ylim(len(rows), 0)
    axes.set_xticks([x + 0.5 for x in range(len(board.runs))], board.letters)
    axes.xaxis.tick_top()
    axes.set_yticks([y + 0.5 for y in range(len(rows))], [s.id for s, _ in rows], fontsize=7)
    axes.set_title(f"{KIND_TITLES[kind]} accuracy per scenario", fontsize=9)
    figure.tight_layout()
    return charts.figure_svg(figure, inline=True)


def board_html(board: Board) -> str:
    """One self-contained page: no request leaves it (CSS inline, charts as inline SVG)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in RANKING_HEADERS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in row) + "</tr>"
                   for row in ranking_rows(board))
    notes = "".join(f"<li>{html.escape(line)}</li>" for line in legend_lines(board))
    charts = "".join(f"<section class='heatmap'>{heatmap_svg(board, kind)}</section>"
                     for kind in KINDS if heatmap_rows(board, kind))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>RMB leaderboard</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
td, th {{ padding: 3px 10px; border-bottom: 1px solid #eee; text-align: right; }}
td:nth-child(3), th:nth-child(3), td:nth-child(6) {{ text-align: left; }}
</style></head><body>
<h1>RMB leaderboard</h1>
<p>Ranked by overall accuracy. {html.escape(significance_phrase(board))}.</p>
<table><tr>{head}</tr>{body}</table>
<ul>{notes}</ul>
{charts}
</body></html>
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=(__doc__ or "").splitlines()[0])
    parser.add_argument("summaries", nargs="+", type=Path, metavar="RUN.json")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="also write the leaderboard as Markdown")
    parser.add_argument("--html", type=Path, metavar="PATH",
                        help="also write a self-contained HTML page with the heatmaps (needs matplotlib)")
    parser.add_argument("--correction", choices=tuple(CORRECTIONS), default="holm",
                        help="multiple-testing correction of the neighbour pairs' p-values: holm, bh or none "
                             "(default holm)")
    parser.add_argument("--allow-different-data", action="store_true",
                        help="rank runs that read a data file with different contents (refused otherwise); "
                             "the difference is printed first")
    add_arguments(parser, {"rmb_alpha": ("--alpha", "significance level of the * marks, after the correction")})
    args = parser.parse_args(argv)
    if len(args.summaries) < 2:
        parser.error("give at least two summaries to rank")
    if len(args.summaries) > len(LETTERS):
        parser.error(f"rank at most {len(LETTERS)} summaries at once")
    try:
        runs = load_runs(args.summaries)
        conflicts = data_conflicts(args.summaries, runs)
        if conflicts and not args.allow_different_data:
            raise UsageError("runs on different data are not ranked together: " + "; ".join(conflicts)
                             + " (give --allow-different-data to rank them anyway)")
        board = rank_runs(args.summaries, runs, correction=args.correction, alpha=args.alpha)
        board.conflicts = conflicts
        page = board_html(board) if args.html else None
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    print_board(board)
    for path, text in ((args.markdown, board_markdown(board) if args.markdown else None), (args.html, page)):
        if path is not None and text is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
