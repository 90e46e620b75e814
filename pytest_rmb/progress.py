"""Progress while the model loads and while a scenario is scored, on the terminal pytest runs in.

- On an interactive terminal: a rich spinner while loading and a transient bar while scoring.
- Anywhere else (a CI log, a pipe): plain lines through pytest's terminal reporter, only for work
  that takes more than a couple of seconds, at most one every :data:`LINE_EVERY` seconds, with no
  carriage returns or escape codes, e.g.
  ``rmb: scoring chat/discussion 120/480 texts (25%), 3.1 texts/s``. A backend may add a detail
  (an HTTP judge: requests per second and tokens so far), shown after the count.
- Nothing on pytest-xdist workers (their output never reaches the terminal) or with ``-qq``.

Scoring runs inside a test, where pytest captures output (on the file descriptors, by default):
whether the terminal is interactive is asked, and every write made, with capture suspended, so that
progress reaches the real terminal and never lands in a captured test's output.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import pytest
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

# advance(finished, detail): that many more are done; detail, when given, replaces the last one.
Advance = Callable[..., None]

# Quiet for work shorter than this: a sample run stays a few lines long.
FIRST_LINE_AFTER = 2.0
# Then one line per this many seconds at most: a full benchmark stays readable in a CI log.
LINE_EVERY = 10.0


def _uncaptured(config: pytest.Config) -> AbstractContextManager:
    capture = config.pluginmanager.getplugin("capturemanager")
    return capture.global_and_fixture_disabled() if capture is not None else nullcontext()


class TerminalProgress:
    def __init__(self, config: pytest.Config):
        self._config = config
        # Built under capture, where stderr is a file: rich would decide once and for all that it is
        # not a terminal (no colours, no live display). progress_for() has asked the real one.
        self._console = Console(file=sys.__stderr__, stderr=True, force_terminal=True, force_interactive=True)

    def _own_line(self) -> None:
        # A transient display erases the line it starts on: not pytest's half-written one.
        reporter = self._config.pluginmanager.getplugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()

    @contextmanager
    def loading(self, model: str) -> Iterator[None]:
        with _uncaptured(self._config):
            self._own_line()
            with self._console.status(f"rmb: loading {model}"):
                yield

    @contextmanager
    def scoring(self, scenario: str, total: int, unit: str = "texts") -> Iterator[Advance]:
        columns = (TextColumn("rmb: scoring {task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn(unit), TimeRemainingColumn(), TextColumn("{task.fields[detail]}"))
        with _uncaptured(self._config):
            self._own_line()
            with Progress(*columns, console=self._console, transient=True) as bar:
                task = bar.add_task(scenario, total=total, detail="")

                def advance(done: int, detail: str | None = None) -> None:
                    if detail is None:
                        bar.advance(task, done)
                    else:
                        bar.update(task, advance=done, detail=detail)

                yield advance


class LineProgress:
    """Plain progress lines for logs: the first after :data:`FIRST_LINE_AFTER` seconds of work, then
    at most one per :data:`LINE_EVERY` seconds, and a closing line for work that showed any."""

    def __init__(self, config: pytest.Config, clock: Callable[[], float] = time.monotonic):
        self._config = config
        self._reporter = config.pluginmanager.getplugin("terminalreporter")
        self._clock = clock

    def _write(self, line: str) -> None:
        with _uncaptured(self._config):
            self._reporter.write_line(line)
            self._reporter.flush()

    @contextmanager
    def loading(self, model: str) -> Iterator[None]:
        started = self._clock()
        yield
        took = self._clock() - started
        if took >= FIRST_LINE_AFTER:
            self._write(f"rmb: loaded {model} in {took:.1f} s")

    @contextmanager
    def scoring(self, scenario: str, total: int, unit: str = "texts") -> Iterator[Advance]:
        started = self._clock()
        done = 0
        last: float | None = None
        latest = ""

        def rate(now: float) -> str:
            return f"{done / (now - started):.1f} {unit}/s" if now > started else f"- {unit}/s"

        def advance(count: int, detail: str | None = None) -> None:
            nonlocal done, last, latest
            done += count
            latest = latest if detail is None else detail
            now = self._clock()
            if now - started < FIRST_LINE_AFTER or (last is not None and now - last < LINE_EVERY):
                return
            last = now
            percent = 100 * done // total if total else 100
            detail = f", {latest}" if latest else ""
            self._write(f"rmb: scoring {scenario} {done}/{total} {unit} ({percent}%), {rate(now)}{detail}")

        yield advance
        if last is not None:
            now = self._clock()
            self._write(f"rmb: scored {scenario}: {done}/{total} {unit} in {now - started:.1f} s, {rate(now)}")


class NoProgress:
    @contextmanager
    def loading(self, model: str) -> Iterator[None]:
        yield

    @contextmanager
    def scoring(self, scenario: str, total: int, unit: str = "texts") -> Iterator[Advance]:
        yield lambda done, detail=None: None


def progress_for(config: pytest.Config) -> TerminalProgress | LineProgress | NoProgress:
    if (hasattr(config, "workerinput") or config.getoption("verbose", 0) < -1
            or config.pluginmanager.getplugin("terminalreporter") is None):
        return NoProgress()
    # Asked with capture suspended: under capture the standard streams are files, never terminals.
    with _uncaptured(config):
        interactive = sys.__stderr__ is not None and sys.__stderr__.isatty()
    return TerminalProgress(config) if interactive else LineProgress(config)
