"""Scale out and never lose work: score cache, resume after SIGKILL, Ctrl-C, crashed workers, GPUs."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from pytest_rmb.cache import ScoreCache
from pytest_rmb.backends._transformers import resolve_device
from tests.helpers import SAMPLE_DATA, all_files, ctrl_c_reaches_it
from tests.tiny_models import save_decoder

SAMPLE_TEXTS = len({
    (json.dumps(r["conversation_input"]), answer)
    for records in all_files(SAMPLE_DATA).values() for r in records
    for answer in ([r["chosen"]["answer"], r["reject"]["answer"]] if "pair_uid" in r
                   else [r["bon_best"]["answer"]] + [x["answer"] for x in r["loser_list"]])
})

# A deterministic scorer with a fingerprint (so it is cached) that takes its time per batch.
SLOW_SCORER = '''
import hashlib, os, time

class Slow:
    def fingerprint(self):
        return "slow-scorer-v1"

    def score(self, batch):
        time.sleep(float(os.environ.get("SLOW_SECONDS", "0.05")))
        out = []
        for request in batch:
            digest = hashlib.sha256(request.response.encode()).digest()
            out.append(len(request.response) + int.from_bytes(digest[:4], "big") / 2**32)
        return out

def make():
    return Slow()
'''


def rmb(*args, **kwargs):
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rmb-data", "sample", *args]


def engine_of(path):
    return json.loads(path.read_text())["engine"]


@pytest.fixture
def tiny_model(tmp_path_factory):
    return save_decoder(tmp_path_factory.mktemp("model") / "tiny")


def test_a_second_identical_run_scores_nothing(pytester, tiny_model):
    args = ("--rmb-model", str(tiny_model), "--rmb-device", "cpu", "--rmb-cache-dir", "cache",
            "-p", "no:cacheprovider", "--rmb-data", "sample")
    first = pytester.runpytest(*args, "--rmb-json", "one.json", "--rmb-jsonl", "one.jsonl")
    assert first.ret == 0
    cold = engine_of(pytester.path / "one.json")
    assert (cold["texts_scored"], cold["cache_hits"]) == (SAMPLE_TEXTS, 0)
    files = [p for p in (pytester.path / "cache").iterdir() if p.suffix == ".jsonl"]
    assert len(files) == 1 and len(files[0].read_text().splitlines()) == SAMPLE_TEXTS
    assert (pytester.path / "cache" / ".gitignore").read_text().endswith("*\n")

    second = pytester.runpytest(*args, "--rmb-json", "two.json", "--rmb-jsonl", "two.jsonl")
    warm = engine_of(pytester.path / "two.json")
    assert (warm["texts_scored"], warm["cache_hits"]) == (0, SAMPLE_TEXTS)
    assert (pytester.path / "one.jsonl").read_text() == (pytester.path / "two.jsonl").read_text()
    second.stdout.fnmatch_lines([f"engine: 0 texts scored now; model not loaded; {SAMPLE_TEXTS} from the score cache*"])

    # A different max length is a different fingerprint: a new file, scored afresh.
    pytester.runpytest(*args, "--rmb-max-length", "32", "--rmb-json", "three.json")
    assert engine_of(pytester.path / "three.json")["texts_scored"] == SAMPLE_TEXTS
    assert len([p for p in (pytester.path / "cache").iterdir() if p.suffix == ".jsonl"]) == 2

    pytester.runpytest(*args, "--rmb-no-cache", "--rmb-json", "four.json")
    assert engine_of(pytester.path / "four.json")["texts_scored"] == SAMPLE_TEXTS


def test_the_default_cache_is_in_the_users_cache_folder_not_the_rootdir(pytester, tiny_model):
    pytester.makeini("[pytest]\n")
    pytester.runpytest("--rmb-model", str(tiny_model), "--rmb-device", "cpu", "--rmb-data", "sample", "-m", "chat")
    scores = os.path.join(os.environ["XDG_CACHE_HOME"], "pytest-rmb", "scores")
    assert len([name for name in os.listdir(scores) if name.endswith(".jsonl")]) == 1
    assert not (pytester.path / ".rmb_cache").exists()


def test_a_torn_last_line_is_tolerated_and_written_past(tmp_path):
    cache = ScoreCache(tmp_path, "fp")
    cache.append([("a", 1.5), ("b", -2.0)])
    with open(cache.path, "ab") as handle:
        handle.write(b'{"k": "c", "s": 0.1')  # the process died mid-line
    assert cache.load() == {"a": 1.5, "b": -2.0}
    cache.append([("d", 0.25)])
    assert cache.load() == {"a": 1.5, "b": -2.0, "d": 0.25}
    lines = cache.path.read_text().splitlines()
    assert lines[-1] == '{"k": "d", "s": 0.25}'


def _append_many(directory, worker):
    cache = ScoreCache(directory, "shared")
    for i in range(200):
        cache.append([(f"{worker}-{i}-{j}", float(i * j)) for j in range(5)])


def test_several_writers_at_once_do_not_corrupt_the_file(tmp_path):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(tmp_path, w)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    lines = (tmp_path / "shared.jsonl").read_text().splitlines()
    assert len(lines) == 4 * 200 * 5
    assert len({json.loads(line)["k"] for line in lines}) == 4000


def test_sigkill_half_way_then_resume_scores_only_the_rest_and_matches(pytester):
    pytester.makepyfile(slow_scorer=SLOW_SCORER)
    env = {**os.environ, "PYTHONPATH": str(pytester.path), "SLOW_SECONDS": "0.05"}
    common = ("--rmb-model", "python:slow_scorer:make", "--rmb-batch-size", "4")
    reference = subprocess.run(rmb(*common, "--rmb-cache-dir", "ref-cache", "--rmb-jsonl", "ref.jsonl"),
                               cwd=pytester.path, env=env, capture_output=True, text=True)
    assert reference.returncode == 0, reference.stdout[-2000:]

    cache_file = pytester.path / "cache" / "slow-scorer-v1.jsonl"
    process = subprocess.Popen(rmb(*common, "--rmb-cache-dir", "cache", "--rmb-jsonl", "run.jsonl"),
                               cwd=pytester.path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if cache_file.exists() and len(cache_file.read_bytes().splitlines()) >= 60:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    assert process.returncode == -signal.SIGKILL
    cached = len(ScoreCache(pytester.path / "cache", "slow-scorer-v1").load())
    assert 60 <= cached < SAMPLE_TEXTS
    assert not (pytester.path / "run.jsonl").exists()

    resumed = subprocess.run(rmb(*common, "--rmb-cache-dir", "cache", "--rmb-jsonl", "run.jsonl", "--rmb-json", "run.json"),
                             cwd=pytester.path, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0
    engine = engine_of(pytester.path / "run.json")
    assert engine["texts_scored"] == SAMPLE_TEXTS - cached
    assert engine["cache_hits"] == cached
    assert (pytester.path / "run.jsonl").read_text() == (pytester.path / "ref.jsonl").read_text()


def test_ctrl_c_prints_and_writes_partial_results(pytester):
    pytester.makepyfile(slow_scorer=SLOW_SCORER)
    env = {**os.environ, "PYTHONPATH": str(pytester.path), "SLOW_SECONDS": "0.3"}
    process = subprocess.Popen(
        rmb("--rmb-model", "python:slow_scorer:make", "--rmb-batch-size", "2", "--rmb-no-cache",
            "--rmb-json", "partial.json", "--rmb-jsonl", "partial.jsonl"),
        cwd=pytester.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=ctrl_c_reaches_it,
    )
    time.sleep(8)  # long enough for several scenarios to finish, far from all 49
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == pytest.ExitCode.INTERRUPTED, output[-3000:]
    assert "PARTIAL RESULTS: the run was interrupted before every item ran." in output
    summary = json.loads((pytester.path / "partial.json").read_text())
    assert summary["partial"] is True
    written = (pytester.path / "partial.jsonl").read_text().splitlines()
    assert 0 < len(written) == summary["samples"] < 147


CRASH_ONCE = '''
import os
from pathlib import Path

class CrashOnce:
    """Kills its worker the first time it scores Chat / Discussion."""

    def score(self, batch):
        marker = Path(os.environ["CRASH_MARKER"])
        if any("Is it worth learning Latin" in r.conversation[-1].content for r in batch) and not marker.exists():
            marker.write_text("crashed")
            os._exit(1)
        return [float(len(r.response)) for r in batch]

def make():
    return CrashOnce()
'''


def test_a_dead_worker_loses_only_its_item_and_the_report_says_so(pytester):
    pytester.makepyfile(crash_once=CRASH_ONCE)
    env = {**os.environ, "PYTHONPATH": str(pytester.path), "CRASH_MARKER": str(pytester.path / "crashed")}
    done = subprocess.run(
        rmb("--rmb-model", "python:crash_once:make", "-n", "2", "--rmb-json", "s.json", "--rmb-jsonl", "s.jsonl"),
        cwd=pytester.path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert (pytester.path / "crashed").exists()
    # The crashed item was never scored: the run is partial (exit 2), with the rest of it kept.
    assert done.returncode == pytest.ExitCode.INTERRUPTED, done.stdout[-3000:]
    summary = json.loads((pytester.path / "s.json").read_text())
    assert summary["status"] == "partial" and summary["items"] == {"selected": 147, "ran": 146}
    (error,) = summary["errors"]
    assert error["scenario"] == "chat/discussion" and error["items"] == 1
    assert "crashed" in error["message"]
    assert summary["samples"] == 146
    assert len((pytester.path / "s.jsonl").read_text().splitlines()) == 146
    assert "error: chat/discussion" in done.stdout


def test_without_xdist_the_plugin_still_runs(pytester):
    result = pytester.runpytest("-p", "no:xdist", "-p", "no:cacheprovider", "--rmb-model", "length",
                                "--rmb-data", "sample", "--rmb-json", "s.json")
    assert result.ret == 0
    assert json.loads((pytester.path / "s.json").read_text())["samples"] == 147


@pytest.mark.parametrize(("worker", "gpus", "expected"), [(None, 2, "cuda"), (0, 2, "cuda:0"), (1, 2, "cuda:1"),
                                                           (2, 2, "cuda:0"), (5, 4, "cuda:1"), (3, 0, "cpu")])
def test_worker_i_takes_gpu_i_mod_k(monkeypatch, worker, gpus, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    assert resolve_device("auto", worker) == expected
    if gpus:
        assert resolve_device("cuda:1", worker) == "cuda:1"  # an explicit device wins


def test_device_map_is_single_process_only(pytester):
    result = pytester.runpytest("-p", "no:cacheprovider", "--rmb-model", "length", "--rmb-data", "sample",
                                "--rmb-device-map", "auto", "-n", "2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--rmb-device-map auto*cannot be combined with -n*"])
