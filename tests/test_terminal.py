"""What a user sees on a real terminal while a benchmark runs, and in a log while it waits.

Runs happen in a pseudo-terminal of the width a user has (80 and 150 columns) and are checked on the
screen a terminal emulator draws from their output (tests/terminal.py), not on the bytes: the live
display is transient, and only the screen says whether it left pytest's lines whole."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_rmb import progress
from tests.helpers import SHARED_DATA, SLOW_MODEL, FakeReporter
from tests.judge_stub import StubServer
from tests.terminal import run_on_screen

ROOT = Path(__file__).resolve().parents[1]



def environment(folder: Path, **extra: str) -> dict[str, str]:
    """This checkout's plugin first, the test's folder for a ``python:`` model, no colour settings
    from the caller (the terminal decides)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PY_COLORS", "FORCE_COLOR", "NO_COLOR", "PYTEST_ADDOPTS", "CI")}
    env.update(PYTHONPATH=os.pathsep.join([str(folder), str(ROOT)]), TERM="xterm-256color", **extra)
    return env


def modules_of(folder: Path, env: dict[str, str], args: list[str]) -> list[tuple[str, int]]:
    """Each module of the selection in run order with its number of items, read from
    ``--collect-only -q`` (node ids only: no progress display, no terminal)."""
    listed = subprocess.run([sys.executable, "-m", "pytest", *args, "--collect-only", "-q"], cwd=folder, env=env,
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stdout[-3000:] + listed.stderr[-3000:]
    ids = [line for line in listed.stdout.splitlines() if "::" in line]
    counts = Counter(node_id.split("::")[0] for node_id in ids)
    return [(module, counts[module]) for module in dict.fromkeys(node_id.split("::")[0] for node_id in ids)]


def expected_module_lines(modules: list[tuple[str, int]], columns: int) -> list[re.Pattern]:
    """The line pytest prints for each module without any live display: its name, one letter per
    item, and the share of all items done so far right-aligned to one column short of the width."""
    total = sum(count for _, count in modules)
    done = 0
    lines = []
    for module, count in modules:
        done += count
        percent = f"[{100 * done // total:3d}%]"
        lines.append(re.compile(rf"{re.escape(module)} \S{{{count}}} +{re.escape(percent)}"))
    return lines


def assert_module_block(lines: list[str], modules: list[tuple[str, int]], columns: int) -> None:
    """Between ``collected N items`` and the next ``===`` rule: a blank line, then exactly one line per
    module, each as wide as pytest makes it, and nothing else (no lone letters, no repeated name, no
    trace of the bar)."""
    start = next(i for i, line in enumerate(lines) if line.startswith("collected "))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("==="))
    block = lines[start + 1:end]
    wanted = expected_module_lines(modules, columns)
    assert block[0] == "" and len(block) == 1 + len(wanted), "\n".join(lines)
    for line, pattern in zip(block[1:], wanted):
        assert pattern.fullmatch(line), f"{line!r} is not {pattern.pattern!r}\n" + "\n".join(block)
        assert len(line) == columns - 1
    assert not [line for line in lines if line.startswith("rmb: scoring") or line.startswith("rmb: loading")]


@pytest.mark.parametrize("columns", [80, 150])
def test_the_quick_start_prints_one_line_per_scenario_on_a_terminal(tmp_path, columns):
    pytest.importorskip("pyte")
    env = environment(tmp_path)
    args = ["-p", "no:cacheprovider", "--rmb-model", "length", "--rmb-data", "sample"]
    modules = modules_of(tmp_path, env, args)
    assert len(modules) == 49  # every scenario has sample data
    screen = run_on_screen([sys.executable, "-m", "pytest", *args], cwd=tmp_path, env=env, columns=columns)
    assert screen.returncode == 0, "\n".join(screen.lines)
    assert b"rmb: scoring chat/discussion" in screen.output  # the bar was drawn, and then left no trace
    assert_module_block(screen.lines, modules, columns)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="no shared RMB copy")
