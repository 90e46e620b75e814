"""One benchmark run: the plugin object registered when ``--rmb-model`` is given.

Like pytest-xdist's ``DSession``, :class:`RMBSession` exists only when there is a benchmark to run,
so its hooks need no "is the plugin active?" guards and an idle pytest run pays nothing. It owns
the settings, the selection plan, the engine (through the session fixtures), the results heard
from the items, and the summary.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from pytest_rmb import __version__
from pytest_rmb.collection import item_identity, rmb_collectors, selection_plan
from pytest_rmb.gate import FAIL as GATE_FAIL
from pytest_rmb.gate import evaluate as evaluate_gates
from pytest_rmb.inspect_input import InputInspector
from pytest_rmb.models import PAIRWISE_MODEL
from pytest_rmb.options import RunSettings
from pytest_rmb.report import TableRenderer, write_json, write_jsonl, write_markdown
from pytest_rmb.results import (
    ITEM,
    MISSING,
    RunResults,
    finish_call_report,
    miss_record,
    properties,
    sorted_records,
    summary_document,
)
from pytest_rmb.scenarios import GOALS, all_markers
from pytest_rmb.self_check import SelfCheck, self_check_gates
from pytest_rmb.user_sets import UserScenario, user_markers, user_sources

MODEL_INFO = "rmb_model_info"
# A worker whose model failed to load says why on the report of the item that hit it: the
# controller loaded nothing and would otherwise not know the run is broken.
LOAD_ERROR = "rmb_load_error"
# Setting names that would hold a secret (api_key, token, x_secret; not max_tokens or api_key_env):
# never written into a summary, whatever a backend takes.
_SECRET_NAME = re.compile(r"(^|_)(key|token|secret|password|passwd|authorization|auth)$", re.I)


def public_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """Backend settings fit for a summary: secret-named ones left out, URLs without credentials."""
    from pytest_rmb.http import redact_url  # imports httpx: only when there are settings to show

    public = {}
    for name, value in args.items():
        if _SECRET_NAME.search(name):
            continue
        public[name] = _without_credentials(value, redact_url)
    return public


def _without_credentials(value: Any, redact_url) -> Any:
    """A setting's value with credentials out of every URL in it (base_url may be a list)."""
    if isinstance(value, str):
        return redact_url(value) if "://" in value else value
    if isinstance(value, (list, tuple)):
        return [_without_credentials(item, redact_url) for item in value]
    return value


