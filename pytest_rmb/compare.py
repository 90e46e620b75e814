"""``pytest-rmb compare A.json B.json [C.json ...] [--html OUT]``: runs side by side.

The first file is the reference. Every other run is compared with it on the samples the two share
(matched by scenario, kind and uid from the per-sample ``outcomes`` every --rmb-json carries): both
accuracies are recomputed over those samples, and every row's delta gets a two-sided p-value from the
samples where the two runs disagree, adjusted for the number of rows shown (Holm's correction unless
``--correction`` says otherwise). What differs between the runs' provenance is printed before the numbers.
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
from rich.table import Table

from pytest_rmb.data import uid_sort_key
from pytest_rmb.gate import provenance_differences
from pytest_rmb.metrics import KINDS, SECTION_NAMES, outcome_records, split_outcome_key, summarize
from pytest_rmb.options import add_arguments
from pytest_rmb.report import KIND_TITLES, Name, fit_width, fmt_accuracy, new_table
from pytest_rmb.stats import CORRECTIONS, adjust_p_values, row_tests
from pytest_rmb.summary import RunSummary, ScenarioRef, SummaryError, read_summary, scenario_refs

RUN_COLOURS = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6", "#9d755d")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def load_summary(path: Path) -> RunSummary:
    try:
        return read_summary(path, need_outcomes=False)
    except SummaryError as exc:
        raise SystemExit(f"pytest-rmb compare: {path}: {exc}") from None


@dataclass
class Comparison:
    """Everything the table shows: rows of numbers plus how much each run shares with the reference."""

    rows: list[dict]
    shared: list[int | None]  # per later run: samples shared with the reference (None: no outcomes)
    notes: list[str] = field(default_factory=list)
    provenance: list[list[str]] = field(default_factory=list)  # per later run, against the reference
    # Per run, reference first: what keeps its numbers from standing for its whole selection
    # ("partial run: ...", "incomplete data: ..."), or "".
    caveats: list[str] = field(default_factory=list)
    correction: str = "holm"
    tested: list[int] = field(default_factory=list)  # per later run: rows shown that have a p-value


def caveat(summary: Mapping[str, Any]) -> str:
    """A run that stopped early, or ran on data with files missing, says so beside its name."""
    said = []
    if summary.get("partial"):
        items = summary.get("items")
        said.append(f"partial run: {items['ran']} of {items['selected']} items ran" if items else "partial run")
    if summary.get("complete") is False:
        said.append(f"incomplete data: {len(summary['missing'])} data file(s) missing")
    return f" ({'; '.join(said)})" if said else ""


def strangers(comparison: Comparison) -> list[int]:
    """The runs (by index) that share no sample with the reference: nothing of them was compared."""
    return [index for index, shared in enumerate(comparison.shared, start=1) if shared == 0]


def row_values(summary: Mapping[str, Any]) -> dict[str, float | None]:
    """metric -> accuracy, in the row order of the table."""
    out: dict[str, float | None] = {"overall": summary["overall"]}
    for section in SECTION_NAMES:
        out[section] = summary["sections"][section]["accuracy"]
    for group, table in (("task", "tasks"), ("scenario", "scenarios")):
        for name in sorted(summary[table]):
            for kind in KINDS:
                entry = summary[table][name].get(kind) or {}
                if entry.get("total", 1):
                    out[f"{group}:{name}.{kind}"] = entry.get("accuracy")
    return out


def _on_keys(summary: Mapping[str, Any], keys: list[str], scenarios: dict[str, ScenarioRef]) -> dict[str, float | None]:
    return row_values(summarize(outcome_records(summary["outcomes"], keys), scenarios, resamples=1))


def compare_runs(runs: Sequence[Mapping[str, Any]], *, correction: str = "holm",
                 show_scenarios: bool = False) -> Comparison:
    """Each later run against the first, on the samples the two share; scenarios are placed as the
    summaries themselves describe them, so that runs on a user's own sets compare row by row.

    Every row gets a two-sided p-value per later run; those of the rows shown (scenario rows only
    with ``show_scenarios``) are adjusted together by ``correction``, one family per later run."""
    scenarios = scenario_refs(runs)

    def known(summary: Mapping[str, Any]) -> set[str] | None:
        if "outcomes" not in summary:
            return None
        return {k for k in summary["outcomes"] if split_outcome_key(k)[0] in scenarios}

    reference_keys = known(runs[0])
    per_run: list[dict[str, float | None]] = []
    reference_per_run: list[dict[str, float | None]] = []
    shared_counts: list[int | None] = []
    tests: list[dict[str, float]] = []
    notes: list[str] = []
    for index, run in enumerate(runs[1:], start=1):
        keys = known(run)
        if reference_keys is None or keys is None:
            shared_counts.append(None)
            per_run.append(row_values(run))
            reference_per_run.append(row_values(runs[0]))
            notes.append(f"{LETTERS[index]} or A has no per-sample outcomes: {LETTERS[index]} is compared on "
                         "the numbers as reported, which may cover different samples")
            tests.append({})
            continue
        shared = sorted(reference_keys & keys)
        shared_counts.append(len(shared))
        if not shared:
            notes.append(f"{LETTERS[index]} shares no samples with A: nothing to compare")
        per_run.append(_on_keys(run, shared, scenarios))
        reference_per_run.append(_on_keys(runs[0], shared, scenarios))
        tests.append(row_tests(runs[0], run, shared, scenarios))

    # The reference's own column: over the samples every run shares with it (when they all share the
    # same samples, exactly the numbers each delta is taken against).
    if reference_keys is not None and all(n is not None for n in shared_counts):
        common = set(reference_keys)
        for run in runs[1:]:
            common &= known(run) or set()
        reference_column = _on_keys(runs[0], sorted(common), scenarios)
        if len({frozenset(reference_keys & (known(run) or set())) for run in runs[1:]}) > 1:
            notes.append(
                f"the runs share different samples with A: column A is over the {len(common)} samples "
                "every run has, each delta is against A on that run's own shared samples"
            )
    else:
        reference_column = row_values(runs[0])

    metrics = ["overall", *SECTION_NAMES, *reference_column]
    for values in per_run:
        metrics += [m for m in values if m not in reference_column and m not in metrics]
    rows = []
    for metric in _ordered(metrics):
        column = [reference_column.get(metric)] + [own.get(metric) for own in per_run]
        if all(v is None for v in column) and ":" in metric:
            continue
        deltas = []
        for own, reference in zip(per_run, reference_per_run):
            value, base = own.get(metric), reference.get(metric)
            deltas.append(None if value is None or base is None else value - base)
        # A row one of the two runs lacks on their shared samples has no delta, and no test.
        found = [test.get(metric) if delta is not None else None for test, delta in zip(tests, deltas)]
        rows.append({
            "group": metric.partition(":")[0] if ":" in metric else ("overall" if metric == "overall" else "section"),
            "metric": metric, "values": column, "deltas": deltas,
            "p": found,
        })
    tested = adjust_rows(rows, correction, show_scenarios)
    provenance = [
        provenance_differences(runs[0].get("provenance"), run.get("provenance"), ("A", LETTERS[i]))
        for i, run in enumerate(runs[1:], start=1)
    ]
    return Comparison(rows, shared_counts, notes, provenance, [caveat(run) for run in runs], correction, tested)


def shown(row: Mapping[str, Any], show_scenarios: bool) -> bool:
    return show_scenarios or row["group"] != "scenario"


def adjust_rows(rows: list[dict], correction: str, show_scenarios: bool) -> list[int]:
    """Set each row's ``p_adjusted`` (per later run) over the family of rows shown that have a
    p-value; rows not shown get None. Returns the family's size per later run."""
    runs = len(rows[0]["p"]) if rows else 0
    for row in rows:
        row["p_adjusted"] = [None] * runs
    sizes = []
    for run in range(runs):
        family = [row for row in rows if shown(row, show_scenarios) and row["p"][run] is not None]
        for row, adjusted in zip(family, adjust_p_values([row["p"][run] for row in family], correction)):
            row["p_adjusted"][run] = adjusted
        sizes.append(len(family))
    return sizes