def test_the_full_data_prints_each_module_once_at_80_columns(tmp_path):
    # Thousands of items a module: pytest wraps each module's letters over several lines itself,
    # each ending in its percentage; the module's name must still appear exactly once.
    pytest.importorskip("pyte")
    env = environment(tmp_path)
    # --rootdir: the folder the run starts in, as a project's own configuration file would make it
    # (without one, pytest takes the data folder for the rootdir and prints long relative paths).
    args = ["-p", "no:cacheprovider", "--rootdir", str(tmp_path), "--rmb-model", "length",
            "--rmb-data", str(SHARED_DATA), "-m", "chat"]
    modules = modules_of(tmp_path, env, args)
    assert modules
    screen = run_on_screen([sys.executable, "-m", "pytest", *args], cwd=tmp_path, env=env, columns=80)
    assert screen.returncode == 0, "\n".join(screen.lines[-40:])
    start = next(i for i, line in enumerate(screen.lines) if line.startswith("collected "))
    end = next(i for i in range(start + 1, len(screen.lines)) if screen.lines[i].startswith("==="))
    block = screen.lines[start + 2:end]
    for module, count in modules:
        shown = [i for i, line in enumerate(block) if line.split(" ")[0] == module]
        assert len(shown) == 1, f"{module}: {shown}\n" + "\n".join(block)
    # Every line ends in its percentage, fills the width as pytest does, and the letters add up.
    assert all(re.search(r" \[ *\d+%\]$", line) and len(line) == 79 for line in block), "\n".join(block)
    letters = 0
    for line in block:
        shown = line.rsplit(" [", 1)[0]
        first, _, rest = shown.partition(" ")
        letters += len((rest if first in dict(modules) else shown).replace(" ", ""))
    assert letters == sum(count for _, count in modules)
    assert not [line for line in screen.lines if line.startswith("rmb: scoring")]


def test_a_slow_model_shows_its_bar_below_the_module_line_then_leaves_a_clean_screen(tmp_path):
    # One batch a scenario that takes 3 s: the bar stays up with nothing finished, and its elapsed
    # time must move on its own.
    pytest.importorskip("pyte")
    (tmp_path / "slow_model.py").write_text(SLOW_MODEL)
    env = environment(tmp_path, SLOW_SECONDS="3")
    args = ["-p", "no:cacheprovider", "--rmb-model", "python:slow_model:make", "--rmb-data", "sample",
            "--rmb-batch-size", "1000", "rmb/chat/discussion", "rmb/chat/casual_conversation"]
    modules = modules_of(tmp_path, env, args)
    assert [module for module, _ in modules] == ["rmb/chat/casual_conversation", "rmb/chat/discussion"]

    def bar_shown(lines: list[str]) -> bool:
        return any(line.startswith("rmb: scoring ") for line in lines)

    screen = run_on_screen([sys.executable, "-m", "pytest", *args], cwd=tmp_path, env=env, columns=80,
                           watch=bar_shown)
    assert screen.returncode == 0, "\n".join(screen.lines)
    assert_module_block(screen.lines, modules, 80)
    # While it scored, the bar had a line of its own under pytest's module line, which stayed whole.
    elapsed: dict[str, set[str]] = {"chat/casual_conversation": set(), "chat/discussion": set()}
    for lines in screen.seen:
        at = next(i for i, line in enumerate(lines) if line.startswith("rmb: scoring "))
        scenario = lines[at].split()[2]
        assert lines[at - 1] == f"rmb/{scenario}", "\n".join(lines)
        counted = re.search(r" 0/(\d+) texts (\d+:\d\d:\d\d) ", lines[at])
        if counted:
            elapsed[scenario].add(counted.group(2))
    # Nothing finished for 3 s, yet the time shown went on: at least 0:00:00, 0:00:01 and 0:00:02.
    for scenario, times in elapsed.items():
        assert {"0:00:00", "0:00:01", "0:00:02"} <= times, (scenario, times)


