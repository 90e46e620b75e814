"""Chaos runs, long: the judge, a served reward model and the data fetch through the fault-injecting
proxy (tests/chaos_proxy.py), on the bundled sample and on one whole task of the real RMB data, and a
memory run of many requests against a fast stand-in.

    python bench/bench_chaos.py [--rate 0.1] [--requests 20000] [--data PATH] [--task Rewrite]
                                [--seed 19] [--concurrency 64] [--skip served,fetch,...]

Every run is a real ``pytest --rmb-model ...`` or ``pytest-rmb fetch`` process. For each chaos run
it prints the faults met by kind; the requests the client sent, the unique ones, and the retries
(sent beyond a clean run's, against the faults that cost a reply); whether the server did any work
twice beyond those faults; and whether the results are identical to a clean run's (every JSONL
record and the summary's tables; every fetched file verified).

The memory run: ``--requests`` judge requests (order=both over half as many synthetic pairs)
against the stub at full speed, through the proxy as a plain relay; the pytest process's resident
memory (VmRSS, VmHWM from /proc) is read every 2,000 requests, and its peak (``ru_maxrss``) after a
run of 2,000 requests and after the whole run.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.chaos_proxy import FAULTS, ChaosProxy  # noqa: E402
from tests.helpers import SAMPLE_DATA, SHARED_DATA, pair, write_dataset  # noqa: E402
from tests.judge_stub import StubServer  # noqa: E402
from tests.local_server import Reply, Request  # noqa: E402
from tests.test_chaos import PROXY, SPARE, file_server, rmb_command, run_rmb  # noqa: E402

SERVED_NAME = "tiny-rm"
# Far above any fault's delay; the served stand-in scores one text at a time on the CPU, so at
# concurrency 64 a request may queue there for minutes.
TIMEOUT = 600
RETRIES = 4


def say(text: str = "") -> None:
    print(text, flush=True)


# -- one chaos run -----------------------------------------------------------------------------------


def report(label: str, relay: ChaosProxy, proxy: ChaosProxy, identical: bool, seconds: tuple[float, float],
           harness_retries: float | None = None) -> bool:
    """Print one run's figures; whether the server did no work twice beyond the faults."""
    faults = {kind: n for kind, n in proxy.counts.items() if kind in FAULTS}
    undelivered = sum(n for kind, n in faults.items() if not FAULTS[kind].delivered)
    wasted = Counter(e.key for e in proxy.exchanges if e.fault and FAULTS[e.fault].wasted)
    # Requests forwarded whose reply was lost with no fault injected: the stand-in dropped the
    # connection (``upstream_failures``), or the client gave up (its timeout) while the server still
    # worked. They cost the server twice whatever the proxy does, in a clean run too.
    abandoned = [Counter(e.key for e in p.exchanges if e.forwarded and not e.delivered and not e.fault)
                 for p in (relay, proxy)]
    clean_work = Counter(e.key for e in relay.exchanges if e.forwarded)
    chaos_work = Counter(e.key for e in proxy.exchanges if e.forwarded)
    paid_once = chaos_work - abandoned[1] == clean_work - abandoned[0] + wasted
    sent, clean_sent = proxy.counts["requests"], relay.counts["requests"]
    unique = len({e.key for e in proxy.exchanges})
    say(f"  {label}")
    say(f"    faults ({sum(faults.values())} of {sent} requests, {sum(faults.values()) / max(sent, 1):.1%}): "
        + ", ".join(f"{kind} {n}" for kind, n in sorted(faults.items())))
    say(f"    requests: unique {unique}, sent {sent} (clean run {clean_sent}), retried {sent - clean_sent} "
        f"(faults that cost a reply: {undelivered})"
        + (f"; the harness counted {int(harness_retries)} retries" if harness_retries is not None else ""))
    say(f"    server work: {sum(chaos_work.values())} requests reached it (clean run {sum(clean_work.values())}, "
        f"faults after forwarding that lost the reply {sum(wasted.values())}; lost with no fault injected "
        f"{sum(abandoned[1].values())}, clean run {sum(abandoned[0].values())}, of which the stand-in dropped "
        f"{proxy.counts['upstream_failures']} and {relay.counts['upstream_failures']}): "
        f"{'nothing paid twice beyond the faults' if paid_once else 'PAID TWICE'}")
    say(f"    identical results: {'yes' if identical else 'NO'}; {seconds[0]:.1f}s clean, {seconds[1]:.1f}s chaos")
    return paid_once and identical


