"""The process that aggregates: it hears every item's report, builds the run record, writes the
files, prints the tables and sets the exit status.

Registered only there (the single process, or pytest-xdist's controller), so workers pay nothing
per report. What it hears arrives the same way with or without xdist: on reports (``wire``) and,
from a finishing worker, in its ``workeroutput``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_rmb import wire
from pytest_rmb.collection import keyword_hint, marker_hint, run_markers
from pytest_rmb.engine import EngineStats
from pytest_rmb.gate import FAIL as GATE_FAIL
from pytest_rmb.gate import evaluate as evaluate_gates
from pytest_rmb.gate import not_evaluated_when_partial
from pytest_rmb.html_report import write_html
from pytest_rmb.inspect_input import input_key, print_shown_input
from pytest_rmb.models import PAIRWISE_MODEL
from pytest_rmb.nodeids import display_nodeid, scenario_and_kind
from pytest_rmb.options import RunSettings
from pytest_rmb.report import TableRenderer, write_jsonl, write_markdown
from pytest_rmb.scenarios import GOALS
from pytest_rmb.self_check import merge as merge_self_checks
from pytest_rmb.self_check import self_check_gates
from pytest_rmb.state import SESSION
from pytest_rmb.summary import (
    RunFacts,
    RunSummary,
    build_summary,
    error_summary,
    sorted_records,
    with_gates,
    write_summary,
)
from pytest_rmb.wire import Message


@dataclass
class RunResults:
    """What the controller has heard so far."""

    records: list[dict] = field(default_factory=list)
    engine: EngineStats = field(default_factory=EngineStats)
    missing: dict[tuple[str, str], dict] = field(default_factory=dict)
    errors: dict[tuple[str, str], dict] = field(default_factory=dict)
    misses: list[tuple[str, str]] = field(default_factory=list)
    other_failures: int = 0
    # Scenario and kind of every item a pytest-xdist worker started, by node id (see session.py).
    identities: dict[str, dict] = field(default_factory=dict)
    model_info: dict | None = None
    load_error: str | None = None
    shown_input: dict[tuple, dict] = field(default_factory=dict)
    # Items selected after deselection (None until collection finished) and items that ran to their
    # teardown: fewer of the second make the run partial, whatever stopped it.
    selected: int | None = None
    # How many of the selected items are RMB items (or the user's own sets'): none after -m is a typo
    # more often than a choice.
    rmb_selected: int | None = None
    ran: int = 0
    # Node ids of the items a pytest-xdist worker died in (xdist reports them with ``when`` "???").
    crashed: list[str] = field(default_factory=list)

    def add(self, report: pytest.TestReport) -> None:
        if report.when == "teardown":
            self.ran += 1
        elif report.when not in ("setup", "call"):
            self.crashed.append(report.nodeid)
        identity = result = None
        for message, value in wire.read(report):
            if message is Message.ITEM:
                identity = value
                if report.when == "setup":
                    self.identities[report.nodeid] = value
            elif message is Message.RESULT:
                result = value
                self.records.append(value)
            elif message is Message.ENGINE:
                self.engine.add(value)
            elif message is Message.MISSING:
                self.missing.setdefault((value["scenario"], value["kind"]), value)
            elif message is Message.MODEL_INFO:
                if self.model_info is None:
                    self.model_info = value
            elif message is Message.LOAD_ERROR:
                if self.load_error is None:
                    self.load_error = value
            elif message is Message.SHOWN_INPUT:
                for entry in value:
                    self.shown_input.setdefault(input_key(entry), entry)
        if not report.failed:
            return
        if report.when == "call" and result is not None and not result["correct"]:
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


class RunController:
    def __init__(self, config: pytest.Config, settings: RunSettings):
        self.config = config
        self.settings = settings
        self.results = RunResults()
        # Self-checks of the xdist workers that scored, as each finishes.
        self.self_checks: list[dict[str, Any]] = []
        self.summary: RunSummary | None = None
        self.records: list[dict] = []
        self.write_errors: list[str] = []
        # What a KeyboardInterrupt said, when one ended the run.
        self.interrupted = ""
        # Bound once: this hook runs for every report of the run.
        self.pytest_runtest_logreport = self.results.add

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        # A single process: its items after -k, -m and --deselect. Under xdist this process
        # collects nothing and hears the workers' collections instead (below).
        self._selected([item.nodeid for item in session.items])

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        # Every worker collects the same items (xdist checks it); a replaced worker collects again.
        if self.results.selected is None:
            self._selected(ids)

    def _selected(self, nodeids: list[str]) -> None:
        self.results.selected = len(nodeids)
        self.results.rmb_selected = sum(scenario_and_kind(nodeid) is not None for nodeid in nodeids)

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        # Ctrl-C, a model that raised KeyboardInterrupt, or xdist stopping its workers (-x, --maxfail
        # under -n raise its Interrupted, which names the reason).
        self.interrupted = str(excinfo.value) or f"interrupted: {excinfo.typename}"

    def stop_reason(self, session: pytest.Session, exitstatus: int) -> str | None:
        """Why the run stopped before every selected item ran; None when it ran them all."""
        results = self.results
        if self.config.option.collectonly:
            return None
        interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
        if not interrupted and results.ran >= (results.selected or 0):
            return None
        if self.interrupted:
            return self.interrupted
        for reason in (session.shouldfail, session.shouldstop):
            if isinstance(reason, str) and reason:
                return reason
        if results.crashed:
            return f"a pytest-xdist worker crashed while running {', '.join(results.crashed)}"
        return "interrupted" if interrupted else "stopped before every selected item ran"

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        result = wire.received_at_finish(node, Message.SELF_CHECK)
        if result:
            self.self_checks.append(result)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        settings, results = self.settings, self.results
        own = self.config.stash[SESSION]  # this process's side of the run: its load, its self-check
        load_error = own.load_error or results.load_error
        if load_error is not None:
            self.summary = self._publish(error_summary(settings, load_error))
            self._write(json_only=True)
            # Under xdist the workers stopped (pytest.exit there would crash xdist): the run's
            # status is still the usage error a failed load is without them.
            session.exitstatus = pytest.ExitCode.USAGE_ERROR
            return
        records = self.records = sorted_records(results.records)
        model_info = results.model_info or {}
        facts = RunFacts(
            records=records,
            engine=results.engine.as_dict(),
            missing=[results.missing[key] for key in sorted(results.missing)],
            errors=[results.errors[key] for key in sorted(results.errors)],
            misses=len(results.misses),
            items={"selected": results.selected or 0, "ran": results.ran},
            stop_reason=self.stop_reason(session, exitstatus),
            model_info=model_info,
            judge=self._judge_stats(records) if model_info.get("kind") == PAIRWISE_MODEL else None,
            self_check=merge_self_checks([*self.self_checks, *([own.self_check] if own.self_check else [])]),
        )
        summary = build_summary(settings, facts)
        # A user's scenario with a goal of its own stays out of the sections the baseline compares.
        in_sections = {s.id: s.goal for s in settings.scenarios if s.goal in GOALS}
        gates, baseline = evaluate_gates(summary, settings, in_sections)
        gates += self_check_gates(summary["self_check"], gated=bool(settings.gates) or settings.baseline is not None)
        gates = not_evaluated_when_partial(gates, summary)
        self.summary = self._publish(with_gates(summary, [gate.as_dict() for gate in gates], baseline))
        self._write()
        # Misses are the measurement, not a malfunction: they alone never fail the run. Gates do.
        only_misses = exitstatus == pytest.ExitCode.TESTS_FAILED and results.other_failures == 0
        if summary["partial"]:
            # Whatever stopped it (-x, --maxfail, a crashed worker), a partial run is status 2, never a
            # pass or a failed gate.
            if exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
                session.exitstatus = pytest.ExitCode.INTERRUPTED
        elif exitstatus == pytest.ExitCode.OK or only_misses:
            failed = any(gate.status == GATE_FAIL for gate in gates)
            session.exitstatus = pytest.ExitCode.TESTS_FAILED if failed else pytest.ExitCode.OK
        if self.write_errors:
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR

    def _judge_stats(self, records: list[dict]) -> dict[str, Any]:
        from pytest_rmb.metrics import judge_stats

        goal_of = {s.id: s.goal for s in self.settings.scenarios}
        return judge_stats([{**r, "goal": goal_of.get(r["scenario"], "")} for r in records])

    def _publish(self, summary: RunSummary) -> RunSummary:
        """The summary as the user's ``pytest_rmb_update_summary`` hooks leave it (a run id, a sha)."""
        self.config.hook.pytest_rmb_update_summary(config=self.config, summary=summary)
        return summary

    def _write(self, json_only: bool = False) -> None:
        """Write the output files; a failure is reported, never raised, so the tables still print."""
        settings, summary = self.settings, self.summary
        assert summary is not None
        writers = [(settings.json_path, lambda path: write_summary(path, summary))]
        if not json_only:
            writers += [
                (settings.jsonl_path, lambda path: write_jsonl(path, self.records)),
                (settings.markdown_path,
                 lambda path: write_markdown(path, summary, null_baseline=settings.null_baseline)),
                (settings.html_path,
                 lambda path: write_html(path, summary, self.records, settings.scenarios, settings.dataset)),
            ]
        for path, write in writers:
            if path is None:
                continue
            try:
                write(path)
            except OSError as exc:
                self.write_errors.append(f"cannot write {path}: {exc.strerror or exc}")

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_terminal_summary(self, terminalreporter, config: pytest.Config):
        # The outermost wrapper prints after pytest's own failure listings and short summary, so the
        # RMB tables and then the gates table are the last things before the final stats line.
        yield
        summary = self.summary
        if summary is None or config.option.collectonly:
            return
        print_shown_input(terminalreporter, self.results.shown_input.values())
        settings = self.settings
        if summary["status"] == "error":
            terminalreporter.write_line(f"rmb: no results: {summary.get('reason')}", red=True, bold=True)
            if settings.json_path:
                terminalreporter.write_line(f"rmb: error summary written to {settings.json_path}")
            return
        renderer = TableRenderer(terminalreporter, config.get_terminal_writer().fullwidth)
        if self.results.rmb_selected == 0 and config.option.markexpr:
            # An empty table would only hide the likely cause: a misspelt marker.
            registered = [line.split(":", 1)[0].split("(", 1)[0].strip() for line in config.getini("markers")]
            hint = marker_hint(config.option.markexpr, run_markers(settings.scenarios), registered,
                               keyword=config.option.keyword)
            for line in hint.splitlines():
                terminalreporter.write_line(line, yellow=True, bold=True)
        elif self.results.rmb_selected == 0 and config.option.keyword:
            for line in keyword_hint(config.option.keyword, settings.scenarios).splitlines():
                terminalreporter.write_line(line, yellow=True, bold=True)
        else:
            renderer.render(
                summary,
                show_scenarios=settings.show_scenarios,
                misses=self.results.misses,
                misses_shown=settings.show_misses,
                null_baseline=settings.null_baseline,
            )
            renderer.render_self_check(summary.get("self_check"))
        for label, path in (("summary", settings.json_path), ("per-sample results", settings.jsonl_path),
                            ("Markdown report", settings.markdown_path), ("HTML page", settings.html_path)):
            if path and not _failed(path, self.write_errors):
                terminalreporter.write_line(f"rmb: {label} written to {path}")
        for failure in self.write_errors:
            terminalreporter.write_line(f"rmb: {failure}", red=True, bold=True)
        if summary["gates"]:
            renderer.render_gates(summary)


def _failed(path: Path, write_errors: list[str]) -> bool:
    return any(str(path) in failure for failure in write_errors)
