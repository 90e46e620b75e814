"""The run record: the ``--rmb-json`` summary, typed and versioned, built, written and read here only.

The summary is a public contract. Users keep it for months as the baseline their CI compares
against, and the gate, ``pytest-rmb compare`` and every report read it. So its shape is declared
once, as the typed dictionaries below; the JSON Schema shipped in the package
(``summary.schema.json``) is generated from them (``json_schema()``), and a test holds the two
together. A change to the shape raises ``SCHEMA_VERSION``; :func:`read_summary` upgrades what an
older version wrote, names what it lacks, and refuses a newer version by name.

Version history:

- 1 (pytest-rmb up to 0.2): no ``schema_version``; scenario rows without ``task_name`` and ``source``.
- 2: ``schema_version``; every scenario row says its task's name and where the scenario is defined,
  so that a reader needs no scenario registry (a user's own sets compare like RMB's); an error
  summary has the same header as any other; model kinds are ``pointwise-model`` and
  ``pairwise-model`` (1 said ``pointwise`` and ``pairwise``, like the kinds of sample).
"""

from __future__ import annotations

import json
import re
import sys
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict, Union

from pytest_rmb.analysis import analyse
from pytest_rmb.data import file_digest, uid_sort_key
from pytest_rmb.metrics import outcome_key, summarize
from pytest_rmb.scenarios import Scenario
from pytest_rmb.user_sets import UserScenario
from pytest_rmb.version import __version__

SCHEMA_VERSION = 3
SCHEMA_FILE = "summary.schema.json"
# Where a scenario of RMB itself is defined (a user's scenario names its TOML files instead).
RMB_SOURCE = "rmb"

OK, PARTIAL, ERROR = "ok", "partial", "error"


# --- the shape ------------------------------------------------------------------------------------


class Accuracy(TypedDict):
    """Right and total samples of a group; with the length baseline when every sample has it."""

    correct: int
    total: int
    accuracy: Annotated[float | None, "correct / total; null when the group has no samples"]


class AccuracyWithNull(Accuracy, total=False):
    null_accuracy: Annotated[float, "the length baseline (longer answer wins) on the same samples"]
    beats_null: Annotated[bool, "the model is right on more of these samples than the length baseline"]


class Section(AccuracyWithNull):
    """One of the four headline sections (goal x kind): the micro average over its samples."""

    ci95: Annotated[list[float] | None, "95% percentile bootstrap interval of the accuracy"]
    macro: Annotated[float | None, "unweighted mean of the section's scenario accuracies"]


class TaskRow(TypedDict):
    name: Annotated[str, "the task's display name"]
    goal: str
    pairwise: AccuracyWithNull
    bon: AccuracyWithNull


class ScenarioRow(TypedDict):
    name: Annotated[str, "the scenario's display name"]
    task: Annotated[str, "the task id (a key of 'tasks')"]
    task_name: Annotated[str, "the task's display name"]
    goal: Annotated[str, "helpfulness, harmlessness, or a goal of the user's own sets"]
    source: Annotated[str | None, "'rmb', or the TOML file(s) of the user's own set; null before schema 2"]
    pairwise: AccuracyWithNull
    bon: AccuracyWithNull


class _MissingRequired(TypedDict):
    scenario: str
    kind: Literal["pairwise", "bon"]
    file: Annotated[str, "the data file as the scenario names it"]


class MissingEntry(_MissingRequired, total=False):
    """A data file of a selected scenario and kind that was absent or held no records."""

    problem: Annotated[str, "'empty' for a file without records, else what was found instead; absent: not found"]


class ErrorEntry(TypedDict):
    """Items of one scenario and kind that failed for a reason other than a miss."""

    scenario: str
    kind: str
    items: int
    message: Annotated[str, "the first item's failure, at most 20 lines"]