def _ordered(metrics: list[str]) -> list[str]:
    head = ["overall", *SECTION_NAMES]
    tasks = sorted((m for m in metrics if m.startswith("task:")), key=uid_sort_key)
    scenarios = sorted((m for m in metrics if m.startswith("scenario:")), key=uid_sort_key)
    return head + tasks + scenarios


def fmt_delta(delta: float | None, p_adjusted: float | None, alpha: float) -> tuple[str, str]:
    """(text, style) of a delta; a star marks a difference whose adjusted p-value is below ``alpha``."""
    if delta is None:
        return "", ""
    if p_adjusted is not None and p_adjusted < alpha:
        return f"{delta:+.4f}*", "red" if delta < 0 else "green"
    return f"{delta:+.4f} ", ""


def significance_phrase(comparison: Comparison, alpha: float) -> str:
    """What a star means here: the level, the test, the correction and over how many rows."""
    sizes = comparison.tested
    if not any(sizes):
        return f"* significant at alpha={alpha:g}, but no row could be tested"
    if len(set(sizes)) == 1:
        rows = f"{sizes[0]} rows"
    else:
        rows = "each run's rows (" + ", ".join(f"{LETTERS[i]}: {n}" for i, n in enumerate(sizes, start=1)) + ")"
    how = (f"no correction for testing {rows}" if comparison.correction == "none"
           else f"{CORRECTIONS[comparison.correction]} over {rows}")
    return f"* significant at alpha={alpha:g} (two-sided paired sign test; {how})"


