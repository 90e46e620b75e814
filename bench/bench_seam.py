"""The seam's overhead: the whole RMB benchmark with the `length` baseline on this tree against the
same run on an earlier revision of pytest-rmb, alternating, side by side in one run.

    python bench/bench_seam.py [--before ceb3a36] [--data ../shared/data/RMB_dataset] [--runs 5]

The earlier revision is exported with `git archive` into a temporary folder and put first on
PYTHONPATH, so the installed entry point imports its `pytest_rmb` instead of this tree's. Target
(issue "One seam for every kind of reward model"): this tree within 5% of the earlier one. Prints
both medians, the ratio of medians and the median of the paired ratios, and checks that both runs
report the same four sections.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "RMB_dataset"


def export_revision(revision: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", revision, "pytest_rmb", "scenarios"],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    # The scenario files ship as the package pytest_rmb.scenario_files (see pyproject.toml).
    (into / "scenarios").rename(into / "pytest_rmb" / "scenario_files")
    return into


def timed_run(pythonpath: str | None, data: Path, workdir: Path, summary: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rmb-model", "length",
               "--rmb-data", str(data), "--rmb-json", str(summary), "--rmb-show-misses", "0"]
    started = time.perf_counter()
    subprocess.run(command, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - started


def sections(summary: Path) -> dict:
    document = json.loads(summary.read_text())
    return {name: (entry["correct"], entry["total"]) for name, entry in document["sections"].items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="ceb3a36", help="the revision to compare with")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"no RMB data at {args.data}; pass --data", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        before = export_revision(args.before, tmp_path / "before")
        work = tmp_path / "work"
        work.mkdir()
        times: dict[str, list[float]] = {"before": [], "now": []}
        # One warm-up of each, then alternate so that drift in the machine's speed hits both.
        for _ in range(args.runs + 1):
            times["before"].append(timed_run(str(before), args.data, work, tmp_path / "before.json"))
            times["now"].append(timed_run(None, args.data, work, tmp_path / "now.json"))
        for key in times:
            times[key] = times[key][1:]
        same = sections(tmp_path / "before.json") == sections(tmp_path / "now.json")
    before_median, now_median = statistics.median(times["before"]), statistics.median(times["now"])
    paired = statistics.median(n / b for n, b in zip(times["now"], times["before"]))
    print(f"length baseline, whole RMB ({args.data}), {args.runs} alternating runs each")
    print(f"  {args.before}: median {before_median:.2f} s  runs {', '.join(f'{t:.2f}' for t in times['before'])}")
    print(f"  this tree: median {now_median:.2f} s  runs {', '.join(f'{t:.2f}' for t in times['now'])}")
    print(f"  ratio of medians {now_median / before_median:.3f}, median paired ratio {paired:.3f} (target <= 1.05)")
    print(f"  identical sections: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
