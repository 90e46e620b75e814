"""``pytest-rmb validity RUN.json ... --downstream FILE.csv``: does the benchmark predict downstream results?

Given runs of several models and a CSV of the same models' downstream results (columns ``model``,
``metric``, ``value``), each row of the benchmark (overall, the four sections, every task and
scenario) is correlated with each downstream metric over the models: Pearson's r and Spearman's rho,
each with a 95% percentile bootstrap interval that resamples the models (seeded), and n, the models
the row has a value for. This is the RMB paper's own claim, that its Best-of-N set tracks downstream
alignment, made a command.

A run's name in the CSV is its ``--rmb-model`` spec as the summary records it (``random``,
``hf:org/model``); ``--name RUN.json=NAME`` gives it another. Every CSV model must name a run.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from pytest_rmb.charts import figure_svg
from pytest_rmb.compare import row_values
from pytest_rmb.leaderboard import UsageError, data_conflicts, load_runs, new_figure
from pytest_rmb.metrics import SECTION_NAMES
from pytest_rmb.report import Name, fit_width, new_table
from pytest_rmb.stats import CORRELATIONS, bootstrap_correlations, pearson, spearman

PROG = "pytest-rmb validity"
COLUMNS = ("model", "metric", "value")
MIN_MODELS = 3  # fewer points than this make no correlation worth an interval


@dataclass(frozen=True)
class Downstream:
    """The CSV's values: metric -> model -> value, metrics and models in the order first seen."""

    values: dict[str, dict[str, float]]


def run_names(paths: Sequence[Path], runs: Sequence[Mapping[str, Any]], renames: Sequence[str]) -> list[str]:
    """Each run's name in the CSV: its model spec, or what ``--name RUN.json=NAME`` says."""
    names = [str(run.get("model")) for run in runs]
    for given in renames:
        path, sep, name = given.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--name {given}: write it as RUN.json=NAME")
        matches = [i for i, p in enumerate(paths) if p == Path(path) or p.name == path]
        if len(matches) != 1:
            raise UsageError(f"--name {given}: {path} is not one of the runs given ({', '.join(map(str, paths))})")
        names[matches[0]] = name.strip()
    seen: dict[str, Path] = {}
    for name, run_path in zip(names, paths):
        if name in seen:
            raise UsageError(f"two runs are named {name!r} ({seen[name]} and {run_path}): give each its own name "
                             "with --name RUN.json=NAME")
        seen[name] = run_path
    return names


