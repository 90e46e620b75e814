"""Progress while the model loads and while a scenario is scored, on the terminal pytest runs in.

- On an interactive terminal: a rich spinner while loading and a transient bar while scoring, with
  the elapsed time ticking even while nothing finishes. Either is drawn on the line below the one
  pytest is writing (``rmb/chat/discussion ..``) and, once erased, leaves the cursor where pytest
  left it: pytest's module line goes on as if nothing had been shown.
- Anywhere else (a CI log, a pipe): plain lines through pytest's terminal reporter, only for work
  that takes more than a couple of seconds, at most one every :data:`LINE_EVERY` seconds, with no
  carriage returns or escape codes, e.g.
  ``rmb: scoring chat/discussion 120/480 texts (25%), 3.1 texts/s``. A backend may add a detail
  (an HTTP judge: requests per second and tokens so far), shown after the count. Work that goes
  quiet (a judge waiting on slow requests) still gets a line every :data:`LINE_EVERY` seconds:
  ``rmb: still scoring custom/q: 0/2 comparisons (0%) after 40 s, none finished yet``.
- Nothing on pytest-xdist workers (their output never reaches the terminal) or with ``-qq``.

Scoring runs inside a test, where pytest captures output (on the file descriptors, by default):
whether the terminal is interactive is asked, and every write made, with capture suspended, so that
progress reaches the real terminal and never lands in a captured test's output.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import pytest
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# advance(finished, detail): that many more are done; detail, when given, replaces the last one.
Advance = Callable[..., None]

# Quiet for work shorter than this: a sample run stays a few lines long.
FIRST_LINE_AFTER = 2.0
# Then one line per this many seconds at most: a full benchmark stays readable in a CI log.
LINE_EVERY = 10.0
# A line falls due while results keep arriving: the next arrival writes it, with the new count.
# Only work quiet for this long gets its line from the clock instead.
QUIET_AFTER = 1.0
# How often the clock looks whether a quiet line is due.
LOOK_EVERY = 0.25


def _uncaptured(config: pytest.Config) -> AbstractContextManager:
    capture = config.pluginmanager.getplugin("capturemanager")
    return capture.global_and_fixture_disabled() if capture is not None else nullcontext()


class TerminalProgress:
    def __init__(self, config: pytest.Config):
        self._config = config
        # Built under capture, where stderr is a file: rich would decide once and for all that it is
        # not a terminal (no colours, no live display). progress_for() has asked the real one.
        self._console = Console(file=sys.__stderr__, stderr=True, force_terminal=True, force_interactive=True)

    @contextmanager
    def _below_pytest_line(self) -> Iterator[None]:
        """Run a transient display on the line below pytest's current one, then put the cursor back
        at the end of pytest's line. pytest's writer knows nothing of what rich draws: its idea of the
        current line (the module's name and the letters so far) stays true, so the next ``.`` lands
        beside the others instead of on a line of its own after a repeated module name."""
        reporter = self._config.pluginmanager.getplugin("terminalreporter")
        writer = self._config.get_terminal_writer()
        reporter.flush()  # pytest's half-written line reaches the screen before rich draws below it
        width = writer.fullwidth
        self._console.width = width  # rich and pytest agree on where lines wrap
        column = writer.width_of_current_line
        stream = self._console.file
        if column:
            stream.write("\n")
            stream.flush()
        try:
            yield
        finally:
            # The erased display leaves the cursor at the start of its own line. A line that filled
            # the screen's width exactly is where pytest's next letter would wrap to: stay there.
            if column % width:
                stream.write(f"\x1b[1A\x1b[{column % width + 1}G")
                stream.flush()

    @contextmanager
    def loading(self, model: str) -> Iterator[None]:
        with _uncaptured(self._config), self._below_pytest_line():
            with self._console.status(f"rmb: loading {model}"):
                yield

    @contextmanager
    def scoring(self, scenario: str, total: int, unit: str = "texts") -> Iterator[Advance]:
        columns = (TextColumn("rmb: scoring {task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn(unit), TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[detail]}"))
        with _uncaptured(self._config), self._below_pytest_line():
            # Redrawn ten times a second by rich's own thread: the elapsed time moves while a slow
            # request holds the count still.
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
    at most one per :data:`LINE_EVERY` seconds, and a closing line for work that showed any.

    Lines are due on the clock, not only when results arrive: a thread looks every
    :data:`LOOK_EVERY` seconds and writes the due line itself once the work has been quiet for
    :data:`QUIET_AFTER` seconds, so a run waiting on slow requests still says it is alive."""

    def __init__(self, config: pytest.Config, clock: Callable[[], float] = time.monotonic):
        self._config = config
        self._reporter = config.pluginmanager.getplugin("terminalreporter")
        self._clock = clock
        # The clock's thread and the scoring thread both write; one line at a time.
        self._lock = threading.Lock()
        # The module whose line (``rmb/chat/discussion ``) a progress line cut short.
        self._cut: Path | None = None

    def _write(self, line: str) -> None:
        with _uncaptured(self._config):
            # pytest's reporter knows the module it is writing the line of (a stand-in may not).
            module = getattr(self._reporter, "currentfspath", None)
            if isinstance(module, Path):
                self._cut = module
            self._reporter.write_line(line)
            self._reporter.flush()

    def _resume(self) -> None:
        """After the work's last line, the cut module's name again, as pytest starts a module's
        line: its letters go on beside it instead of alone on a line of their own."""
        module, self._cut = self._cut, None
        if module is not None:
            with _uncaptured(self._config):
                self._reporter.write(os.path.relpath(module, self._reporter.startpath) + " ")
                self._reporter.currentfspath = module
                self._reporter.flush()

    @contextmanager
    def loading(self, model: str) -> Iterator[None]:
        started = self._clock()
        yield
        took = self._clock() - started
        if took >= FIRST_LINE_AFTER:
            self._write(f"rmb: loaded {model} in {took:.1f} s")
            self._resume()

    @contextmanager
    def scoring(self, scenario: str, total: int, unit: str = "texts") -> Iterator[Advance]:
        started = self._clock()
        done = 0
        last_line: float | None = None  # when the last line was written
        done_at_last_line = 0
        last_finished = started  # when a result last arrived
        # The same moment on the wall clock, which the watching thread sleeps by (the clock given
        # may be a test's, moved by hand).
        last_active = time.monotonic()
        latest = ""

        def rate(now: float) -> str:
            return f"{done / (now - started):.1f} {unit}/s" if now > started else f"- {unit}/s"

        def due(now: float) -> bool:
            return now - started >= FIRST_LINE_AFTER and (last_line is None or now - last_line >= LINE_EVERY)

        def write_progress(now: float) -> None:
            # Called with the lock held.
            nonlocal last_line, done_at_last_line
            percent = 100 * done // total if total else 100
            detail = f", {latest}" if latest else ""
            if done > done_at_last_line:
                self._write(f"rmb: scoring {scenario} {done}/{total} {unit} ({percent}%), {rate(now)}{detail}")
            else:
                quiet = f"in the last {now - last_finished:.0f} s" if done else "yet"
                self._write(f"rmb: still scoring {scenario}: {done}/{total} {unit} ({percent}%) after "
                            f"{now - started:.0f} s, none finished {quiet}{detail}")
            last_line, done_at_last_line = now, done

        def advance(count: int, detail: str | None = None) -> None:
            nonlocal done, latest, last_finished, last_active
            with self._lock:
                now = self._clock()
                done += count
                if count:
                    last_finished, last_active = now, time.monotonic()
                latest = latest if detail is None else detail
                if due(now):
                    write_progress(now)

        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(LOOK_EVERY):
                with self._lock:
                    now = self._clock()
                    if due(now) and time.monotonic() - last_active >= QUIET_AFTER:
                        try:
                            write_progress(now)
                        except Exception:  # noqa: BLE001 - a progress line is never worth a scoring error
                            return

        watcher = threading.Thread(target=watch, name=f"rmb progress {scenario}", daemon=True)
        watcher.start()
        try:
            try:
                yield advance
            finally:
                stop.set()
                watcher.join()
            if last_line is not None:
                now = self._clock()
                self._write(f"rmb: scored {scenario}: {done}/{total} {unit} in {now - started:.1f} s, {rate(now)}")
        finally:
            self._resume()  # also when scoring failed: pytest's E goes beside the module's name


class NoProgress:
    @contextmanager
    def loading(self, model: str) -> Iterator[None]:
        yield

    @contextmanager
    def scoring(self, scenario: str, total: int, unit: str = "texts") -> Iterator[Advance]:
        yield lambda done, detail=None: None


def progress_for(config: pytest.Config) -> TerminalProgress | LineProgress | NoProgress:
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if hasattr(config, "workerinput") or config.getoption("verbose", 0) < -1 or reporter is None:
        return NoProgress()
    # Asked with capture suspended: under capture the standard streams are files, never terminals.
    # Both must be the terminal: the display goes to stderr and finds its place from what pytest
    # wrote to stdout (``pytest > log`` with a terminal on stderr gets lines in the log instead).
    with _uncaptured(config):
        interactive = sys.__stderr__ is not None and sys.__stderr__.isatty() and bool(reporter.isatty())
    return TerminalProgress(config) if interactive else LineProgress(config)
