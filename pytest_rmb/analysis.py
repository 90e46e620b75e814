"""What a score means: the analyses of a run beyond its accuracy, computed from the per-sample
records alone (so that a summary can be analysed again from its JSONL, months later).

- ``markdown_baseline``: the markdown rule (more headings, list items, bold and code wins) on the
  run's samples, per section, task and scenario, beside the length baseline the tables show.
- ``style``: how much of the model's agreement with the labels its taste for style explains
  (:mod:`pytest_rmb.style`).
- ``generators``: whose answers win under the labels and under the model
  (:mod:`pytest_rmb.generators`).
- ``ties`` and ``calibration``: exact score ties with the tie-adjusted accuracy, and how well the
  model's P(chosen) matches how often it is right (:mod:`pytest_rmb.calibration`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pytest_rmb.calibration import calibration, ties
from pytest_rmb.generators import generator_stats
from pytest_rmb.metrics import summarize
from pytest_rmb.style import style_decomposition


def _accuracy(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A summarize() entry reduced to correct/total/accuracy, without its interval or baseline."""
    return {"correct": entry["correct"], "total": entry["total"], "accuracy": entry["accuracy"]}


def _by_kind(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    return {key: {kind: _accuracy(row[kind]) for kind in ("pairwise", "bon")} for key, row in rows.items()}


def markdown_baseline(records: Sequence[Mapping[str, Any]], scenarios: Mapping[str, Any]) -> dict[str, Any] | None:
    """The markdown rule's accuracy where every record says its outcome; None otherwise (records
    written before the rule existed)."""
    if not records or any("markdown_correct" not in record for record in records):
        return None
    as_outcomes = [{"scenario": r["scenario"], "kind": r["kind"], "correct": r["markdown_correct"]} for r in records]
    # The same grouping as the model's own figures; the interval of a baseline is not needed.
    rule = summarize(as_outcomes, scenarios, resamples=1)
    return {
        "sections": {key: _accuracy(entry) for key, entry in rule["sections"].items()},
        "overall": rule["overall"],
        "tasks": _by_kind(rule["tasks"]),
        "scenarios": _by_kind(rule["scenarios"]),
    }


def analyse(records: Sequence[Mapping[str, Any]], scenarios: Mapping[str, Any]) -> dict[str, Any]:
    """The summary's ``analysis`` block."""
    return {
        "markdown_baseline": markdown_baseline(records, scenarios),
        "style": style_decomposition(records),
        "generators": generator_stats(records),
        "ties": ties(records, {scenario_id: scenario.goal for scenario_id, scenario in scenarios.items()}),
        "calibration": calibration(records),
    }
