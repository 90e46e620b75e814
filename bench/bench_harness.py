"""Harness overhead: the whole RMB benchmark with the `length` baseline against plain pytest running
the same number of trivial parametrized tests, side by side in one run.

    python bench/bench_harness.py [--data ../shared/data/RMB_dataset] [--runs 3]

Target (issue 22): CPU time of the RMB run <= 1.10x the plain run, best of three alternating runs.
CPU time (user + system of the pytest process) rather than wall time, because the machines these
benches run on are shared, and another process's load stretches wall time but not CPU time; the
best run rather than the median, because disturbance only ever adds time. Prints both CPU times,
their ratio, the wall times beside them, and peak memory (max RSS) of each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "RMB_dataset"


class Timing(NamedTuple):
    wall: float  # seconds
    peak_rss: int  # KiB
    exit_code: int
    cpu: float  # seconds, user + system


def timed(command: list[str], cwd: Path) -> Timing:
    """Wall time, peak RSS, exit code and CPU time of one process run to completion."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    return Timing(elapsed, usage.ru_maxrss, process.returncode, usage.ru_utime + usage.ru_stime)


def count_items(data: Path, workdir: Path) -> int:
    """How many items the RMB run has: samples scored plus items for missing or bad data."""
    summary = workdir / "count.json"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rmb-model", "length",
         "--rmb-data", str(data), "--rmb-json", str(summary)],
        cwd=workdir, stdout=subprocess.DEVNULL, check=True,
    )
    return json.loads(summary.read_text())["items"]["selected"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"no RMB data at {args.data}; pass --data PATH")

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        items = count_items(args.data, workdir)
        (workdir / "test_trivial.py").write_text(
            "import pytest\n\n"
            f"@pytest.mark.parametrize('i', range({items}))\n"
            "def test_trivial(i):\n    pass\n"
        )
        rmb = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "--rmb-model", "length", "--rmb-data", str(args.data)]
        plain = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_trivial.py"]
        timed(rmb, workdir), timed(plain, workdir)  # warm the file cache and .pyc files
        rows = []
        for _ in range(args.runs):
            # Alternate so that drift in machine speed hits both sides alike.
            rows.append((timed(rmb, workdir), timed(plain, workdir)))

    rmb_runs = [r[0] for r in rows]
    plain_runs = [r[1] for r in rows]
    rmb_cpu, plain_cpu = min(t.cpu for t in rmb_runs), min(t.cpu for t in plain_runs)
    print(f"items: {items} (every RMB item with `length`; the plain run has as many trivial tests)")
    print(f"runs: {args.runs} of each, alternating; best run shown")
    for name, runs in (("rmb  ", rmb_runs), ("plain", plain_runs)):
        print(f"{name} CPU {min(t.cpu for t in runs):6.2f} s  wall {min(t.wall for t in runs):6.2f} s"
              f"  peak RSS {max(t.peak_rss for t in runs) / 1024:.0f} MiB")
    print(f"CPU ratio rmb/plain: {rmb_cpu / plain_cpu:.3f}   (target <= 1.10)")
    print(f"wall ratio rmb/plain: {min(t.wall for t in rmb_runs) / min(t.wall for t in plain_runs):.3f}")
    exit_codes = {t.exit_code for t in rmb_runs + plain_runs}
    if exit_codes != {0}:
        print(f"warning: exit codes seen {sorted(exit_codes)}")


if __name__ == "__main__":
    main()
