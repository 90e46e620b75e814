"""Listwise against pairwise judging: requests and wall time on the same data, side by side in one run.

    python bench/bench_listwise.py [--data ../shared/data/RMB_dataset] [--latency 0.02]
                                   [--concurrency 64] [--order both] [--goal GOAL] [--kind KIND]

Two stand-in judges that answer every request after ``--latency`` seconds (tests/list_stub.py and
tests/judge_stub.py, both naming the longer/longest answer): ``pytest --rmb-model openai:stub-judge``
over the selection with ``mode=listwise``, then the pairwise judge as it runs by default (Best-of-N
early stop) and with ``bon_early_stop=false`` (every comparison asked), each in its own process
with a fresh cache. Printed per run: requests the stand-in answered (counted from its own log),
wall time, the ideal (requests x latency / concurrency), and the sections; then the requests
expected from the raw files (distinct lists, distinct comparisons: a pairwise judge asks a
comparison shared by a pair and a Best-of-N list once, a listwise judge asks the pair and the
list apart).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.judge_stub import StubServer  # noqa: E402
from tests.list_stub import ListStubServer  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "RMB_dataset"


FOLDERS = {"pairwise": "Pairwise_set", "bon": "BoN_set", "helpfulness": "Helpfulness", "harmlessness": "Harmlessness"}


def expected_requests(data: Path, goal_of: str, kind: str) -> tuple[int, int]:
    """(distinct lists, distinct best-vs-loser comparisons) in the selected raw files, per order asked."""
    lists, comparisons = set(), set()
    for path in sorted(data.glob("*_set/**/*.json")):
        kind_dir, goal = path.relative_to(data).parts[:2]
        if kind_dir != FOLDERS.get(kind, kind_dir) or goal != FOLDERS.get(goal_of, goal):
            continue
        for record in json.loads(path.read_text(encoding="utf-8")):
            conversation = json.dumps([[m["role"], m["content"]] for m in record["conversation_input"]])
            if "pair_uid" in record:
                answers = (record["chosen"]["answer"], record["reject"]["answer"])
            else:
                answers = (record["bon_best"]["answer"], *(x["answer"] for x in record["loser_list"]))
            lists.add((conversation, answers, goal))
            comparisons.update((conversation, answers[0], loser, goal) for loser in answers[1:])
    return len(lists), len(comparisons)


def run(stub: StubServer, folder: Path, name: str, selection: list[str], settings: list[str]) -> dict:
    args = ["--rmb-model", "openai:stub-judge", *selection, "--rmb-json", f"{name}.json",
            "--rmb-cache-dir", f"cache-{name}", "--rmb-model-arg", f"base_url={stub.base_url}"]
    for setting in settings:
        args += ["--rmb-model-arg", setting]
    before = len(stub.requests())
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args], cwd=folder,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{name}: pytest exited {done.returncode}: {done.stderr[-2000:]}")
    summary = json.loads((folder / f"{name}.json").read_text())
    return {"name": name, "requests": len(stub.requests()) - before, "seconds": elapsed,
            "sections": {k: (v["correct"], v["total"]) for k, v in summary["sections"].items() if v["total"]},
            "saved": summary["engine"].get("listwise_requests_saved", 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(SHARED))
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--order", default="both", choices=("both", "fixed", "random"))
    parser.add_argument("--goal", default="all", choices=("all", "helpfulness", "harmlessness"))
    parser.add_argument("--kind", default="all", choices=("all", "pairwise", "bon"))
    options = parser.parse_args()
    data = Path(options.data)
    if not data.is_dir():
        raise SystemExit(f"no data at {data}")
    markers = [marker for marker in (options.goal, options.kind) if marker != "all"]
    selection = ["--rmb-data", str(data.resolve())] + (["-m", " and ".join(markers)] if markers else [])
    common = [f"order={options.order}", f"concurrency={options.concurrency}", "logprobs=false"]
    orders = 2 if options.order == "both" else 1
    lists, comparisons = expected_requests(data, options.goal, options.kind)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        flags = ["--latency", str(options.latency)]
        with ListStubServer(folder, "longer", *flags) as list_stub, StubServer(folder, "longer", *flags) as pair_stub:
            results = [
                run(list_stub, folder, "listwise", selection, [*common, "mode=listwise"]),
                run(pair_stub, folder, "pairwise", selection, common),
                run(pair_stub, folder, "pairwise-all", selection, [*common, "bon_early_stop=false"]),
            ]
    print(f"data {data} {' and '.join(markers) or 'all'}: {lists} distinct lists "
          f"(pairs included), {comparisons} distinct comparisons; order={options.order}, "
          f"latency {options.latency * 1000:.0f} ms, concurrency {options.concurrency}")
    print(f"{'run':<14}{'requests':>10}{'wall s':>9}{'ideal s':>9}  sections (correct/total)")
    for r in results:
        ideal = r["requests"] * options.latency / options.concurrency
        shown = ", ".join(f"{k} {c}/{t}" for k, (c, t) in sorted(r["sections"].items()))
        print(f"{r['name']:<14}{r['requests']:>10}{r['seconds']:>9.1f}{ideal:>9.1f}  {shown}")
    listwise, _, every = results
    print(f"expected requests: listwise {lists * orders}, pairwise without early stop {comparisons * orders}")
    print(f"pairwise-all / listwise: {every['requests'] / listwise['requests']:.2f}x the requests, "
          f"{every['seconds'] / listwise['seconds']:.2f}x the wall time; listwise_requests_saved "
          f"{listwise['saved']:.0f} (= {every['requests'] - listwise['requests']} counted by the stand-ins)")


if __name__ == "__main__":
    main()
