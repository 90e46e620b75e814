"""Served reward models: round-robin routing vs affinity routing, side by side in one run.

Starts stand-in replicas (tests/prefix_cache_server.py: vLLM's routes, an LRU prefix cache of
``--cache-tokens`` words per replica, prefill time per computed word held on one compute lock per
replica) and runs the real ``pytest --rmb-model vllm:...`` over the data once per routing, with
the score cache off, and prints per routing: the prompt tokens sent, the prefill tokens the
replicas computed, the split of texts over the replicas, wall time and texts per second, and the
ratios round-robin / affinity. A token here is a whitespace-separated word.

    python bench/bench_serving.py [--data /work/shared/data/RMB_dataset] [--replicas 2]
        [--cache-tokens 100000] [--seconds-per-token 0] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.prefix_cache_server import StandIn  # noqa: E402 - after the path is set

ROUTINGS = ("round-robin", "affinity")
SERVED_NAME = "bench-rm"


def run_once(replicas: list[StandIn], routing: str, data: str, workdir: Path) -> dict:
    for replica in replicas:
        replica.reset()
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--rmb-model", f"vllm:{SERVED_NAME}",
         "--rmb-data", data, "--rmb-no-cache", "--rmb-self-check", "0",
         "--rmb-model-arg", "base_url=" + ",".join(r.url for r in replicas),
         "--rmb-model-arg", f"routing={routing}", "--rmb-jsonl", str(workdir / f"{routing}.jsonl")],
        # This checkout's plugin, not another one installed in the environment.
        cwd=workdir, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if result.returncode not in (0, 1):
        sys.exit(f"pytest failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    stats = [replica.stats() for replica in replicas]
    return {"wall": wall, "prompt": sum(s["prompt_tokens"] for s in stats),
            "prefill": sum(s["prefill_tokens"] for s in stats), "texts": [s["texts"] for s in stats],
            "outcomes": (workdir / f"{routing}.jsonl").read_text(encoding="utf-8"),
            "summary": result.stdout.strip().splitlines()[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/shared/data/RMB_dataset", help="RMB_dataset folder or 'sample'")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--cache-tokens", type=int, default=100_000, help="prefix cache per replica, in words")
    parser.add_argument("--seconds-per-token", type=float, default=0.0, help="prefill time per computed word")
    parser.add_argument("--rounds", type=int, default=1, help="alternating runs of each routing; the best wall time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as scratch:
        workdir = Path(scratch)
        replicas = [StandIn(workdir / f"replica{i}", served_name=SERVED_NAME, cache_tokens=args.cache_tokens,
                            seconds_per_token=args.seconds_per_token) for i in range(args.replicas)]
        try:
            best: dict[str, dict] = {}
            for _ in range(args.rounds):
                for routing in ROUTINGS:
                    run = run_once(replicas, routing, args.data, workdir)
                    if routing not in best or run["wall"] < best[routing]["wall"]:
                        best[routing] = run
        finally:
            for replica in replicas:
                replica.stop()
    print(f"data {args.data}; {args.replicas} replicas; cache {args.cache_tokens} words each; "
          f"{args.seconds_per_token} s per computed word")
    print(f"{'routing':<12} {'prompt':>10} {'prefill':>10} {'hit rate':>8} {'texts per replica':>22} "
          f"{'wall s':>7} {'texts/s':>8}")
    for routing in ROUTINGS:
        run = best[routing]
        texts = sum(run["texts"])
        print(f"{routing:<12} {run['prompt']:>10} {run['prefill']:>10} {1 - run['prefill'] / run['prompt']:>8.1%} "
              f"{'/'.join(map(str, run['texts'])):>22} {run['wall']:>7.1f} {texts / run['wall']:>8.1f}")
    robin, affine = best["round-robin"], best["affinity"]
    print(f"prefill round-robin / affinity: {robin['prefill'] / affine['prefill']:.2f}x; "
          f"wall round-robin / affinity: {robin['wall'] / affine['wall']:.2f}x")
    print("outcomes identical:", robin["outcomes"] == affine["outcomes"], "|", affine["summary"])


if __name__ == "__main__":
    main()