def test_a_log_says_a_judge_is_still_working_while_its_requests_are_out(pytester, monkeypatch, tmp_path):
    # Two comparisons, both in flight at once for 4 s: no result arrives to move the progress, yet
    # the log gets a line on the clock, with the time so far (FIRST_LINE_AFTER and LINE_EVERY made
    # short so that a few seconds of waiting show it).
    monkeypatch.setattr(progress, "FIRST_LINE_AFTER", 1.0)
    monkeypatch.setattr(progress, "LINE_EVERY", 1.0)
    rows = [{"id": f"q{i}", "prompt": f"Question {i}?", "chosen": f"A full answer to question {i}.",
             "rejected": "No."} for i in range(2)]
    (pytester.path / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (pytester.path / "sets.toml").write_text('[[scenario]]\nname = "q"\nkind = "pairwise"\npath = "pairs.jsonl"\n')
    with StubServer(tmp_path, "longer", "--latency", "4") as stub:
        result = pytester.runpytest("-p", "no:cacheprovider", "--rmb-model", "openai:stub-judge",
                                    "--rmb-model-arg", f"base_url={stub.base_url}", "--rmb-scenarios", "sets.toml",
                                    "--rmb-model-arg", "concurrency=2", "--rmb-model-arg", "order=fixed")
        asked = stub.requests()
    printed = result.stdout.str()
    assert result.ret == 0, printed
    assert len(asked) == 2
    # (A backend's detail, when it sends one with its ticks, follows after a comma.)
    still = re.findall(r"^rmb: still scoring custom/q: 0/2 comparisons \(0%\) after (\d+) s, "
                       r"none finished yet(?:, .+)?$", printed, re.M)
    # Lines from about 1 s on, a second or more apart, all before the first verdict (0/2).
    assert len(still) >= 2, printed
    seconds = [int(after) for after in still]
    assert seconds == sorted(set(seconds)) and seconds[0] >= 1
    # The judge's ticks say what the quiet wait is waiting on: both requests out, none answered.
    assert re.search(r"^rmb: still scoring custom/q: 0/2 comparisons .*, 0/2 requests, .*, 2 in flight$",
                     printed, re.M), printed
    closing = re.search(r"^rmb: scored custom/q: 2/2 comparisons in ([\d.]+) s", printed, re.M)
    assert closing and float(closing.group(1)) >= 4.0, printed
    assert printed.index("rmb: still scoring") < closing.start()


def wait_for(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_line_progress_writes_on_the_clock_while_nothing_finishes(monkeypatch):
    # The clock the lines report is moved by hand; the watching thread looks every 20 ms of real
    # time and writes once the work has been quiet for 50 ms.
    monkeypatch.setattr(progress, "LOOK_EVERY", 0.02)
    monkeypatch.setattr(progress, "QUIET_AFTER", 0.05)
    reporter = FakeReporter()
    plugins = {"terminalreporter": reporter, "capturemanager": None}
    config = SimpleNamespace(pluginmanager=SimpleNamespace(getplugin=plugins.get))
    now = [0.0]
    line_progress = progress.LineProgress(config, clock=lambda: now[0])  # type: ignore[arg-type]
    with line_progress.scoring("code/sql", 100, "texts") as advance:
        now[0] = 1.0
        advance(5)  # before the first line is due: quiet
        now[0] = 2.5
        wait_for(lambda: len(reporter.lines) == 1)
        now[0] = 7.0
        time.sleep(0.2)  # not due again before 12.5
        now[0] = 13.0
        wait_for(lambda: len(reporter.lines) == 2)
        now[0] = 14.0
        advance(95)
    assert reporter.lines == [
        "rmb: scoring code/sql 5/100 texts (5%), 2.0 texts/s",  # 5 done in 2.5 s
        "rmb: still scoring code/sql: 5/100 texts (5%) after 13 s, none finished in the last 12 s",  # since 1.0
        "rmb: scored code/sql: 100/100 texts in 14.0 s, 7.1 texts/s",  # 100 / 14
    ]


def test_a_log_keeps_each_module_line_whole_after_progress_lines(pytester, monkeypatch):
    # Not a terminal: progress comes as lines, which cut pytest's module line short. The module's
    # letters must then go on beside its name again, not alone on a line of their own.
    monkeypatch.setattr(progress, "FIRST_LINE_AFTER", 0.2)
    monkeypatch.setenv("SLOW_SECONDS", "0.5")
    pytester.makepyfile(slow_model=SLOW_MODEL)
    monkeypatch.syspath_prepend(str(pytester.path))
    result = pytester.runpytest("-p", "no:cacheprovider", "--rmb-model", "python:slow_model:make", "--rmb-data",
                                "sample", "--rmb-batch-size", "100", "rmb/chat/discussion",
                                "rmb/chat/casual_conversation")
    assert result.ret == 0, result.stdout.str()
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if line.startswith("collected "))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("==="))
    block = [line.rstrip() for line in lines[start + 1:end]]
    # Each scenario has three items (five texts) in the sample: its name, its progress lines, then
    # its whole line.
    for module, share in (("rmb/chat/casual_conversation", " 50%"), ("rmb/chat/discussion", "100%")):
        scenario = module.removeprefix("rmb/")
        assert [line for line in block if line.startswith(module)] == [module, line_of(block, module)], block
        assert re.fullmatch(rf"{re.escape(module)} \S{{3}} +\[{share}\]", line_of(block, module)), block
        at, whole = block.index(module), block.index(line_of(block, module))
        assert whole > at + 1 and all(line.startswith("rmb: ") for line in block[at + 1:whole]), block
        assert block[whole - 1].startswith(f"rmb: scored {scenario}: 5/5 texts in "), block
    assert not [line for line in block if re.fullmatch(r"\S{1,3}", line)]  # no letters alone


def line_of(block: list[str], module: str) -> str:
    """The module's line with its letters (``rmb/chat/discussion ...  [ 50%]``)."""
    return next(line for line in block if line.startswith(module + " "))
