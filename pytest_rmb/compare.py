"""``python -m pytest_rmb compare A.json B.json [C.json ...] [--html OUT]``: runs side by side.

The first file is the reference; every other run gets its delta against it, with a paired
bootstrap p-value where both files carry per-sample outcomes (every --rmb-json does).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pytest_rmb.gate import SECTION_NAMES, compare_shared, outcomes_by_section
from pytest_rmb.metrics import KINDS
from pytest_rmb.scenarios import registry


def load_summary(path: Path) -> dict:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"pytest-rmb compare: {path}: {exc}") from None
    if not isinstance(document, dict) or "sections" not in document:
        raise SystemExit(f"pytest-rmb compare: {path}: not a pytest-rmb --rmb-json summary")
    return document


def significance(reference: dict, other: dict, seed: int, resamples: int) -> dict[str, dict]:
    """Paired comparison per section and overall, on the samples both runs share."""
    if "outcomes" not in reference or "outcomes" not in other:
        return {}
    goal_of = {s.id: s.goal for s in registry()}
    return compare_shared(
        outcomes_by_section(reference["outcomes"], goal_of),
        outcomes_by_section(other["outcomes"], goal_of),
        seed=seed, resamples=resamples,
    )


def comparison_rows(runs: list[dict], seed: int = 0, resamples: int = 1000) -> list[dict]:
    """One row per metric: label, group, each run's value, each later run's delta and p-value."""
    tests = [significance(runs[0], run, seed, resamples) for run in runs[1:]]
    rows = []

    def add(group: str, label: str, values: list[float | None], key: str | None) -> None:
        deltas = [None if v is None or values[0] is None else v - values[0] for v in values[1:]]
        found = [test.get(key) if key else None for test in tests]
        rows.append({
            "group": group, "metric": label, "values": values, "deltas": deltas,
            "p_drop": [entry["p_drop"] if entry else None for entry in found],
            "p_gain": [entry["p_gain"] if entry else None for entry in found],
        })

    add("overall", "overall", [run["overall"] for run in runs], "overall")
    for section in SECTION_NAMES:
        add("section", section, [run["sections"][section]["accuracy"] for run in runs], section)
    for group, table in (("task", "tasks"), ("scenario", "scenarios")):
        for name in sorted({name for run in runs for name in run[table]}):
            for kind in KINDS:
                values = [run[table].get(name, {}).get(kind, {}).get("accuracy") for run in runs]
                if any(v is not None for v in values):
                    add(group, f"{group}:{name}.{kind}", values, None)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_rmb compare", description=__doc__.splitlines()[0])
    parser.add_argument("summaries", nargs="+", type=Path, metavar="SUMMARY.json")
    parser.add_argument("--html", type=Path, metavar="OUT", help="also write a self-contained HTML page")
    parser.add_argument("--scenarios", action="store_true", help="include the per-scenario rows in the table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args(argv)
    if len(args.summaries) < 2:
        parser.error("give at least two summaries to compare")
    from pytest_rmb.report import comparison_html, print_comparison

    runs = [load_summary(path) for path in args.summaries]
    names = [f"{run['model']} ({path.name})" for run, path in zip(runs, args.summaries)]
    rows = comparison_rows(runs, args.seed, args.bootstrap)
    print_comparison(names, rows, show_scenarios=args.scenarios)
    if args.html:
        args.html.parent.mkdir(parents=True, exist_ok=True)
        args.html.write_text(comparison_html(names, rows), encoding="utf-8")
        print(f"wrote {args.html}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
