"""CI gates: thresholds on metrics and a comparison against a baseline run -> PASS/FAIL rows.

A threshold is ``METRIC OP NUMBER``; METRIC is ``overall``, a section (``helpfulness.pairwise``),
a task (``task:code.pairwise``) or a scenario (``scenario:code/data_management.bon``); NUMBER is a
fraction in [0, 1]. A baseline gate fails when a metric dropped by more than the allowed amount
*and* a paired bootstrap over the samples both runs share says the drop is significant, and also
when the two runs share no samples at all (nothing was compared) unless empty gates are allowed.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pytest_rmb.metrics import SECTION_NAMES, paired_comparison, section_key, split_outcome_key
from pytest_rmb.parsers import closest_names
from pytest_rmb.summary import GateRow, SummaryError, partial_account, read_summary

OPERATORS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
# Any name character a user may type, hyphens included, so that a mistyped name is told as an
# unknown name (with the closest ones), never as a bad operator.
_GATE = re.compile(r"^\s*(?P<metric>[A-Za-z0-9_:/.-]+)\s*(?P<op>>=|<=|>|<)\s*(?P<bar>[-+0-9.eE]+)\s*$")

GateStatus = Literal["PASS", "FAIL", "NOT EVALUATED"]
PASS: GateStatus = "PASS"
FAIL: GateStatus = "FAIL"
NOT_EVALUATED: GateStatus = "NOT EVALUATED"


class GateError(ValueError):
    """A gate expression or baseline file that cannot be used."""


@dataclass(frozen=True)
class Gate:
    metric: str
    op: str
    bar: float

    @property
    def bar_text(self) -> str:
        return f"{self.op} {self.bar:g}"


def parse_gate(text: str, scenario_ids: set[str] | None, task_ids: set[str] | None) -> Gate:
    """A gate from its expression; scenario and task names are checked unless their sets are None."""
    match = _GATE.match(text)
    if not match:
        raise GateError(f"{text!r}: expected METRIC OP NUMBER with OP one of >=, >, <=, < (e.g. 'overall>=0.7')")
    metric, op = match["metric"], match["op"]
    try:
        bar = float(match["bar"])
    except ValueError:
        raise GateError(f"{text!r}: {match['bar']!r} is not a number") from None
    if not 0 <= bar <= 1:
        raise GateError(f"{text!r}: {match['bar']} is not an accuracy; thresholds are fractions between 0 and 1"
                        + _percent_hint(metric, op, match["bar"], bar))
    check_metric(metric, scenario_ids, task_ids, text)
    return Gate(metric, op, bar)


def _percent_hint(metric: str, op: str, text: str, bar: float) -> str:
    """For a bar that reads like a percentage, the same bar as a fraction: 70 -> 0.70, 7 -> 0.07."""
    if not 1 < bar <= 100:
        return ""
    mantissa = text.lower().split("e")[0]
    decimals = len(mantissa.partition(".")[2]) if "e" not in text.lower() else 0
    return f" (for {text}% write '{metric}{op}{bar / 100:.{decimals + 2}f}')"


def check_metric(metric: str, scenario_ids: set[str] | None, task_ids: set[str] | None, text: str) -> None:
    if metric == "overall" or metric in SECTION_NAMES:
        return
    for prefix, known in (("task:", task_ids), ("scenario:", scenario_ids)):
        if metric.startswith(prefix):
            name, _, kind = metric[len(prefix):].rpartition(".")
            if kind not in ("pairwise", "bon"):
                raise GateError(f"{text!r}: {metric!r} must end in .pairwise or .bon")
            if known is not None and name not in known:
                what = prefix[:-1]
                close = ", ".join(closest_names(name, sorted(known), cutoff=0.0))
                hint = f"did you mean {close}? " if close else ""
                raise GateError(f"{text!r}: unknown {what} {name!r}; {hint}({len(known)} {what}s "
                                "in this run; `pytest --rmb-model length --collect-only -q` lists them as "
                                "rmb/<task>/<scenario>)")
            return
    raise GateError(
        f"{text!r}: unknown metric {metric!r}; use overall, {', '.join(SECTION_NAMES)}, "
        "task:<task>.<pairwise|bon> or scenario:<task>/<name>.<pairwise|bon>"
    )


def metric_value(summary: Mapping[str, Any], metric: str) -> tuple[float | None, list[float] | None]:
    """(value, 95% interval) of a metric in a summary; value None when it has no samples."""
    if metric == "overall":
        return summary["overall"], summary["overall_ci95"]
    if metric in SECTION_NAMES:
        entry = summary["sections"][metric]
        return entry["accuracy"], entry["ci95"]
    prefix, _, rest = metric.partition(":")
    name, _, kind = rest.rpartition(".")
    table = summary["tasks" if prefix == "task" else "scenarios"]
    entry = table.get(name, {}).get(kind)
    return (entry["accuracy"], None) if entry else (None, None)


@dataclass(frozen=True)
class GateResult:
    metric: str
    value: float | None
    reference: str
    interval: list[float] | None
    status: GateStatus
    detail: str = ""

    def as_dict(self) -> GateRow:
        return {"metric": self.metric, "value": self.value, "reference": self.reference,
                "interval": self.interval, "status": self.status, "detail": self.detail}


def evaluate_thresholds(gates: list[Gate], summary: Mapping[str, Any], allow_empty: bool) -> list[GateResult]:
    results = []
    for gate in gates:
        value, interval = metric_value(summary, gate.metric)
        if value is None:
            detail = "no samples in this run" + ("" if allow_empty else "; --rmb-gate-allow-empty accepts that")
            status = NOT_EVALUATED if allow_empty else FAIL
            results.append(GateResult(gate.metric, None, gate.bar_text, None, status, detail))
            continue
        passed = OPERATORS[gate.op](value, gate.bar)
        results.append(GateResult(gate.metric, value, gate.bar_text, interval, PASS if passed else FAIL))
    return results


def load_baseline(path: Path) -> dict[str, Any]:
    try:
        return dict(read_summary(path, need_outcomes=True))
    except SummaryError as exc:
        raise GateError(f"--rmb-baseline {path}: {exc}") from None


def outcomes_by_section(outcomes: dict[str, bool], goal_of: dict[str, str]) -> dict[str, dict[str, bool]]:
    by_section: dict[str, dict[str, bool]] = {name: {} for name in SECTION_NAMES}
    for key, correct in outcomes.items():
        scenario, kind, _ = split_outcome_key(key)
        section = by_section.get(section_key(goal_of.get(scenario, ""), kind))
        # A scenario of neither RMB goal (a user's own set) has no section to count in.
        if section is not None:
            section[key] = bool(correct)
    return by_section


def compare_shared(old: dict[str, dict[str, bool]], new: dict[str, dict[str, bool]], *, seed: int,
                   resamples: int) -> dict[str, dict]:
    """Paired comparison per section and overall, over the samples both runs share."""
    shared = {s: sorted(set(old[s]) & set(new[s])) for s in SECTION_NAMES}
    return paired_comparison(
        {s: [old[s][k] for k in keys] for s, keys in shared.items()},
        {s: [new[s][k] for k in keys] for s, keys in shared.items()},
        seed=seed, resamples=resamples,
    )


_PROVENANCE_FILES = "data_files"
_FILES_LISTED = 10


def _show(value: object) -> str:
    return "(not recorded)" if value is None else str(value)


def provenance_differences(a: dict | None, b: dict | None, names: tuple[str, str] = ("the baseline", "this run"),
                           ) -> list[str]:
    """What differs between two runs' ``provenance`` records, one human line each (a before b).

    Keys missing on one side show as "(not recorded)"; data files are compared by their digests.
    """
    if not a and not b:
        return []
    for record, name in ((a, names[0]), (b, names[1])):
        if not record:
            return [f"no provenance recorded in {name}; cannot tell what else differs"]
    assert a is not None and b is not None
    lines = []
    for key in sorted(set(a) | set(b)):
        if key == _PROVENANCE_FILES:
            continue
        old, new = a.get(key), b.get(key)
        if old != new:
            lines.append(f"{key}: {_show(old)} -> {_show(new)}")
    old_files, new_files = a.get(_PROVENANCE_FILES) or {}, b.get(_PROVENANCE_FILES) or {}
    changed = [f"data file {path} changed" for path in sorted(set(old_files) & set(new_files))
               if old_files[path] != new_files[path]]
    if len(changed) > _FILES_LISTED:
        changed = changed[:_FILES_LISTED] + [f"... and {len(changed) - _FILES_LISTED} more data files changed"]
    # A file read by one run only is usually a selection (-m, -k) or a missing file, not a change:
    # one line per side, not one per file.
    for only, name in ((set(old_files) - set(new_files), names[0]), (set(new_files) - set(old_files), names[1])):
        if only:
            example = min(only)
            more = f" and {len(only) - 1} more" if len(only) > 1 else ""
            changed.append(f"data files read only by {name}: {example}{more}")
    return lines + changed


def compare_with_baseline(
    summary: Mapping[str, Any], baseline: Mapping[str, Any], goal_of: dict[str, str], *, max_drop: float, alpha: float,
    seed: int, resamples: int, allow_empty: bool = False,
) -> tuple[list[GateResult], dict]:
    """Gate rows for overall and each section, and a JSON-ready account of the comparison.

    A metric that one run has samples for but the two runs share none of compared nothing: it
    fails unless ``allow_empty`` (then it is not evaluated). A section neither run has is not
    evaluated either way: there was nothing to compare on either side.
    """
    old = outcomes_by_section(baseline["outcomes"], goal_of)
    new = outcomes_by_section(summary["outcomes"], goal_of)
    comparison = compare_shared(old, new, seed=seed, resamples=resamples)
    shared = sum(comparison[s]["shared"] for s in SECTION_NAMES if s in comparison)
    only_old = sum(len(set(old[s]) - set(new[s])) for s in SECTION_NAMES)
    only_new = sum(len(set(new[s]) - set(old[s])) for s in SECTION_NAMES)
    notes = [
        f"provenance: {line}"
        for line in provenance_differences(baseline.get("provenance"), summary.get("provenance"))
    ]
    if baseline.get("dataset") != summary.get("dataset"):
        notes.append(f"baseline ran on dataset {baseline.get('dataset')!r}, this run on {summary.get('dataset')!r}")
    if not shared:
        notes.append(
            f"no samples shared with the baseline: nothing was compared "
            f"({only_old} samples only in the baseline, {only_new} only in this run)"
        )
    elif only_old or only_new:
        notes.append(
            f"compared on the {shared} samples both runs share; "
            f"{only_old} only in the baseline, {only_new} only in this run"
        )
    rows = []
    for metric in ("overall", *SECTION_NAMES):
        entry = comparison.get(metric)
        if entry is None:
            sections = SECTION_NAMES if metric == "overall" else (metric,)
            in_old = sum(len(old[s]) for s in sections)
            in_new = sum(len(new[s]) for s in sections)
            if not in_old and not in_new:
                rows.append(GateResult(metric, None, "baseline -", None, NOT_EVALUATED, "no samples in either run"))
                continue
            detail = (f"no samples shared with the baseline ({in_old} in the baseline, {in_new} in this run): "
                      "nothing was compared")
            if not allow_empty:
                detail += "; --rmb-gate-allow-empty accepts that"
            rows.append(GateResult(metric, None, "baseline -", None, NOT_EVALUATED if allow_empty else FAIL, detail))
            continue
        dropped = -entry["delta"] > max_drop
        significant = entry["p_drop"] < alpha
        status = FAIL if dropped and significant else PASS
        detail = (
            f"delta {entry['delta']:+.4f} (95% CI {entry['ci95'][0]:+.4f} to {entry['ci95'][1]:+.4f}), "
            f"p={entry['p_drop']:.3f}, n={entry['shared']}: lost {entry['lost']}, gained {entry['gained']}"
        )
        if dropped and not significant:
            detail += f"; drop not significant at alpha={alpha:g}"
        reference = f"baseline {entry['baseline']:.4f}"
        rows.append(GateResult(metric, entry["current"], reference, entry["ci95"], status, detail))
    account = {
        "model": baseline.get("model"),
        "dataset": baseline.get("dataset"),
        "max_drop": max_drop,
        "alpha": alpha,
        "sections": comparison,
        "only_in_baseline": only_old,
        "only_in_this_run": only_new,
        "notes": notes,
    }
    return rows, account


COMPLETE = "complete"


def completeness_gate(summary: Mapping[str, Any]) -> GateResult:
    """--rmb-require-complete: every selected scenario and kind had its data file, or the run fails
    with the files named (a release figure must stand on the whole benchmark, not on part of it)."""
    reference = "all data files"
    files = sorted({entry["file"] for entry in summary["missing"]})
    if not files:
        return GateResult(COMPLETE, None, reference, None, PASS)
    shown = ", ".join(files[:_FILES_LISTED])
    if len(files) > _FILES_LISTED:
        shown += f" and {len(files) - _FILES_LISTED} more (listed under 'missing' in --rmb-json)"
    return GateResult(COMPLETE, None, reference, None, FAIL,
                      f"{len(files)} data file(s) missing or empty: {shown}")


def not_evaluated_when_partial(rows: list[GateResult], summary: Mapping[str, Any]) -> list[GateResult]:
    """A partial run's gates are neither passed nor failed: its numbers cover only the items that
    ran before it stopped, so no bar or baseline can be judged on them."""
    if not summary["partial"]:
        return rows
    detail = f"{partial_account(summary)}; a partial run's gates are not evaluated"
    return [GateResult(row.metric, row.value, row.reference, row.interval, NOT_EVALUATED, detail) for row in rows]


def evaluate(summary: Mapping[str, Any], settings, goal_of: dict[str, str]) -> tuple[list[GateResult], dict | None]:
    """Every gate of the run: thresholds first, then the baseline comparison if one was given, then
    the data's completeness if required."""
    rows = evaluate_thresholds(list(settings.gates), summary, settings.allow_empty_gates)
    account = None
    if settings.baseline is not None:
        baseline_rows, account = compare_with_baseline(
            summary, settings.baseline, goal_of, max_drop=settings.max_drop, alpha=settings.alpha,
            seed=settings.model.seed, resamples=settings.bootstrap, allow_empty=settings.allow_empty_gates,
        )
        rows.extend(baseline_rows)
    if settings.require_complete:
        rows.append(completeness_gate(summary))
    return rows, account