class RMBSession:
    def __init__(self, config: pytest.Config, settings: RunSettings):
        self.config = config
        self.settings = settings
        self.results = RunResults()
        self.plan: dict = {}
        self.engine: Any = None
        self.model: Any = None
        # Why the model could not be loaded; the run then writes an error summary, no sections.
        self.load_error: str | None = None
        self._load_error_sent = False
        # The model's provenance, sent once with the next report of this process.
        self.model_info: dict | None = None
        self._model_info_unsent = False
        self.summary: dict | None = None
        self.records: list[dict] = []
        self.is_worker = hasattr(config, "workerinput")
        # JUnit XML wants the per-sample properties on each item; asked once, not per item.
        self.junit = bool(config.getoption("xmlpath", None))
        # The self-check and --rmb-show-input are plugins of their own that read this session.
        self.self_check = SelfCheck(self)
        config.pluginmanager.register(self.self_check, "rmb-self-check")
        if settings.show_input:
            config.pluginmanager.register(InputInspector(self, settings.show_input), "rmb-show-input")
        # Registered before collection, like RMB's (plugin.py), so that --strict-markers passes.
        for name, description in user_markers(settings.scenarios, all_markers()).items():
            config.addinivalue_line("markers", f"{name}: {description}")

    # -- collection -------------------------------------------------------------------------

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log):
        if config.getvalue("dist") == "loadgroup":
            from pytest_rmb.scheduling import ScenarioScheduling

            return ScenarioScheduling(config, log)
        return None

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        settings = self.settings
        own = sum(isinstance(s, UserScenario) for s in settings.scenarios)
        line = f"rmb: model {settings.scorer.model}"
        if settings.dataset is not None:
            line += f", data {settings.dataset_label}, {len(settings.scenarios) - own} scenarios"
        if own:
            line += f"{' +' if settings.dataset is not None else ','} {own} of your own from " + ", ".join(
                user_sources(settings.scenarios))
        lines = [line]
        if getattr(config.option, "dist", "no") == "loadgroup":
            lines.append("rmb: each scenario runs on one xdist worker (--dist loadgroup)")
        return lines

    @pytest.hookimpl(wrapper=True)
    def pytest_make_collect_report(self, collector: pytest.Collector):
        report = yield
        if isinstance(collector, pytest.Session) and report.passed:
            report.result.extend(rmb_collectors(collector, self.settings.scenarios, self.settings.dataset))
        return report

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.plan, missing = selection_plan(session.items)
        # Items and samples live until the session ends: keep the cyclic GC from walking them again
        # on every full collection (about 5% of a length-baseline run over the whole benchmark).
        gc.freeze()
        for item, missing_data in missing:
            item.user_properties.append((MISSING, missing_data.as_dict()))

    # -- items ------------------------------------------------------------------------------

    def model_loaded(self, model) -> None:
        self.model = model
        self.model_info = {"kind": model.kind, **model.describe()}
        self._model_info_unsent = True

    def announce(self, line: str) -> None:
        """A line on the terminal while tests run (their output is captured)."""
        reporter = self.config.pluginmanager.getplugin("terminalreporter")
        capture = self.config.pluginmanager.getplugin("capturemanager")
        if reporter is None:
            return
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            reporter.ensure_newline()
            reporter.write_line(line)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        report = yield
        if call.when == "setup" and self.is_worker and (identity := item_identity(item)) is not None:
            # A worker that dies mid-item sends no report for it; xdist's crash report then names
            # only the node id, which the controller looks up here instead of parsing it.
            report.user_properties.append((ITEM, identity))
        if call.when == "call":
            finish_call_report(item, report, self.engine, self.junit)
            if self._model_info_unsent:
                report.user_properties.append((MODEL_INFO, self.model_info))
                self._model_info_unsent = False
        elif report.failed:
            finish_call_report(item, report, None)
        if report.failed and self.is_worker and self.load_error is not None and not self._load_error_sent:
            report.user_properties.append((LOAD_ERROR, self.load_error))
            self._load_error_sent = True
        return report

    def pytest_report_teststatus(self, report: pytest.TestReport):
        # A miss is a failed item (pass rate = accuracy) but not a broken test: its own category keeps
        # thousands of them out of pytest's failure listings (see the "RMB misses" section instead).
        if miss_record(report) is not None:
            return "missed", "m", "MISSED"
        return None

    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if not self.is_worker:
            session.config.pluginmanager.register(_ResultListener(self), "rmb-results")

    # -- the end of the run -----------------------------------------------------------------

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.model is not None:
            self.model.close()
        if self.is_worker:
            return
        settings = self.settings
        if self.load_error is not None:
            self.summary = self._error_summary(self.load_error)
            self._write(session, json_only=True)
            # Under xdist the workers stopped (pytest.exit there would crash xdist): the run's
            # status is still the usage error a failed load is without them.
            session.exitstatus = pytest.ExitCode.USAGE_ERROR
            return
        results = self.results
        partial = exitstatus == pytest.ExitCode.INTERRUPTED
        records = self.records = sorted_records(results)
        summary = summary_document(results, records, settings, {s.id: s for s in settings.scenarios}, partial)
        summary["status"] = "partial" if partial else "ok"
        summary["provenance"] = self._provenance(records)
        if (self.model_info or {}).get("kind") == PAIRWISE_MODEL:
            from pytest_rmb.judging import judge_stats

            goal_of = {s.id: s.goal for s in settings.scenarios}
            summary["judge"] = judge_stats([{**r, "goal": goal_of.get(r["scenario"], "")} for r in records])
        # A user's scenario with a goal of its own stays out of the sections the baseline compares.
        in_sections = {s.id: s.goal for s in settings.scenarios if s.goal in GOALS}
        gates, baseline = evaluate_gates(summary, settings, in_sections)
        summary["self_check"] = self.self_check.summary()
        gates += self_check_gates(summary["self_check"], gated=bool(settings.gates) or settings.baseline is not None)
        summary["gates"] = [gate.as_dict() for gate in gates]
        summary["baseline"] = baseline
        self.summary = summary
        write_failed = self._write(session)
        # Misses are the measurement, not a malfunction: they alone never fail the run. Gates do.
        only_misses = exitstatus == pytest.ExitCode.TESTS_FAILED and results.other_failures == 0
        if exitstatus == pytest.ExitCode.OK or only_misses:
            failed = any(gate.status == GATE_FAIL for gate in gates)
            session.exitstatus = pytest.ExitCode.TESTS_FAILED if failed else pytest.ExitCode.OK
        if write_failed:
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR

    def _error_summary(self, reason: str) -> dict:
        return {"status": "error", "reason": reason, "model": self.settings.scorer.model,
                "dataset": self.settings.dataset_label, "pytest_rmb": __version__}

    def _write(self, session: pytest.Session, json_only: bool = False) -> list[str]:
        """Write the output files; a failure is reported, never raised, so the tables still print."""
        settings, summary = self.settings, self.summary
        assert summary is not None
        writers = [(settings.json_path, lambda path: write_json(path, summary))]
        if not json_only:
            writers += [
                (settings.jsonl_path, lambda path: write_jsonl(path, self.records)),
                (settings.markdown_path,
                 lambda path: write_markdown(path, summary, null_baseline=settings.null_baseline)),
            ]
        failures = []
        for path, write in writers:
            if path is None:
                continue
            try:
                write(path)
            except OSError as exc:
                failures.append(f"cannot write {path}: {exc.strerror or exc}")
        summary["write_errors"] = failures
        return failures

    def _provenance(self, records: list[dict]) -> dict:
        """What the numbers depend on: versions, model, settings, and the data files actually read."""
        settings = self.settings
        scorer = settings.scorer
        files: dict[str, str] = {}
        scenarios = {s.id: s for s in settings.scenarios}
        for scenario_id, kind in sorted({(r["scenario"], r["kind"]) for r in records}):
            scenario = scenarios[scenario_id]
            path, _ = scenario.locate(settings.dataset, kind)
            if path is not None:
                files[scenario.file(kind)] = _file_digest(path)
        return {
            "pytest_rmb": __version__,
            "model": scorer.model,
            "model_info": self.model_info or {},
            "model_args": public_args(scorer.args),
            "revision": scorer.revision,
            "dtype": scorer.dtype,
            "device": scorer.device,
            "max_length": scorer.max_length,
            "seed": scorer.seed,
            "limit": settings.limit,
            "data_files": files,
        }

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_terminal_summary(self, terminalreporter, config: pytest.Config):
        # The outermost wrapper prints after pytest's own failure listings and short summary, so the
        # RMB tables and then the gates table are the last things before the final stats line.
        yield
        summary = self.summary
        if summary is None or config.option.collectonly:
            return
        if summary["status"] == "error":
            terminalreporter.write_line(f"rmb: no results: {summary['reason']}", red=True, bold=True)
            if self.settings.json_path:
                terminalreporter.write_line(f"rmb: error summary written to {self.settings.json_path}")
            return
        settings = self.settings
        renderer = TableRenderer(terminalreporter, config.get_terminal_writer().fullwidth)
        renderer.render(
            summary,
            show_scenarios=settings.show_scenarios,
            misses=self.results.misses,
            misses_shown=settings.show_misses,
            null_baseline=settings.null_baseline,
        )
        renderer.render_self_check(summary.get("self_check"))
        for label, path in (("summary", settings.json_path), ("per-sample results", settings.jsonl_path),
                            ("Markdown report", settings.markdown_path)):
            if path and not any(str(path) in failure for failure in summary["write_errors"]):
                terminalreporter.write_line(f"rmb: {label} written to {path}")
        for failure in summary["write_errors"]:
            terminalreporter.write_line(f"rmb: {failure}", red=True, bold=True)
        if summary["gates"]:
            renderer.render_gates(summary)


class _ResultListener:
    """Registered only on the process that aggregates, so workers pay nothing per report."""

    def __init__(self, session: RMBSession):
        results = session.results
        add = results.add

        def pytest_runtest_logreport(report: pytest.TestReport) -> None:
            add(report)
            if session.model_info is None:
                for name, value in properties(report):
                    if name == MODEL_INFO:
                        session.model_info = value
            if report.failed and session.load_error is None:
                for name, value in properties(report):
                    if name == LOAD_ERROR:
                        session.load_error = value

        self.pytest_runtest_logreport = pytest_runtest_logreport


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# The run's RMBSession in ``config.stash``, for the fixtures and items.
SESSION = pytest.StashKey[RMBSession]()