def same_results(clean: tuple, chaos: tuple) -> bool:
    (run, summary, records), (clean_run, clean_summary, clean_records) = chaos, clean
    parts = ("sections", "overall", "tasks", "scenarios", "outcomes", "errors", "partial")
    return (run.returncode == clean_run.returncode == 0 and records == clean_records
            and all(summary[p] == clean_summary[p] for p in parts))


def pytest_chaos(label: str, upstream: str, model: str, args, data: str, work: Path, options) -> bool:
    """The same benchmark run through a relay (no faults) and through the proxy; both compared."""
    started = time.monotonic()
    with ChaosProxy(upstream, rate=0.0) as relay:
        clean = run_rmb(work / "clean", model, *args(relay), data=data)
    middle = time.monotonic()
    with ChaosProxy(upstream, rate=options.rate, seed=options.seed, spare=SPARE,
                    **{k: v for k, v in PROXY.items() if k != "rate"}) as proxy:
        chaos = run_rmb(work / "chaos", model, *args(proxy), data=data)
    ended = time.monotonic()
    if chaos[0].returncode != 0:
        say(chaos[0].stdout[-2000:] + chaos[0].stderr[-2000:])
    return report(label, relay, proxy, same_results(clean, chaos), (middle - started, ended - middle),
                  chaos[1]["engine"].get("http_retries", 0))


def judge_args(concurrency: int):
    def args(proxy: ChaosProxy) -> tuple[str, ...]:
        return ("--rmb-model-arg", f"base_url={proxy.url}/v1", "--rmb-model-arg", f"concurrency={concurrency}",
                "--rmb-model-arg", f"retries={RETRIES}", "--rmb-model-arg", f"timeout={TIMEOUT}",
                "--rmb-model-arg", "order=both")
    return args


def served_args(concurrency: int):
    def args(proxy: ChaosProxy) -> tuple[str, ...]:
        return ("--rmb-model-arg", f"base_url={proxy.url}", "--rmb-model-arg", f"concurrency={concurrency}",
                "--rmb-model-arg", f"retries={RETRIES}", "--rmb-model-arg", f"timeout={TIMEOUT}")
    return args


def fetch_chaos(label: str, files: dict[str, bytes], work: Path, options) -> bool:
    """``pytest-rmb fetch`` of ``files`` (RMB_dataset/... -> bytes) from a mirror, clean and through faults."""
    src = work / "mirror"
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    manifest = work / "manifest.tsv"
    lines = ["# RMB_dataset manifest: upstream Example/Mirror at commit " + "0" * 40]
    lines += [f"{hashlib.sha1(b'blob %d' % len(d) + bytes(1) + d).hexdigest()}\t{n}" for n, d in files.items()]
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def app(request: Request, index: int) -> Reply:
        path = src / unquote(request.path).lstrip("/")
        return Reply(body=path.read_bytes()) if path.is_file() else Reply(404, b"Not Found")

    def fetch(url: str, dest: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pytest_rmb", "fetch", "--url", url, "--dest", str(dest),
                               "--manifest", str(manifest), "--jobs", str(options.concurrency)],
                              capture_output=True, text=True, timeout=600)

    with file_server(app) as server:
        started = time.monotonic()
        with ChaosProxy(server.url, rate=0.0) as relay:
            clean = fetch(relay.url, work / "clean")
        middle = time.monotonic()
        with ChaosProxy(server.url, rate=options.rate, seed=options.seed,
                        **{k: v for k, v in PROXY.items() if k != "rate"}) as proxy:
            chaos = fetch(proxy.url, work / "chaos")
        ended = time.monotonic()
    verified = all((work / "chaos" / name).read_bytes() == data for name, data in files.items()
                   if (work / "chaos" / name).is_file())
    complete = all((work / "chaos" / name).is_file() for name in files)
    identical = clean.returncode == chaos.returncode == 0 and verified and complete
    if not identical:
        say(chaos.stdout[-2000:] + chaos.stderr[-2000:])
    return report(f"{label} ({len(files)} files, each verified: {'yes' if verified and complete else 'NO'})",
                  relay, proxy, identical, (middle - started, ended - middle))