def read_downstream(path: Path, names: Sequence[str]) -> Downstream:
    """The CSV, checked: the header, every value a finite number, every model a run's name, no
    model and metric twice. Each error names the file, the line and the value."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--downstream {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"--downstream {path}: not UTF-8 text") from None
    rows = csv.reader(text.splitlines())
    header = next(rows, None)
    if header is None or [h.strip().lower() for h in header] != list(COLUMNS):
        found = ",".join(header) if header else "an empty file"
        raise UsageError(f"{path}:1: the header must be {','.join(COLUMNS)}; found {found}")
    values: dict[str, dict[str, float]] = {}
    where: dict[tuple[str, str], int] = {}
    for row in rows:
        line = rows.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(COLUMNS):
            raise UsageError(f"{path}:{line}: {len(row)} fields, expected {len(COLUMNS)} ({','.join(COLUMNS)})")
        model, metric, raw = (cell.strip() for cell in row)
        if model not in names:
            raise UsageError(f"{path}:{line}: model {model!r} matches no run (the runs are named "
                             f"{', '.join(map(repr, names))}; --name RUN.json=NAME names a run)")
        if not metric:
            raise UsageError(f"{path}:{line}: the metric is empty")
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise UsageError(f"{path}:{line}: value {raw!r} is not a finite number")
        if (model, metric) in where:
            raise UsageError(f"{path}:{line}: model {model!r} has metric {metric!r} already on line "
                             f"{where[model, metric]}")
        where[model, metric] = line
        values.setdefault(metric, {})[model] = value
    if not values:
        raise UsageError(f"{path}: no rows after the header")
    for metric, by_model in values.items():
        if len(by_model) < MIN_MODELS:
            raise UsageError(f"{path}: metric {metric!r} has values for {len(by_model)} model(s) "
                             f"({', '.join(by_model)}); a correlation needs at least {MIN_MODELS}")
    return Downstream(values)


def correlate(names: Sequence[str], runs: Sequence[Mapping[str, Any]], downstream: Downstream, *, seed: int,
              resamples: int) -> dict[str, Any]:
    """metric -> its models and one entry per benchmark row: n, r, rho and their intervals."""
    accuracies = {name: row_values(run) for name, run in zip(names, runs)}
    rows = list(dict.fromkeys(row for values in accuracies.values() for row in values))
    result: dict[str, Any] = {}
    for metric, by_model in downstream.values.items():
        entries = []
        for row in rows:
            points = [(accuracies[m][row], by_model[m]) for m in by_model if accuracies[m].get(row) is not None]
            x = [float(a) for a, _ in points]  # type: ignore[arg-type]
            y = [b for _, b in points]
            entry: dict[str, Any] = {"row": row, "n": len(points)}
            if len(points) >= MIN_MODELS:
                entry["pearson"], entry["spearman"] = pearson(x, y), spearman(x, y)
                intervals = bootstrap_correlations(x, y, seed=seed, resamples=resamples)
                for name in CORRELATIONS:
                    entry[f"{name}_ci95"] = intervals[name]
            else:
                entry.update({"pearson": None, "spearman": None, "pearson_ci95": None, "spearman_ci95": None})
            entries.append(entry)
        result[metric] = {"models": list(by_model), "rows": entries}
    return result


def fmt_coefficient(value: float | None, interval: list[float] | None) -> str:
    if value is None:
        return "-"
    around = f" [{interval[0]:+.2f}, {interval[1]:+.2f}]" if interval else ""
    return f"{value:+.2f}{around}"


def print_validity(result: Mapping[str, Any], *, scenarios: bool, console: Console | None = None) -> None:
    console = console or Console(highlight=False)
    for metric, found in result.items():
        table = new_table(f"Downstream {metric} against RMB accuracy over {len(found['models'])} models "
                          "(95% bootstrap intervals over the models)")
        table.add_column("Row")
        table.add_column("n", justify="right", no_wrap=True)
        table.add_column("Pearson r", justify="right", no_wrap=True)
        table.add_column("Spearman rho", justify="right", no_wrap=True)
        for entry in found["rows"]:
            if entry["row"].startswith("scenario:") and not scenarios:
                continue
            table.add_row(Name(entry["row"]), str(entry["n"]), fmt_coefficient(entry["pearson"], entry["pearson_ci95"]),
                          fmt_coefficient(entry["spearman"], entry["spearman_ci95"]))
        fit_width(console, table).print(table)


def validity_svg(names: Sequence[str], runs: Sequence[Mapping[str, Any]], downstream: Downstream,
                 result: Mapping[str, Any]) -> str:
    """A scatter per section (and overall) per metric: RMB accuracy across, the metric up, each point
    labelled with its model."""
    panels = ["overall", *SECTION_NAMES]
    metrics = list(downstream.values)
    figure = new_figure("--plot", figsize=(3.2 * len(panels), 3.0 * len(metrics)))
    accuracies = {name: row_values(run) for name, run in zip(names, runs)}
    for i, metric in enumerate(metrics):
        found = {entry["row"]: entry for entry in result[metric]["rows"]}
        for j, panel in enumerate(panels):
            axes = figure.add_subplot(len(metrics), len(panels), i * len(panels) + j + 1)
            points = [(accuracies[m][panel], v, m) for m, v in downstream.values[metric].items()
                      if accuracies[m].get(panel) is not None]
            axes.scatter([p[0] for p in points], [p[1] for p in points], color="#4c78a8")
            for x, y, model in points:
                axes.annotate(model, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
            entry = found.get(panel) or {"pearson": None, "spearman": None}
            r, rho = (f"{entry[k]:+.2f}" if entry.get(k) is not None else "-" for k in CORRELATIONS)
            axes.set_title(f"{panel}\nr {r}, rho {rho}", fontsize=8)
            axes.set_xlabel("RMB accuracy", fontsize=7)
            if j == 0:
                axes.set_ylabel(metric, fontsize=8)
            axes.tick_params(labelsize=7)
    figure.tight_layout()
    return figure_svg(figure, inline=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=(__doc__ or "").splitlines()[0])
    parser.add_argument("summaries", nargs="+", type=Path, metavar="RUN.json")
    parser.add_argument("--downstream", type=Path, required=True, metavar="FILE.csv",
                        help="the models' downstream results: a CSV with the columns model,metric,value; model "
                             "is a run's --rmb-model spec, or the name --name gives it")
    parser.add_argument("--name", action="append", default=[], metavar="RUN.json=NAME",
                        help="the name under which the CSV lists this run's model (repeatable)")
    parser.add_argument("--plot", type=Path, metavar="PATH.svg",
                        help="also draw a scatter per section as SVG (needs matplotlib)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every correlation as JSON")
    parser.add_argument("--scenarios", action="store_true", help="show the per-scenario rows in the terminal too")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    args = parser.parse_args(argv)
    if len(args.summaries) < MIN_MODELS:
        parser.error(f"give runs of at least {MIN_MODELS} models: a correlation over fewer says nothing")
    if args.resamples < 1:
        parser.error("--resamples must be at least 1")
    try:
        runs = load_runs(args.summaries)
        conflicts = data_conflicts(args.summaries, runs)
        if conflicts:
            raise UsageError("runs on different data cannot be correlated: " + "; ".join(conflicts))
        names = run_names(args.summaries, runs, args.name)
        downstream = read_downstream(args.downstream, names)
        result = correlate(names, runs, downstream, seed=args.seed, resamples=args.resamples)
        plot = validity_svg(names, runs, downstream, result) if args.plot else None
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    print_validity(result, scenarios=args.scenarios)
    left_out = [f"{name} has no {metric}" for metric, values in downstream.values.items()
                for name in names if name not in values]
    for line in left_out:
        print(f"note: {line}: left out of that metric's correlations")
    if args.json:
        document = {"downstream": str(args.downstream), "seed": args.seed, "resamples": args.resamples,
                    "runs": [{"file": str(p), "name": n} for p, n in zip(args.summaries, names)], "metrics": result}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    if plot is not None:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        args.plot.write_text(plot, encoding="utf-8")
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