def run_lines(names: list[str], comparison: Comparison, reference_samples: int | None) -> list[str]:
    """The legend: one line per run with what it shares with the reference, then provenance and notes."""
    reference = f"{reference_samples} samples" if reference_samples is not None else "no per-sample outcomes"
    caveats = comparison.caveats
    lines = [f"A  {names[0]}: reference, {reference}{caveats[0]}"]
    for index, (name, shared) in enumerate(zip(names[1:], comparison.shared), start=1):
        said = "no per-sample outcomes" if shared is None else f"{shared} samples shared with A"
        lines.append(f"{LETTERS[index]}  {name}: {said}{caveats[index]}")
    for index, differences in enumerate(comparison.provenance, start=1):
        lines += [f"provenance {LETTERS[index]} vs A: {line}" for line in differences]
    lines += [f"note: {note}" for note in comparison.notes]
    return lines


def comparison_table(names: list[str], comparison: Comparison, *, show_scenarios: bool, alpha: float) -> Table:
    # No line of the title may start with a row's name: users and tests find rows by their first word.
    table = new_table("RMB runs compared on shared samples: deltas against A, "
                      + significance_phrase(comparison, alpha))
    # The metric name is the one column that wraps, between its words; numbers never do (see fit_width).
    table.add_column("Metric")
    table.add_column("A", justify="right", no_wrap=True)
    for index in range(1, len(names)):
        table.add_column(LETTERS[index], justify="right", no_wrap=True)
        table.add_column(f"{LETTERS[index]}-A", justify="right", no_wrap=True)
    previous_group = None
    for row in comparison.rows:
        if not shown(row, show_scenarios):
            continue
        if previous_group is not None and row["group"] != previous_group:
            table.add_section()
        previous_group = row["group"]
        cells: list = [Name(row["metric"]), fmt_accuracy(row["values"][0])]
        for value, delta, p_adjusted in zip(row["values"][1:], row["deltas"], row["p_adjusted"]):
            text, style = fmt_delta(delta, p_adjusted, alpha)
            cells += [fmt_accuracy(value), f"[{style}]{text}[/]" if style else text]
        table.add_row(*cells)
    return table


def print_comparison(names: list[str], comparison: Comparison, *, show_scenarios: bool, alpha: float,
                     reference_samples: int | None, console: Console | None = None) -> None:
    # Console() takes the terminal's width (or $COLUMNS); a table that cannot fit is drawn wider
    # rather than with cut numbers.
    console = console or Console(highlight=False)
    for line in run_lines(names, comparison, reference_samples):
        console.print(line, markup=False, overflow="fold")
    table = comparison_table(names, comparison, show_scenarios=show_scenarios, alpha=alpha)
    fit_width(console, table).print(table)


def _bar_chart(title: str, names: list[str], rows: list[dict]) -> str:
    """A horizontal bar chart as inline SVG: one group of bars per scenario, one bar per run."""
    bar, gap, label_width, plot_width = 7, 6, 330, 520
    group = bar * len(names) + gap
    height = 30 + group * len(rows) + 20
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_width + plot_width + 70}" height="{height}" '
             f'role="img" aria-label="{html.escape(title)}">'),
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