class GateRow(TypedDict):
    metric: Annotated[str, "overall, a section, task:<id>.<kind>, scenario:<id>.<kind>, self-check, or complete "
                           "(--rmb-require-complete)"]
    value: float | None
    reference: Annotated[str, "the bar ('>= 0.7') or the baseline's value ('baseline 0.7012')"]
    interval: Annotated[list[float] | None, "a value's 95% interval; for a baseline gate, the difference's"]
    status: Literal["PASS", "FAIL", "NOT EVALUATED"]
    detail: str


class Comparison(TypedDict):
    """A paired bootstrap of this run against the baseline on the samples both have."""

    baseline: float
    current: float
    delta: float
    ci95: list[float]
    p_drop: float
    p_gain: float
    shared: int
    lost: int
    gained: int


class BaselineAccount(TypedDict):
    model: Any
    dataset: Any
    max_drop: float
    alpha: float
    sections: dict[str, Comparison]
    only_in_baseline: int
    only_in_this_run: int
    notes: list[str]


class _SelfCheckRequired(TypedDict):
    checked: Annotated[int, "texts re-scored alone"]
    max_abs_diff: float
    max_scaled_diff: Annotated[float, "the largest difference relative to scores above 1"]
    tolerance: float
    ok: bool
    dtype: str
    worst: Annotated[dict[str, Any], "the text with the largest difference: batched and alone scores"]


class SelfCheckEntry(_SelfCheckRequired, total=False):
    error: Annotated[str, "why re-scoring alone stopped"]


class Provenance(TypedDict):
    """What the numbers depend on."""

    pytest_rmb: str
    model: str
    model_info: Annotated[dict[str, Any], "the model's kind and its own description (files, digests, dtype)"]
    model_args: Annotated[dict[str, Any], "--rmb-model-arg settings, without secrets or URL credentials"]
    revision: str | None
    dtype: str
    device: str
    max_length: int | None
    seed: int
    limit: int | None
    data_files: Annotated[dict[str, str], "sha256 of every data file read, by its path in the scenario"]


class PanelJudge(TypedDict):
    """One judge of a panel: how often it agrees with the panel's majority, and how it does alone."""

    judge: Annotated[str, "the judge's spec, with its place where two share one"]
    comparisons: int
    decided: Annotated[int, "comparisons where both this judge and the panel gave a verdict"]
    agree: int
    agreement: Annotated[float | None, "agree / decided"]
    pairwise_judged: int
    pairwise_correct: int
    accuracy: Annotated[float | None, "the judge alone on the pairwise samples it gave a verdict on"]


class _JudgeStatsRequired(TypedDict):
    overall: dict[str, Any]
    sections: dict[str, dict[str, Any]]
    scenarios: dict[str, dict[str, dict[str, Any]]]


class JudgeStats(_JudgeStatsRequired, total=False):
    """A pairwise model's (judge's) protocol figures: flips, first-position share, failures, replies cut off at
    the reply limit (cut_off, cut_offs_rescued), reasoning tokens; for a panel, each judge's agreement."""

    panel: Annotated[list[PanelJudge], "only for panel: models"]


class KindAccuracy(TypedDict):
    pairwise: Accuracy
    bon: Accuracy


class MarkdownBaseline(TypedDict):
    """The markdown rule (more headings, list items, bold and code wins; a tie is wrong) on the run's samples."""

    sections: dict[str, Accuracy]
    overall: Annotated[float | None, "unweighted mean of the sections that have samples"]
    tasks: dict[str, KindAccuracy]
    scenarios: dict[str, KindAccuracy]


class StyleDecomposition(TypedDict):
    """A logistic regression of the model's preferences on the label and the answers' style differences
    (pairwise samples where the model preferred one answer)."""

    pairs: int
    accuracy: Annotated[float, "share of those pairs where the model preferred the labelled answer"]
    style_controlled_accuracy: Annotated[float, "the fitted share with no difference in style"]
    style_share: Annotated[float | None, "1 - (style_controlled_accuracy - 0.5) / (accuracy - 0.5): how much of the "
                                         "agreement beyond a coin flip style explains; null when accuracy is not "
                                         "clearly above 0.5"]
    weights: Annotated[dict[str, float], "the fitted weight of each style difference (unit variance)"]


