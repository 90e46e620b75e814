"""Per-item results: carried in test reports as plain builtins, gathered on the controller.

Items put their record in ``report.user_properties`` so that the same path serves a single process
and pytest-xdist, where reports are the only thing that travels from the workers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from pytest_rmb import __version__
from pytest_rmb.collection import display_nodeid, item_identity
from pytest_rmb.data import uid_sort_key
from pytest_rmb.engine import EngineStats
from pytest_rmb.metrics import margin, outcome_key, summarize
from pytest_rmb.outcomes import Outcome

OUTCOME_KEY = pytest.StashKey[Outcome]()

RESULT = "rmb"
ENGINE = "rmb_engine"
MISSING = "rmb_missing"
# Every RMB item's report says which scenario and kind it belongs to, so that the controller
# never has to read that out of a node id.
ITEM = "rmb_item"


def finish_call_report(item: pytest.Item, report: pytest.TestReport, engine, junit: bool = False) -> None:
    """Attach the item's record and any new engine stats; turn a miss into a compact failure."""
    outcome = item.stash.get(OUTCOME_KEY, None)
    if report.failed and (identity := item_identity(item)) is not None:
        report.user_properties.append((ITEM, identity))
    if engine is not None:
        delta = engine.take_unreported()
        if delta:
            report.user_properties.append((ENGINE, delta))
    if outcome is None:
        return
    record = outcome.record
    report.user_properties.append((RESULT, record))
    if junit:
        # JUnit XML takes properties from the item (its teardown report), one testcase per sample.
        properties = [("rmb.correct", str(record["correct"]).lower())]
        if "scores" in record:
            properties += [("rmb.scores", json.dumps(record["scores"])),
                           ("rmb.margin", f"{margin(record['scores']):.6g}")]
        item.user_properties.extend(properties)
    if not outcome.correct and report.passed:
        report.outcome = "failed"
        report.longrepr = outcome.miss


def properties(report: pytest.TestReport) -> list[tuple[str, Any]]:
    """A report's user properties; ours are plain builtins, whatever pytest's annotation says."""
    return cast("list[tuple[str, Any]]", report.user_properties)


def miss_record(report: pytest.TestReport) -> dict | None:
    """The record of a missed sample, or None for any other report."""
    if report.when != "call" or not report.failed:
        return None
    for name, value in properties(report):
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
    # Scenario and kind of every item a pytest-xdist worker started, by node id (see session.py).
    identities: dict[str, dict] = field(default_factory=dict)

    def add(self, report: pytest.TestReport) -> None:
        identity = None
        for name, value in properties(report):
            if name == ITEM:
                identity = value
                if report.when == "setup":
                    self.identities[report.nodeid] = value
            elif name == RESULT:
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
        identity = identity or self.identities.get(report.nodeid)
        if identity is not None:
            key = (identity["scenario"], identity["kind"])
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
        # A --rmb-limit run scores a seeded subset: its numbers are not the benchmark's.
        "limit": settings.limit,
        "seed": settings.scorer.seed,
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