def comparison_html(names: list[str], comparison: Comparison, *, show_scenarios: bool = False, alpha: float = 0.05,
                    legend_lines: tuple[str, ...] | list[str] = ()) -> str:
    """One self-contained page: the comparison table (the terminal's rows) and per-scenario charts,
    no external assets."""
    rows = comparison.rows
    head = "".join(
        f"<th>{LETTERS[i]}: {html.escape(n)}</th>" + (f"<th>{LETTERS[i]}-A</th>" if i else "")
        for i, n in enumerate(names)
    )
    body = []
    for row in rows:
        if not shown(row, show_scenarios):
            continue
        cells = [f"<td><code>{html.escape(row['metric'])}</code></td>", f"<td>{fmt_accuracy(row['values'][0])}</td>"]
        for value, delta, p_adjusted in zip(row["values"][1:], row["deltas"], row["p_adjusted"]):
            text, style = fmt_delta(delta, p_adjusted, alpha)
            cells.append(f"<td>{fmt_accuracy(value)}</td><td class='{style}'>{text.strip()}</td>")
        body.append(f"<tr class='{row['group']}'>{''.join(cells)}</tr>")
    legend = " ".join(
        f'<span class="key" style="background:{RUN_COLOURS[i % len(RUN_COLOURS)]}"></span>{html.escape(n)}'
        for i, n in enumerate(names)
    )
    about = "".join(f"<li>{html.escape(line)}</li>" for line in legend_lines)
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
<p>Each run is compared with A on the samples the two share; deltas are against A on those samples.
Every row is tested: {html.escape(significance_phrase(comparison, alpha))}. A row's p-value counts
the samples where the two runs disagree: with no real difference each would go either way with
probability 1/2 (exact sign test; the overall row, a mean of the sections, uses the normal
approximation of the same null), and the p-value is twice the smaller tail. The correction adjusts
the p-values of the rows in this table together, separately for each run compared with A.</p>
<ul>{about}</ul>
<table><tr><th>Metric</th>{head}</tr>
{"".join(body)}
</table>
<p>{legend}</p>
{"".join(charts)}
</body></html>
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pytest-rmb compare", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("summaries", nargs="+", type=Path, metavar="SUMMARY.json")
    parser.add_argument("--html", type=Path, metavar="OUT", help="also write a self-contained HTML page")
    parser.add_argument("--scenarios", action="store_true",
                        help="include the per-scenario rows in the table (and in the rows corrected for)")
    parser.add_argument("--correction", choices=tuple(CORRECTIONS), default="holm",
                        help="multiple-testing correction of the p-values of the rows shown, per run compared "
                             "with A: holm (Holm's step-down, family-wise), bh (Benjamini-Hochberg, false "
                             "discovery rate) or none (default holm)")
    # The plugin's own declaration of alpha: the same values are refused, with the same words.
    add_arguments(parser, {"rmb_alpha": ("--alpha", "significance level of the * marks, after the correction")})
    args = parser.parse_args(argv)
    if len(args.summaries) < 2:
        parser.error("give at least two summaries to compare")
    if len(args.summaries) > len(LETTERS):
        parser.error(f"compare at most {len(LETTERS)} summaries at once")

    runs = [load_summary(path) for path in args.summaries]
    names = [f"{run.get('model')} ({path.name})" for run, path in zip(runs, args.summaries)]
    comparison = compare_runs(runs, correction=args.correction, show_scenarios=args.scenarios)
    reference_samples = len(runs[0]["outcomes"]) if "outcomes" in runs[0] else None
    print_comparison(names, comparison, show_scenarios=args.scenarios, alpha=args.alpha,
                     reference_samples=reference_samples)
    if args.html:
        args.html.parent.mkdir(parents=True, exist_ok=True)
        page = comparison_html(names, comparison, show_scenarios=args.scenarios, alpha=args.alpha,
                               legend_lines=run_lines(names, comparison, reference_samples))
        args.html.write_text(page, encoding="utf-8")
        print(f"wrote {args.html}")
    unshared = strangers(comparison)
    for index in unshared:
        print(f"pytest-rmb compare: {args.summaries[index]} shares no sample with {args.summaries[0]}: nothing was "
              "compared (other data, other scenarios, or selections that do not overlap)", file=sys.stderr)
    return 1 if unshared else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