class GeneratorRow(TypedDict):
    samples: Annotated[int, "pairwise samples with this generator's answer against another generator's"]
    label_win_rate: float
    model_win_rate: float
    expected_win_rate: Annotated[float, "its win rate expected of a model as accurate as this one, mistakes "
                                        "falling anywhere"]
    label_strength: Annotated[float, "Bradley-Terry log strength under the labels"]
    model_strength: Annotated[float, "Bradley-Terry log strength under the model's preferences"]
    favoured: Annotated[bool, "its answers win under the model significantly more often than the model's accuracy "
                              "explains (Holm-corrected, 0.05), by 10% of its samples or more"]
    p_favoured: float


class GeneratorStats(TypedDict):
    samples: int
    generators: dict[str, GeneratorRow]
    spearman: Annotated[float | None, "between the generators' strengths under the labels and under the model"]
    kendall: Annotated[float | None, "tau-b, as spearman"]
    correction: str


class SectionTies(TypedDict):
    samples: int
    ties: Annotated[int, "samples whose chosen (best) answer ties the top score of the others"]
    tie_adjusted: Annotated[float, "a tie among k answers at the top counts 1/k, a win 1, a loss 0"]


class Ties(TypedDict):
    """Exact score ties of a pointwise model; RMB's strict accuracy counts each as a miss."""

    sections: dict[str, SectionTies]
    ties: int
    tie_adjusted: Annotated[float | None, "the mean of the sections' tie-adjusted accuracies"]


class Decile(TypedDict):
    samples: int
    smallest: Annotated[float, "the smallest |margin| (or |P(chosen) - 0.5|) in the decile"]
    largest: float
    accuracy: float


class Calibration(TypedDict):
    """How well P(chosen) (sigmoid of the margin, or the judge's) matches how often the model is right."""

    samples: Annotated[int, "pairwise samples with a P(chosen)"]
    source: Annotated[str, "sigmoid(margin) or p_chosen"]
    brier: Annotated[float, "mean of (1 - P(chosen))^2"]
    ece: Annotated[float, "expected calibration error over 10 equal-width confidence bins from 0.5 to 1"]
    deciles: Annotated[list[Decile], "accuracy by decile of |margin|, smallest first"]


class Analysis(TypedDict):
    """What the score means (the block after the tables); each part null where the records cannot say."""

    markdown_baseline: MarkdownBaseline | None
    style: StyleDecomposition | None
    generators: GeneratorStats | None
    ties: Ties | None
    calibration: Calibration | None


class ItemCounts(TypedDict):
    """Selected items (after -k, -m and --deselect; a missing data file is one item) and those that ran."""

    selected: int
    ran: Annotated[int, "items that ran to the end; fewer than selected makes the run partial"]


class _Header(TypedDict):
    schema_version: Annotated[int, "the version of this shape; see the version history"]
    status: Annotated[Literal["ok", "partial", "error"],
                      "partial: stopped before every selected item ran (-x, --maxfail, Ctrl-C, a crashed "
                      "worker), its gates not evaluated; error: no results (see reason)"]
    model: Annotated[str, "--rmb-model as given"]
    dataset: Annotated[str, "the data the run read: 'sample', a folder, or the user's own sets"]
    pytest_rmb: Annotated[str, "the version of pytest-rmb that wrote the summary"]


