"""Per-item results: carried in test reports as plain builtins, gathered on the controller.

Items put their record in ``report.user_properties`` so that the same path serves a single process
and pytest-xdist, where reports are the only thing that travels from the workers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from pytest_rmb import __version__
from pytest_rmb.collection import display_nodeid, scenario_and_kind
from pytest_rmb.data import PAIRWISE, Sample, uid_sort_key
from pytest_rmb.engine import EngineStats
from pytest_rmb.metrics import is_correct, margin, outcome_key, summarize

OUTCOME_KEY = pytest.StashKey[dict]()

RESULT = "rmb"
ENGINE = "rmb_engine"
MISSING = "rmb_missing"


def item_record(sample: Sample, scores: tuple[float, ...]) -> dict:
    """The JSONL record of one item: scores best/chosen first, then the others in upstream order."""
    return {
        "scenario": sample.scenario,
        "kind": sample.kind,
        "uid": sample.uid,
        "scores": list(scores),
        "correct": is_correct(scores),
    }


def describe_miss(record: dict) -> str:
    """One line: the scores and the margin."""
    scores = record["scores"]
    if record["kind"] == PAIRWISE:
        return f"chosen {scores[0]:.6g} <= rejected {scores[1]:.6g} (margin {margin(scores):.6g})"
    rivals = scores[1:]
    strongest = max(range(len(rivals)), key=rivals.__getitem__)
    return (
        f"best {scores[0]:.6g} <= loser {strongest + 1} of {len(rivals)} {rivals[strongest]:.6g} "
        f"(margin {margin(scores):.6g})"
    )


def finish_call_report(item: pytest.Item, report: pytest.TestReport, engine) -> None:
    """Attach the item's record and any new engine stats; turn a miss into a compact failure."""
    record = item.stash.get(OUTCOME_KEY, None)
    if engine is not None:
        delta = engine.take_unreported()
        if delta:
            report.user_properties.append((ENGINE, delta))
    if record is None:
        return
    report.user_properties.append((RESULT, record))
    if item.config.getoption("xmlpath", None):
        # JUnit XML takes properties from the item (its teardown report), one testcase per sample.
        item.user_properties.extend(
            [("rmb.scores", json.dumps(record["scores"])), ("rmb.correct", str(record["correct"]).lower()),
             ("rmb.margin", f"{margin(record['scores']):.6g}")]
        )
    if not record["correct"] and report.passed:
        report.outcome = "failed"
        report.longrepr = describe_miss(record)


def miss_record(report: pytest.TestReport) -> dict | None:
    """The record of a missed sample, or None for any other report."""
    if report.when != "call" or not report.failed:
        return None
    for name, value in report.user_properties:
        if name == RESULT and not value["correct"]:
            return value
    return None


@dataclass
class RunResults:
    """What the controller has heard so far; everything the summary is computed from."""

    records: list[dict] = field(default_factory=list)
    engine: EngineStats = field(default_factory=EngineStats)
    missing: dict[tuple[str, str], dict] = field(default_factory=dict)
    errors: dict[tuple[str, str], dict] = field(default_factory=dict)
    misses: list[tuple[str, str]] = field(default_factory=list)
    other_failures: int = 0

    def add(self, report: pytest.TestReport) -> None:
        for name, value in report.user_properties:
            if name == RESULT:
                self.records.append(value)
            elif name == ENGINE:
                self.engine.add(value)
            elif name == MISSING:
                self.missing.setdefault((value["scenario"], value["kind"]), value)
        if not report.failed:
            return
        if miss_record(report) is not None:
            self.misses.append((display_nodeid(report.nodeid), str(report.longrepr)))
            return
        self.other_failures += 1
        key = scenario_and_kind(report.nodeid)
        if key is not None:
            entry = self.errors.setdefault(
                key, {"scenario": key[0], "kind": key[1], "items": 0, "message": _first_lines(report)}
            )
            entry["items"] += 1


def _first_lines(report: pytest.TestReport, limit: int = 20) -> str:
    lines = str(report.longrepr).splitlines()
    return "\n".join(lines[:limit] + ([f"... ({len(lines) - limit} more lines)"] if len(lines) > limit else []))


def summary_document(results: RunResults, records: list[dict], settings, scenarios: dict, partial: bool) -> dict:
    """The --rmb-json document: metrics plus what was run, what is missing and what failed.

    ``records`` are the results' records in stable order (``sorted_records``)."""
    metrics = summarize(records, scenarios, seed=settings.scorer.seed, resamples=settings.bootstrap)
    return {
        "model": settings.scorer.model,
        "dataset": settings.dataset_label,
        **metrics,
        "engine": results.engine.as_dict(),
        "missing": [results.missing[key] for key in sorted(results.missing)],
        "errors": [results.errors[key] for key in sorted(results.errors)],
        "partial": partial,
        "samples": len(results.records),
        "misses": len(results.misses),
        "pytest_rmb": __version__,
        # Per-sample outcomes, so that a later run can use this file as its --rmb-baseline.
        "outcomes": {outcome_key(r): int(r["correct"]) for r in records},
    }


def sorted_records(results: RunResults) -> list[dict]:
    """Per-sample records in a stable order, whatever order workers finished in."""
    return sorted(results.records, key=lambda r: (r["scenario"], r["kind"], uid_sort_key(r["uid"])))
