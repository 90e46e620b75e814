"""pytest hooks of pytest-rmb. Hooks and options only: the work is done in the modules they call."""

from __future__ import annotations

import gc
import os

import pytest

from pytest_rmb.collection import (
    ScenarioModule,
    matches_node_prefix,
    rmb_collectors,
    selection_plan,
    split_node_args,
)
from pytest_rmb.fixtures import rmb_engine, rmb_model  # noqa: F401 (registered as plugin fixtures)
from pytest_rmb.options import add_options, resolve
from pytest_rmb.gate import FAIL as GATE_FAIL
from pytest_rmb.gate import evaluate as evaluate_gates
from pytest_rmb.report import TableRenderer, write_json, write_jsonl, write_markdown
from pytest_rmb.results import MISSING, RunResults, finish_call_report, miss_record, sorted_records, summary_document
from pytest_rmb.scenarios import all_markers, join_spaced_words, registry
from pytest_rmb.state import ENGINE, NODE_PREFIXES, PLAN, RESULTS, SETTINGS, SUMMARY


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def _active(config: pytest.Config) -> bool:
    return SETTINGS in config.stash


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    for name, description in all_markers().items():
        config.addinivalue_line("markers", f"{name}: {description}")
    settings = resolve(config)
    if settings is None:
        return
    config.stash[SETTINGS] = settings
    config.stash[RESULTS] = RunResults()
    # Undoes the freeze in pytest_collection_finish; registered this early so that it runs after
    # pytest's own end-of-session collections (cleanups run last-in, first-out).
    config.add_cleanup(gc.unfreeze)
    if config.option.keyword:
        config.option.keyword = join_spaced_words(config.option.keyword)
    paths, prefixes = split_node_args(list(config.args))
    config.stash[NODE_PREFIXES] = prefixes
    # With --rmb-model the benchmark is the run: the user's own tests join only when named.
    config.args = paths if config.args_source == pytest.Config.ArgsSource.ARGS else []
    if _xdist_dist_unchosen(config):
        config.option.dist = "loadgroup"


def _xdist_dist_unchosen(config: pytest.Config) -> bool:
    """-n was given but --dist was not, so xdist would spread a scenario over workers."""
    if not getattr(config.option, "numprocesses", None) or config.option.dist != "load":
        return False
    given = [*config.invocation_params.args, *os.environ.get("PYTEST_ADDOPTS", "").split()]
    return not any(str(arg).startswith(("--dist", "-d")) for arg in given)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    if _active(config) and config.getvalue("dist") == "loadgroup":
        from pytest_rmb.scheduling import RMBGroupScheduling

        return RMBGroupScheduling(config, log)
    return None


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    if not _active(config):
        return None
    settings = config.stash[SETTINGS]
    lines = [f"rmb: model {settings.scorer.model}, data {settings.dataset_label}, {len(registry())} scenarios"]
    if getattr(config.option, "dist", "no") == "loadgroup":
        lines.append("rmb: each scenario runs on one xdist worker (--dist loadgroup)")
    return lines


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    report = yield
    config = collector.config
    if isinstance(collector, pytest.Session) and _active(config) and report.passed:
        report.result.extend(rmb_collectors(collector, registry(), config.stash[SETTINGS].dataset))
    return report


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    prefixes = config.stash.get(NODE_PREFIXES, ())
    if not prefixes:
        return
    kept, dropped = [], []
    for item in items:
        rmb_item = isinstance(item.parent, ScenarioModule)
        (kept if not rmb_item or matches_node_prefix(item, prefixes) else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_collection_finish(session: pytest.Session) -> None:
    if not _active(session.config):
        return
    plan, missing = selection_plan(session.items)
    session.config.stash[PLAN] = plan
    # Items and samples live until the session ends: keep the cyclic GC from walking them again
    # on every full collection (about 5% of a length-baseline run over the whole benchmark).
    gc.freeze()
    for item, missing_data in missing:
        item.user_properties.append(
            (MISSING, {"scenario": missing_data.scenario, "kind": missing_data.kind, "file": missing_data.file})
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if call.when == "call" and _active(item.config):
        finish_call_report(item, report, item.config.stash.get(ENGINE, None))
    return report


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config):
    # A miss is a failed item (pass rate = accuracy) but not a broken test: its own category keeps
    # thousands of them out of pytest's failure listings (see the "RMB misses" section instead).
    if _active(config) and miss_record(report) is not None:
        return "missed", "m", "MISSED"
    return None


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    if _active(config) and not _is_worker(config):
        config.pluginmanager.register(_ResultListener(config.stash[RESULTS]), "rmb-results")


class _ResultListener:
    """Registered only on the process that aggregates, so idle runs and workers pay nothing."""

    def __init__(self, results: RunResults):
        self.pytest_runtest_logreport = results.add


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if not _active(config) or _is_worker(config):
        return
    settings = config.stash[SETTINGS]
    results = config.stash[RESULTS]
    partial = exitstatus == pytest.ExitCode.INTERRUPTED
    records = sorted_records(results)
    summary = summary_document(results, records, settings, {s.id: s for s in registry()}, partial)
    gates, baseline = evaluate_gates(summary, settings, {s.id: s.goal for s in registry()})
    summary["gates"] = [gate.as_dict() for gate in gates]
    summary["baseline"] = baseline
    config.stash[SUMMARY] = summary
    if settings.json_path:
        write_json(settings.json_path, summary)
    if settings.jsonl_path:
        write_jsonl(settings.jsonl_path, records)
    if settings.markdown_path:
        write_markdown(settings.markdown_path, summary)
    # Misses are the measurement, not a malfunction: they alone never fail the run. Gates do.
    only_misses = exitstatus == pytest.ExitCode.TESTS_FAILED and results.other_failures == 0
    if exitstatus == pytest.ExitCode.OK or only_misses:
        failed = any(gate.status == GATE_FAIL for gate in gates)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED if failed else pytest.ExitCode.OK


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, config: pytest.Config):
    # The outermost wrapper prints after pytest's own failure listings and short summary, so the
    # RMB tables and then the gates table are the last things before the final stats line.
    yield
    summary = config.stash.get(SUMMARY, None)
    if summary is None or config.option.collectonly:
        return
    settings = config.stash[SETTINGS]
    renderer = TableRenderer(terminalreporter, config.get_terminal_writer().fullwidth)
    renderer.render(
        summary,
        show_scenarios=settings.show_scenarios,
        misses=config.stash[RESULTS].misses,
        misses_shown=settings.show_misses,
    )
    for label, path in (("summary", settings.json_path), ("per-sample results", settings.jsonl_path),
                        ("Markdown report", settings.markdown_path)):
        if path:
            terminalreporter.write_line(f"rmb: {label} written to {path}")
    if summary["gates"]:
        renderer.render_gates(summary)
