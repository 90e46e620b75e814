"""One benchmark run, on every process of it: collection and the per-item hooks.

Like pytest-xdist's ``DSession``, :class:`RMBSession` exists only when there is a benchmark to run
(``--rmb-model``), so its hooks need no "is the plugin active?" guards and an idle pytest run pays
nothing. It owns the settings, the selection plan and the model and engine (through the session
fixtures), and it puts each item's result on the item's report (``wire``). What the reports become,
the summary, the files and the tables, is the controller's (controller.py), registered only on
the process that aggregates.
"""

from __future__ import annotations

import contextlib
import gc
import json
from pathlib import Path
from typing import Any

import pytest

from pytest_rmb import wire
from pytest_rmb.collection import ScenarioModule, item_identity, rmb_collectors, selection_plan
from pytest_rmb.data import BON, PAIRWISE, data_file
from pytest_rmb.inspect_input import explain_selection
from pytest_rmb.metrics import margin
from pytest_rmb.options import RunSettings, describe_dataset
from pytest_rmb.scenarios import Scenario, all_markers
from pytest_rmb.self_check import run_self_check
from pytest_rmb.state import OUTCOME
from pytest_rmb.user_sets import UserScenario, user_markers, user_sources
from pytest_rmb.wire import Message

_KIND_OF_TEST = {"test_pairwise": PAIRWISE, "test_bon": BON}


class RMBSession:
    def __init__(self, config: pytest.Config, settings: RunSettings):
        self.config = config
        self.settings = settings
        self.plan: dict = {}
        self.engine: Any = None
        self.model: Any = None
        # Why the model could not be loaded (set by the fixtures); the run then has no results.
        self.load_error: str | None = None
        self._load_error_sent = False
        self._model_info_unsent = False
        self._input_shown = not settings.show_input
        # This process's self-check, once its session finishes (an xdist worker sends it on).
        self.self_check: dict[str, Any] | None = None
        self.is_worker = hasattr(config, "workerinput")
        # JUnit XML wants the per-sample properties on each item; asked once, not per item.
        self.junit = bool(config.getoption("xmlpath", None))
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
        line = f"rmb: model {settings.model.model}"
        if settings.dataset is not None:
            line += f", data {describe_dataset(settings.dataset_label)}, {len(settings.scenarios) - own} scenarios"
            absent, wanted = absent_rmb_files(settings.scenarios, settings.dataset)
            if absent:
                # Before any number is shown: this folder cannot give the whole benchmark's figures.
                line += f"; INCOMPLETE DATA: {absent} of {wanted} data files missing"
        if own:
            line += f"{' +' if settings.dataset is not None else ','} {own} of your own from " + ", ".join(
                user_sources(settings.scenarios))
        lines = [line]
        if settings.cache_dir is not None and settings.backend.scheme != "baseline":
            # On the first screen: a rerun from anywhere reads this folder (the baselines, computed
            # on the spot, never use it).
            lines.append(f"rmb: score cache {settings.cache_dir} (pytest-rmb cache info)")
        if getattr(config.option, "dist", "no") == "loadgroup":
            lines.append("rmb: each scenario runs on one xdist worker (--dist loadgroup)")
        return lines

    @pytest.hookimpl(wrapper=True)
    def pytest_make_collect_report(self, collector: pytest.Collector):
        report = yield
        if isinstance(collector, pytest.Session) and report.passed:
            report.result.extend(rmb_collectors(collector, self.settings.scenarios, self.settings.dataset))
        return report

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Every scenario's test functions get one ``rmb_sample`` parameter per sample."""
        module = metafunc.definition.getparent(ScenarioModule)
        if module is None:
            return
        values, ids, marks = module.parameters(_KIND_OF_TEST[metafunc.function.__name__])
        if marks:
            values = [pytest.param(v, id=i, marks=marks) for v, i in zip(values, ids)]
            metafunc.parametrize("rmb_sample", values)
        else:
            metafunc.parametrize("rmb_sample", values, ids=ids)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.plan, missing = selection_plan(session.items)
        # Items and samples live until the session ends: keep the cyclic GC from walking them again
        # on every full collection (about 5% of a length-baseline run over the whole benchmark).
        gc.freeze()
        for item, missing_data in missing:
            wire.attach(item, Message.MISSING, missing_data.as_dict())

    # -- items ------------------------------------------------------------------------------

    def model_loaded(self, model) -> None:
        self.model = model
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
            wire.attach(report, Message.ITEM, identity)
        if call.when == "call":
            self._finish_call_report(item, report)
            if self._model_info_unsent:
                wire.attach(report, Message.MODEL_INFO, {"kind": self.model.kind, **self.model.describe()})
                self._model_info_unsent = False
            if not self._input_shown and self.model is not None:
                self._input_shown = True
                wire.attach(report, Message.SHOWN_INPUT,
                            explain_selection(self.model, self.plan, self.settings.show_input, self.engine))
        elif report.failed and (identity := item_identity(item)) is not None:
            wire.attach(report, Message.ITEM, identity)
        if report.failed and self.is_worker and self.load_error is not None and not self._load_error_sent:
            wire.attach(report, Message.LOAD_ERROR, self.load_error)
            self._load_error_sent = True
        return report

    def _finish_call_report(self, item: pytest.Item, report: pytest.TestReport) -> None:
        """Attach the item's record and any new engine counters; turn a miss into a compact failure."""
        if report.failed and (identity := item_identity(item)) is not None:
            wire.attach(report, Message.ITEM, identity)
        if self.engine is not None:
            delta = self.engine.take_unreported()
            if delta:
                wire.attach(report, Message.ENGINE, delta)
        outcome = item.stash.get(OUTCOME, None)
        if outcome is None:
            return
        record = outcome.record
        wire.attach(report, Message.RESULT, record)
        if self.junit:
            # JUnit XML takes properties from the item (its teardown report), one testcase per sample.
            properties = [("rmb.correct", str(record["correct"]).lower())]
            if "scores" in record:
                properties += [("rmb.scores", json.dumps(record["scores"])),
                               ("rmb.margin", f"{margin(record['scores']):.6g}")]
            item.user_properties.extend(properties)
        if not outcome.correct and report.passed:
            report.outcome = "failed"
            report.longrepr = outcome.miss

    def pytest_report_teststatus(self, report: pytest.TestReport):
        # A miss is a failed item (pass rate = accuracy) but not a broken test: its own category keeps
        # thousands of them out of pytest's failure listings (see the "RMB misses" section instead).
        if is_miss(report):
            return "missed", "m", "MISSED"
        return None

    # -- the end of the run -----------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        # First, so that the controller's summary has this process's self-check.
        if self.load_error is None and exitstatus != pytest.ExitCode.INTERRUPTED:
            self.self_check = run_self_check(self.engine, self.model, self.settings.self_check,
                                             self.settings.model.seed)
            if self.self_check is not None and self.is_worker:
                wire.send_at_finish(self.config, Message.SELF_CHECK, self.self_check)
        if self.model is not None:
            self.model.close()


def absent_rmb_files(scenarios: tuple[Scenario, ...], dataset: Path) -> tuple[int, int]:
    """(absent, wanted): how many of the data files RMB's scenarios name are not in the data folder."""
    wanted = [s.file(kind) for s in scenarios if not isinstance(s, UserScenario) for kind in s.kinds]
    return sum(data_file(dataset, relative) is None for relative in wanted), len(wanted)


def is_miss(report: pytest.TestReport) -> bool:
    """A call report of a sample the model got wrong."""
    if report.when != "call" or not report.failed:
        return False
    record = wire.find(report, Message.RESULT)
    return record is not None and not record["correct"]