class RunSummary(_Header, total=False):
    """The ``--rmb-json`` document. Every key but the header's is present unless status is error.

    Keys added by a ``pytest_rmb_update_summary`` hook (a run id, a git sha) are kept as they are."""

    reason: Annotated[str, "status error only: why the run has no results"]
    limit: Annotated[int | None, "--rmb-limit: samples per scenario and kind; not the full benchmark"]
    seed: int
    sections: Annotated[dict[str, Section], "helpfulness.pairwise, helpfulness.bon, harmlessness.pairwise, "
                                            "harmlessness.bon"]
    overall: Annotated[float | None, "unweighted mean of the sections that have samples"]
    overall_ci95: list[float] | None
    overall_sections: Annotated[int, "how many of the four sections had samples"]
    overall_null: Annotated[float, "the length baseline's overall, where known for every section"]
    overall_beats_null: bool
    tasks: Annotated[dict[str, TaskRow], "by task id"]
    scenarios: Annotated[dict[str, ScenarioRow], "by scenario id (task/name)"]
    engine: Annotated[dict[str, float], "what the work cost: texts or comparisons now and from the cache, "
                                        "batches, seconds, backend counters"]
    missing: Annotated[list[MissingEntry], "the data files of the selected scenarios that were absent or empty"]
    complete: Annotated[bool | None,
                        "every selected scenario and kind had its data file ('missing' is empty); a run of some "
                        "scenarios (-m, -k) with all their files is complete, and so is an --rmb-limit run. "
                        "null: an older summary that did not list its missing files"]
    errors: list[ErrorEntry]
    partial: Annotated[bool, "the run stopped before every selected item ran: status partial"]
    items: Annotated[ItemCounts | None, "how many items were selected and ran; null before schema 3"]
    stop_reason: Annotated[str | None, "why a partial run stopped short; null when it did not, or before schema 3"]
    samples: Annotated[int, "samples with a result"]
    misses: Annotated[int, "samples the model got wrong"]
    outcomes: Annotated[dict[str, Literal[0, 1]], "per sample, keyed 'scenario|kind|uid': 1 right, 0 wrong"]
    provenance: Provenance
    judge: JudgeStats
    analysis: Annotated[Analysis, "absent before pytest-rmb 0.4"]
    self_check: SelfCheckEntry | None
    gates: list[GateRow]
    baseline: BaselineAccount | None


# Present in every summary with results (status ok or partial).
RESULT_KEYS = ("limit", "seed", "sections", "overall", "overall_ci95", "overall_sections", "tasks",
               "scenarios", "engine", "missing", "complete", "errors", "partial", "items", "stop_reason",
               "samples", "misses", "outcomes", "provenance", "self_check", "gates", "baseline")


# --- building -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunFacts:
    """What the controller gathered from the items: everything a summary is computed from."""

    records: list[dict]
    engine: dict[str, float]
    missing: list[dict]
    errors: list[dict]
    misses: int
    items: ItemCounts
    # Why the run stopped before every selected item ran; None: it ran them all.
    stop_reason: str | None
    model_info: dict[str, Any]
    judge: dict[str, Any] | None
    self_check: dict[str, Any] | None


def sorted_records(records: Iterable[dict]) -> list[dict]:
    """Per-sample records in a stable order, whatever order the workers finished in."""
    return sorted(records, key=lambda r: (r["scenario"], r["kind"], uid_sort_key(r["uid"])))


