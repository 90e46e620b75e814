"""Progress on an interactive terminal: a spinner while the model loads, a bar while a scenario is
scored. Silent when output is not a terminal (CI logs, pytest-xdist workers, ``-q``)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import pytest
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class TerminalProgress:
    def __init__(self, config: pytest.Config):
        self._capture = config.pluginmanager.getplugin("capturemanager")
        self._console = Console(file=sys.__stderr__, stderr=True)

    def _uncaptured(self):
        # Fixtures and tests run with output captured; the bar must reach the real terminal.
        return self._capture.global_and_fixture_disabled() if self._capture else nullcontext()

    @contextmanager
    def loading(self, model: str) -> Iterator[None]:
        with self._uncaptured(), self._console.status(f"rmb: loading {model}"):
            yield

    @contextmanager
    def scoring(self, scenario: str, total: int) -> Iterator[Callable[[int], None]]:
        columns = (TextColumn("rmb: scoring {task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn())
        with self._uncaptured(), Progress(*columns, console=self._console, transient=True) as bar:
            task = bar.add_task(scenario, total=total)
            yield lambda done: bar.advance(task, done)


class NoProgress:
    @contextmanager
    def loading(self, model: str) -> Iterator[None]:
        yield

    @contextmanager
    def scoring(self, scenario: str, total: int) -> Iterator[Callable[[int], None]]:
        yield lambda done: None


def progress_for(config: pytest.Config) -> TerminalProgress | NoProgress:
    interactive = (
        sys.__stderr__ is not None
        and sys.__stderr__.isatty()
        and not hasattr(config, "workerinput")
        and config.getoption("verbose") >= 0
    )
    return TerminalProgress(config) if interactive else NoProgress()
