"""Harness overhead: the whole RMB benchmark with the `length` baseline against plain pytest running
the same number of trivial parametrized tests, side by side in one run.

    python bench/bench_harness.py [--data ../shared/data/RMB_dataset] [--runs 5]

Target (issue 2): median wall time of the RMB run <= 1.3x the plain run. Prints both medians, the
ratio of medians, the median of the paired ratios, and peak memory (max RSS) of each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "RMB_dataset"


def timed(command: list[str], cwd: Path) -> tuple[float, int, int]:
    """(wall seconds, peak RSS in KiB, exit code) of one process run to completion."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    return elapsed, usage.ru_maxrss, process.returncode


def count_items(data: Path, workdir: Path) -> int:
    summary = workdir / "count.json"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rmb-model", "length",
         "--rmb-data", str(data), "--rmb-json", str(summary)],
        cwd=workdir, stdout=subprocess.DEVNULL, check=True,
    )
    return json.loads(summary.read_text())["samples"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--runs", type=int, default=5)
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

    rmb_wall = [r[0][0] for r in rows]
    plain_wall = [r[1][0] for r in rows]
    paired = [a / b for a, b in zip(rmb_wall, plain_wall)]
    print(f"items: {items} (RMB samples scored with `length`; the plain run has as many trivial tests)")
    print(f"runs: {args.runs}, alternating")
    print(f"rmb   wall median {statistics.median(rmb_wall):6.2f} s  (min {min(rmb_wall):.2f}, max {max(rmb_wall):.2f})"
          f"  peak RSS {max(r[0][1] for r in rows) / 1024:.0f} MiB")
    print(f"plain wall median {statistics.median(plain_wall):6.2f} s  (min {min(plain_wall):.2f}, max {max(plain_wall):.2f})"
          f"  peak RSS {max(r[1][1] for r in rows) / 1024:.0f} MiB")
    print(f"ratio of medians rmb/plain: {statistics.median(rmb_wall) / statistics.median(plain_wall):.3f}"
          f"   median paired ratio: {statistics.median(paired):.3f}   (target <= 1.3)")
    exit_codes = {r[0][2] for r in rows} | {r[1][2] for r in rows}
    if exit_codes != {0}:
        print(f"warning: exit codes seen {sorted(exit_codes)}")


if __name__ == "__main__":
    main()