def build_summary(settings: Any, facts: RunFacts) -> RunSummary:
    """The summary of a run with results; gates are added by :func:`with_gates`."""
    scenarios = {s.id: s for s in settings.scenarios}
    records = facts.records
    partial = facts.stop_reason is not None
    metrics = summarize(records, scenarios, seed=settings.model.seed, resamples=settings.bootstrap)
    for scenario_id, row in metrics["scenarios"].items():
        scenario = scenarios[scenario_id]
        row["task_name"] = scenario.task
        row["source"] = scenario_source(scenario)
    summary: RunSummary = {
        **_header(settings, "partial" if partial else "ok"),
        # A --rmb-limit run scores a seeded subset: its numbers are not the benchmark's.
        "limit": settings.limit,
        "seed": settings.model.seed,
        "sections": metrics["sections"],
        "overall": metrics["overall"],
        "overall_ci95": metrics["overall_ci95"],
        "overall_sections": metrics["overall_sections"],
        "tasks": metrics["tasks"],
        "scenarios": metrics["scenarios"],
        "engine": facts.engine,
        "missing": typing.cast(list[MissingEntry], facts.missing),
        "complete": not facts.missing,
        "errors": typing.cast(list[ErrorEntry], facts.errors),
        "partial": partial,
        "items": facts.items,
        "stop_reason": facts.stop_reason,
        "samples": len(records),
        "misses": facts.misses,
        # Per-sample outcomes, so that a later run can use this file as its --rmb-baseline.
        "outcomes": {outcome_key(r): 1 if r["correct"] else 0 for r in records},
        "provenance": provenance(settings, records, facts.model_info),
        "self_check": typing.cast(SelfCheckEntry | None, facts.self_check),
        "gates": [],
        "baseline": None,
    }
    if "overall_null" in metrics:
        summary["overall_null"] = metrics["overall_null"]
        summary["overall_beats_null"] = metrics["overall_beats_null"]
    if facts.judge is not None:
        summary["judge"] = typing.cast(JudgeStats, facts.judge)
    summary["analysis"] = typing.cast(Analysis, analyse(records, scenarios))
    return summary


def partial_account(summary: Mapping[str, Any]) -> str:
    """How much of its selection a partial run covered, and what stopped it."""
    items, reason = summary.get("items"), summary.get("stop_reason")
    ran = f": {items['ran']} of {items['selected']} selected items ran" if items else ""
    return f"partial run{ran}" + (f" ({reason})" if reason else "")


def error_summary(settings: Any, reason: str) -> RunSummary:
    """The summary of a run without results: never one that a later gate could take for a good run."""
    summary: RunSummary = {**_header(settings, "error"), "reason": reason}
    return summary


def with_gates(summary: RunSummary, gates: Iterable[GateRow], baseline: Mapping | None) -> RunSummary:
    summary["gates"] = list(gates)
    summary["baseline"] = typing.cast(BaselineAccount | None, baseline)
    return summary


def _header(settings: Any, status: Literal["ok", "partial", "error"]) -> _Header:
    return {"schema_version": SCHEMA_VERSION, "status": status, "model": settings.model.model,
            "dataset": settings.dataset_label, "pytest_rmb": __version__}


def scenario_source(scenario: Scenario) -> str:
    if isinstance(scenario, UserScenario):
        return ", ".join(scenario.sources)
    return RMB_SOURCE


# Setting names that would hold a secret (api_key, token, x_secret; not max_tokens or api_key_env):
# never written into a summary, whatever a backend takes.
_SECRET_NAME = re.compile(r"(^|_)(key|token|secret|password|passwd|authorization|auth)$", re.I)


def public_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """Backend settings fit for a summary: secret-named ones left out, URLs without credentials."""
    from pytest_rmb.http import redact_url  # imports httpx: only when there are settings to show

    def without_credentials(value: Any) -> Any:
        if isinstance(value, str):
            return redact_url(value) if "://" in value else value
        if isinstance(value, (list, tuple)):
            return [without_credentials(item) for item in value]
        return value

    return {name: without_credentials(value) for name, value in args.items() if not _SECRET_NAME.search(name)}


def provenance(settings: Any, records: list[dict], model_info: Mapping[str, Any]) -> Provenance:
    """What the numbers depend on: versions, model, settings, and the data files actually read."""
    model = settings.model
    scenarios = {s.id: s for s in settings.scenarios}
    data_files: dict[str, str] = {}
    for scenario_id, kind in sorted({(r["scenario"], r["kind"]) for r in records}):
        scenario = scenarios[scenario_id]
        path, _ = scenario.locate(settings.dataset, kind)
        if path is not None:
            data_files[scenario.file(kind)] = file_digest(path)
    return {
        "pytest_rmb": __version__,
        "model": model.model,
        "model_info": dict(model_info),
        "model_args": public_args(model.args),
        "revision": model.revision,
        "dtype": model.dtype,
        "device": model.device,
        "max_length": model.max_length,
        "seed": model.seed,
        "limit": settings.limit,
        "data_files": data_files,
    }