# -- data ----------------------------------------------------------------------------------------------


def task_files(data: Path, task: str) -> list[Path]:
    folders = [data / kind / "Helpfulness" / task for kind in ("Pairwise_set", "BoN_set")]
    return sorted(path for folder in folders for path in folder.glob("*.json"))


def task_dataset(data: Path, task: str, work: Path) -> Path:
    """An RMB_dataset-shaped folder holding one task's files (links to the real ones)."""
    root = work / "RMB_dataset"
    for path in task_files(data, task):
        link = root / path.relative_to(data)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path)
    return root


def synthetic_pairs(count: int, work: Path) -> Path:
    """``count`` distinct pairs of realistic size spread over ten Helpfulness scenarios."""
    names = ["Chat/Discussion", "Chat/Casual Conversation", "Code/Documentation", "Open QA/Factual",
             "Reasoning/Logical Deduction", "Rewrite/Paraphrasing", "Summarization/Standard Summaries",
             "Translation/GeneralExcerpt Language Translation", "Role Playing/General Character",
             "Closed QA/OptionBased"]
    files: dict[str, object] = {}
    for n, name in enumerate(names):
        files[f"Pairwise_set/Helpfulness/{name}.json"] = [
            pair(f"{n}-{i}", f"Question {n}-{i}: explain how a hash map handles collisions, briefly.",
                 f"Answer {n}-{i}. " + "Chaining keeps a list per bucket; lookups walk the list. " * (3 + i % 5),
                 f"Answer {n}-{i}b. " + "Open addressing probes the next free slot. " * (2 + i % 7))
            for i in range(n * count // len(names), (n + 1) * count // len(names))]
    return write_dataset(work / "synthetic", files)


# -- memory ----------------------------------------------------------------------------------------


def status_kb(pid: int) -> dict[str, int]:
    found = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(value.split()[0])
    except OSError:
        pass
    return found


# pytest in a process of its own that writes its peak resident memory (VmHWM, per process image:
# unlike ru_maxrss, not inherited from the parent that forked it) to the file named first.
PEAK_WRAPPER = """
import re, sys, pytest
code = pytest.main(sys.argv[2:])
status = open("/proc/self/status").read()
open(sys.argv[1], "w").write(re.search(r"VmHWM:\\s*(\\d+)", status).group(1))
sys.exit(int(code))
"""


def memory_run(stub: StubServer, pairs: int, votes: int, concurrency: int, work: Path,
               every: int = 2000) -> tuple[int, int, list]:
    """A judge run over ``pairs`` synthetic pairs, ``votes`` per order, through a relay:
    (requests sent, peak RSS in kB, [(requests sent, VmRSS kB)] every ``every`` requests)."""
    data = synthetic_pairs(pairs, work)
    samples: list[tuple[int, int]] = []
    peak_file = work / "peak.txt"
    with ChaosProxy(f"http://127.0.0.1:{stub.port}", rate=0.0) as relay:
        args = rmb_command(work, "openai:stub-judge", *judge_args(concurrency)(relay), "--rmb-no-cache",
                           "--rmb-model-arg", "logprobs=false", "--rmb-model-arg", f"votes={votes}",
                           "--rmb-model-arg", f"temperature={0.7 if votes > 1 else 0}", data=str(data))
        process = subprocess.Popen([sys.executable, "-c", PEAK_WRAPPER, str(peak_file), *args[3:]], cwd=work,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        mark = every
        while process.poll() is None:
            sent = relay.counts["requests"]
            if sent >= mark:
                samples.append((sent, status_kb(process.pid).get("VmRSS", 0)))
                mark += every
            time.sleep(0.02)
        sent = relay.counts["requests"]
    if process.returncode != 0:
        say(f"    memory run over {pairs} pairs exited {process.returncode}")
    return sent, int(peak_file.read_text()) if peak_file.exists() else 0, samples


# -- main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=0.1, help="share of requests that meet a fault")
    parser.add_argument("--requests", type=int, default=20000, help="requests of the memory run")
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="the real RMB_dataset folder")
    parser.add_argument("--task", default="Rewrite", help="the Helpfulness task of the real data to run whole")
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: "
                        "sample, real (the two data sets), judge, served, fetch (the three clients), memory")
    options = parser.parse_args(argv)
    skip = set(filter(None, options.skip.split(",")))
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-chaos-") as folder:
        work = Path(folder)
        stub = StubServer(work, "longer", "--logprobs", log=False).start()
        served = None
        try:
            datasets = [] if "sample" in skip else [("sample", "sample", SAMPLE_DATA)]
            if "real" not in skip:
                files = task_files(options.data, options.task)
                if files:
                    root = task_dataset(options.data, options.task, work / "real")
                    datasets.append((f"task {options.task} of {options.data}", str(root), root))
                    say(f"real data: task {options.task}, {len(files)} files: "
                        + "; ".join(str(p.relative_to(options.data)) for p in files))
                else:
                    say(f"real data: no Helpfulness/{options.task} files under {options.data}; sample only")
            if "served" not in skip:
                from tests.test_served import Stub, save_long_decoder

                model = save_long_decoder(work / "tiny-model")
                served = Stub(model, work / "served-stub", key=None)
            say(f"fault rate {options.rate:.0%}, seed {options.seed}, concurrency {options.concurrency}; "
                f"proxy faults: spikes ~{PROXY['latency']}s, drips ~{PROXY['drip']}s, Retry-After "
                f"{PROXY['retry_after']:g}s, at most {PROXY['max_in_a_row']} in a row per request")
            for label, data, root in datasets:
                say(f"\n== {label}")
                slug = label.split()[0] + ("-" + options.task if label != "sample" else "")
                if "judge" not in skip:
                    ok &= pytest_chaos("openai: judge, order=both", f"http://127.0.0.1:{stub.port}",
                                       "openai:stub-judge", judge_args(options.concurrency), data,
                                       work / f"judge-{slug}", options)
                if served is not None:
                    ok &= pytest_chaos("vllm: served reward model", served.url, f"vllm:{SERVED_NAME}",
                                       served_args(options.concurrency), data, work / f"served-{slug}", options)
                if "fetch" not in skip:
                    files = {f"RMB_dataset/{p.relative_to(root).as_posix()}": p.read_bytes()
                             for p in sorted(Path(root).rglob("*.json"))}
                    ok &= fetch_chaos("pytest-rmb fetch", files, work / f"fetch-{slug}", options)
            if "memory" not in skip:
                say("\n== memory: judge requests against the stub at full speed (order=both, no cache)")
                pairs = options.requests // 20
                for votes in (1, 10):
                    sent, peak, _ = memory_run(stub, pairs, votes, options.concurrency, work / f"memory-{votes}")
                    say(f"  {pairs:,} pairs, votes={votes}: {sent:,} requests, peak RSS {peak / 1024:.0f} MiB")
                sent, peak, samples = memory_run(stub, options.requests // 2, 1, options.concurrency,
                                                 work / "memory-pairs")
                say(f"  {options.requests // 2:,} pairs, votes=1: {sent:,} requests, peak RSS {peak / 1024:.0f} MiB; "
                    "VmRSS as it went: " + ", ".join(f"{n:,}: {rss / 1024:.0f}" for n, rss in samples) + " MiB")
        finally:
            stub.stop()
            if served is not None:
                served.stop()
            shutil.rmtree(work, ignore_errors=True)
    say("\nall chaos runs identical to clean runs, nothing paid twice" if ok else "\nSOME CHAOS RUN DIFFERED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
