"""A command run in a pseudo-terminal of a chosen size, and the screen a terminal would show for it.

The bytes a run writes say little about what a user sees: a transient display erases itself and
moves the cursor, and what matters is what is left on the screen. pyte (a VT100 emulator) replays
the output on a screen of the terminal's size; the lines that scrolled off the top are kept, so the
whole session reads as the user would scroll back through it.
"""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import termios
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass
class Screen:
    returncode: int
    lines: list[str]  # scrolled-off lines, then the screen's, right-stripped, trailing blanks dropped
    output: bytes  # everything the command wrote, as the terminal got it
    seen: list[list[str]] = field(default_factory=list)  # the screen after each read, for watch()


def run_on_screen(command: Sequence[str], *, cwd: Path, env: dict[str, str], columns: int, rows: int = 24,
                  timeout: float = 300, watch: Callable[[list[str]], bool] | None = None) -> Screen:
    """Run ``command`` with stdin, stdout and stderr on a pseudo-terminal of ``columns`` x ``rows``.

    ``watch(screen_lines)`` is asked after each read; the screens it returns True for are kept in
    :attr:`Screen.seen` (what the user saw while the run was going on)."""
    pyte = pytest.importorskip("pyte")
    env = {name: value for name, value in env.items() if name not in ("COLUMNS", "LINES")}  # the size decides
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    process = subprocess.Popen(list(command), cwd=cwd, env=env, stdin=follower, stdout=follower, stderr=follower,
                               start_new_session=True)
    os.close(follower)
    screen = pyte.HistoryScreen(columns, rows, history=100_000)
    stream = pyte.ByteStream(screen)
    chunks: list[bytes] = []
    seen: list[list[str]] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: every process on it has exited
                break
            if not chunk:
                break
            chunks.append(chunk)
            stream.feed(chunk)
            if watch is not None:
                shown = [line.rstrip() for line in screen.display]
                if watch(shown):
                    seen.append(shown)
        else:
            raise AssertionError(f"{command} still running after {timeout} s")
    finally:
        os.close(leader)
        if process.poll() is None:
            process.kill()
        returncode = process.wait(30)

    def text(line) -> str:
        return "".join(line[x].data for x in range(columns)).rstrip()

    lines = [text(line) for line in screen.history.top] + [line.rstrip() for line in screen.display]
    while lines and not lines[-1]:
        lines.pop()
    return Screen(returncode, lines, b"".join(chunks), seen)