# --- writing and reading --------------------------------------------------------------------------


def write_summary(path: Path, summary: RunSummary) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


class SummaryError(ValueError):
    """A file given as a --rmb-json summary that cannot be used as one; says why."""


def read_summary(path: Path, *, need_outcomes: bool) -> RunSummary:
    """A ``--rmb-json`` summary of this or an older schema version, upgraded to this one.

    Refused, with the reason: an unreadable file, invalid JSON, a run that failed (``status:
    error``), a newer schema version than this pytest-rmb reads, or a file that lacks what a
    summary with results has."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SummaryError(exc.strerror or str(exc)) from None
    except UnicodeDecodeError:
        raise SummaryError("not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise SummaryError(f"invalid JSON at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(document, dict):
        raise SummaryError("not a pytest-rmb --rmb-json summary (not a JSON object)")
    version = document.get("schema_version", 1)
    written_by = f"pytest-rmb {document.get('pytest_rmb', '(version not recorded)')}"
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SummaryError(f"not a pytest-rmb --rmb-json summary: schema_version {version!r} is not a version")
    if version > SCHEMA_VERSION:
        raise SummaryError(
            f"written by {written_by} with summary schema {version}; this pytest-rmb ({__version__}) reads "
            f"schemas 1 to {SCHEMA_VERSION}: upgrade pytest-rmb to read it")
    if document.get("status") == ERROR:
        reason = document.get("reason") or "no reason given"
        raise SummaryError(f"that run failed and has no results: {reason}")
    if "sections" not in document or (need_outcomes and "outcomes" not in document):
        wanted = " with per-sample outcomes (write one with --rmb-json from pytest-rmb 0.1 or later)"
        raise SummaryError("not a pytest-rmb --rmb-json summary" + (wanted if need_outcomes else ""))
    summary = upgrade(document, version)
    lacking = [key for key in ("sections", "overall", "tasks", "scenarios") if key not in summary]
    if lacking:
        raise SummaryError(f"a summary of schema {version} ({written_by}) without {', '.join(lacking)}")
    return summary


def upgrade(document: dict[str, Any], version: int) -> RunSummary:
    """An older summary in this version's shape; what it never recorded is null, not guessed."""
    document = dict(document)
    if version < 2:
        if "scenarios" in document:
            tasks = document.get("tasks") or {}
            document["scenarios"] = {
                scenario_id: {**row, "task_name": tasks.get(row.get("task"), {}).get("name", row.get("task")),
                              "source": None}
                for scenario_id, row in document["scenarios"].items()}
        document.setdefault("status", PARTIAL if document.get("partial") else OK)
        provenance = document.get("provenance")
        if isinstance(provenance, dict) and isinstance(provenance.get("model_info"), dict):
            model_info = provenance["model_info"]
            if model_info.get("kind") in ("pointwise", "pairwise"):
                # Schema 1 named model kinds like sample kinds.
                kind = f"{model_info['kind']}-model"
                document["provenance"] = {**provenance, "model_info": {**model_info, "kind": kind}}
        document.setdefault("model", None)
        document.setdefault("dataset", None)
        document.setdefault("pytest_rmb", None)
    if version < 3:
        # "complete" says what the list of missing files says; how many items ran was not counted.
        document["complete"] = not document["missing"] if isinstance(document.get("missing"), list) else None
        document.setdefault("items", None)
        document.setdefault("stop_reason", None)
    document["schema_version"] = SCHEMA_VERSION
    return typing.cast(RunSummary, document)


@dataclass(frozen=True)
class ScenarioRef:
    """A scenario as a summary describes it: all that metrics need to place its samples."""

    id: str
    goal: str
    task: str
    task_id: str
    name: str
    source: str | None


def scenario_refs(summaries: Iterable[Mapping[str, Any]]) -> dict[str, ScenarioRef]:
    """The scenarios of one or more summaries, from their own rows (the first summary wins a clash)."""
    refs: dict[str, ScenarioRef] = {}
    for summary in summaries:
        for scenario_id, row in (summary.get("scenarios") or {}).items():
            refs.setdefault(scenario_id, ScenarioRef(
                scenario_id, row["goal"], row.get("task_name") or row["task"], row["task"], row["name"],
                row.get("source")))
    return refs


# --- the JSON Schema ------------------------------------------------------------------------------


def json_schema() -> dict[str, Any]:
    """The JSON Schema of :class:`RunSummary`, generated from the typed dictionaries above."""
    definitions: dict[str, Any] = {}
    root = _object_schema(RunSummary, definitions, open_object=True)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://pytest-rmb.invalid/summary/{SCHEMA_VERSION}",
        "title": "pytest-rmb run summary (--rmb-json)",
        **root,
        "properties": {**root["properties"],
                       "schema_version": {**root["properties"]["schema_version"], "const": SCHEMA_VERSION}},
        "allOf": [{"if": {"properties": {"status": {"enum": [OK, PARTIAL]}}},
                   "then": {"required": list(RESULT_KEYS)}},
                  {"if": {"properties": {"status": {"const": ERROR}}}, "then": {"required": ["reason"]}}],
        "$defs": dict(sorted(definitions.items())),
    }


def shipped_schema() -> dict[str, Any]:
    """The schema file shipped in the package (equal to :func:`json_schema`; a test holds them together)."""
    return json.loads(files("pytest_rmb").joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))


def _object_schema(cls: type, definitions: dict[str, Any], open_object: bool = False) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    properties = {name: _type_schema(hint, definitions) for name, hint in hints.items()}
    schema: dict[str, Any] = {"type": "object"}
    doc = _own_doc(cls)
    if doc:
        schema["description"] = doc
    schema["properties"] = properties
    schema["required"] = sorted(getattr(cls, "__required_keys__", ()))
    schema["additionalProperties"] = open_object
    return schema


def _own_doc(cls: type) -> str:
    doc = cls.__dict__.get("__doc__") or ""
    return " ".join(doc.split())


def _type_schema(hint: Any, definitions: dict[str, Any]) -> dict[str, Any]:
    origin = typing.get_origin(hint)
    if origin is Annotated:
        inner, *notes = typing.get_args(hint)
        return {**_type_schema(inner, definitions), "description": " ".join(str(n) for n in notes)}
    if hint is Any:
        return {}
    if isinstance(hint, type) and typing.is_typeddict(hint):
        name = hint.__name__.lstrip("_")
        if name not in definitions:
            definitions[name] = {}  # a placeholder against recursion
            definitions[name] = _object_schema(hint, definitions)
        return {"$ref": f"#/$defs/{name}"}
    if origin in (Union, types.UnionType):
        options = [_type_schema(arg, definitions) for arg in typing.get_args(hint)]
        return {"anyOf": options}
    if origin is Literal:
        return {"enum": list(typing.get_args(hint))}
    if origin is list:
        (item,) = typing.get_args(hint)
        return {"type": "array", "items": _type_schema(item, definitions)}
    if origin is dict:
        key, value = typing.get_args(hint)
        return {"type": "object", "additionalProperties": _type_schema(value, definitions)}
    simple = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}
    if hint in simple:
        return {"type": simple[hint]}
    raise TypeError(f"no JSON Schema for {hint!r}")  # pragma: no cover - a new field of a new kind


def main(argv: list[str] | None = None) -> int:
    """``pytest-rmb schema``: print the summary's JSON Schema."""
    if argv:
        print("usage: pytest-rmb schema\n\nPrints the JSON Schema of the --rmb-json run summary "
              f"(schema version {SCHEMA_VERSION}).", file=sys.stdout if argv[0] in ("-h", "--help") else sys.stderr)
        return 0 if argv[0] in ("-h", "--help") else 2
    print(json.dumps(json_schema(), indent=2))
    return 0
