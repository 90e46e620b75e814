"""Broken runs never look green and never lose what was computed (issue: "A gate you can trust").

Each test runs pytest the way a user does, on real files, and checks the exit status and what is
left on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys

import pytest

from tests.helpers import pair, run_rmb, write_dataset

run = run_rmb


def test_a_model_that_fails_to_load_leaves_an_error_summary_that_no_gate_accepts(pytester):
    assert run(pytester, "--rmb-model", "length", "--rmb-data", "sample", "--rmb-json", "keep.json").ret == 0
    good = json.loads((pytester.path / "keep.json").read_text())
    assert good["status"] == "ok" and good["sections"]

    failed = run(pytester, "--rmb-model", "./nope", "--rmb-data", "sample", "--rmb-json", "keep.json")
    assert failed.ret == pytest.ExitCode.USAGE_ERROR
    summary = json.loads((pytester.path / "keep.json").read_text())
    assert summary["status"] == "error"
    assert "--rmb-model ./nope: no such directory" in summary["reason"]
    assert "sections" not in summary and "outcomes" not in summary

    gated = run(pytester, "--rmb-model", "length", "--rmb-data", "sample", "--rmb-baseline", "keep.json")
    assert gated.ret == pytest.ExitCode.USAGE_ERROR
    gated.stderr.fnmatch_lines(["*--rmb-baseline *keep.json: that run failed*--rmb-model ./nope: no such directory"])


@pytest.mark.parametrize("spec", ["./nope", "openai:judge"])
def test_a_failed_load_under_xdist_is_the_same_usage_error_with_an_error_summary(pytester, spec):
    # Each worker loads the model; one that cannot must not crash xdist (INTERNALERROR, exit 3,
    # a summary that looks like a run). The judge fails before its first request: nothing listens.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    settings = ["--rmb-model-arg", f"base_url={dead}"] if spec.startswith("openai:") else []
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", "--rmb-model", spec, *settings,
               "--rmb-data", "sample", "--rmb-json", "s.json"]
    done = subprocess.run(command, cwd=pytester.path, capture_output=True, text=True, timeout=300)
    printed = done.stdout + done.stderr
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, printed
    assert "INTERNALERROR" not in printed
    reason = ("--rmb-model ./nope: no such directory" if spec == "./nope"
              else f"openai judge: cannot list the models at {dead}/models: cannot connect")
    assert reason in printed
    summary = json.loads((pytester.path / "s.json").read_text())
    assert summary["status"] == "error" and summary["reason"].startswith(reason)
    assert "sections" not in summary


@pytest.mark.parametrize("option", ["--rmb-json", "--rmb-jsonl", "--rmb-markdown"])
def test_an_output_path_that_is_a_directory_is_refused_before_any_scoring(pytester, option):
    (pytester.path / "out").mkdir()
    pytester.makepyfile(counting='''
from pathlib import Path

class Counting:
    def score(self, batch):
        Path("scored.txt").write_text("scored")
        return [float(len(r.response)) for r in batch]

def make():
    return Counting()
''')
    result = run(pytester, "--rmb-model", "python:counting:make", "--rmb-data", "sample", option, "out")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{option} *out: is a directory; give a file path*"])
    assert not (pytester.path / "scored.txt").exists()


def test_an_output_that_fails_at_the_end_still_prints_the_tables_and_fails_the_run(pytester, monkeypatch):
    # The path is fine when the run starts and gone (a file where its folder should be) at the end.
    pytester.makeconftest('''
import pytest
from pathlib import Path

@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    Path("results").rmdir()
    Path("results").write_text("a file now")
''')
    (pytester.path / "results").mkdir()
    result = run(pytester, "--rmb-model", "length", "--rmb-data", "sample", "--rmb-json", "results/s.json",
                 "--rmb-jsonl", "j.jsonl")
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR
    result.stdout.fnmatch_lines(["*RMB accuracy*", "*Helpfulness*", "*rmb: cannot write *results/s.json*"])
    # What could be written was written.
    assert len((pytester.path / "j.jsonl").read_text().splitlines()) == 147


def test_the_readme_python_factory_example_imports_from_the_invocation_directory(tmp_path):
    (tmp_path / "my_rms.py").write_text('''
class Shortest:
    def score(self, batch):
        return [-float(len(r.response)) for r in batch]

def make():
    return Shortest()
''')
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rmb-model", "python:my_rms:make",
         "--rmb-data", "sample", "--rmb-json", "s.json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert json.loads((tmp_path / "s.json").read_text())["model"] == "python:my_rms:make"


def test_a_misspelt_baseline_fails_at_once_with_a_suggestion(tmp_path):
    # Online a bare name would go to the model hub (and its retries); a name this close to a
    # baseline is a typo, whatever the network does.
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rmb-model", "lenght", "--rmb-data", "sample"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert "--rmb-model lenght: not a built-in baseline" in result.stdout + result.stderr
    assert "(did you mean length?)" in result.stdout + result.stderr


def test_the_summary_records_provenance_and_the_digest_of_every_file_read(pytester):
    write_dataset(pytester.path / "data", {
        "Pairwise_set/Helpfulness/Code/Documentation.json": [pair("1", "q", "long answer", "short")],
    })
    assert run(pytester, "--rmb-model", "random", "--rmb-data", "data", "--rmb-seed", "7",
               "--rmb-json", "s.json").ret == 0
    provenance = json.loads((pytester.path / "s.json").read_text())["provenance"]
    data_file = pytester.path / "data/Pairwise_set/Helpfulness/Code/Documentation.json"
    assert provenance["data_files"] == {
        "Pairwise_set/Helpfulness/Code/Documentation.json": hashlib.sha256(data_file.read_bytes()).hexdigest()
    }
    assert (provenance["model"], provenance["seed"], provenance["model_info"]["kind"]) == ("random", 7, "pointwise-model")
    from pytest_rmb import __version__

    assert provenance["pytest_rmb"] == __version__


def test_secrets_given_as_backend_settings_never_reach_the_summary(pytester):
    pytester.makeconftest('''
from pytest_rmb.backends import Backend
from pytest_rmb.backends.baselines import LengthScorer

def pytest_rmb_add_backends(config):
    return [Backend("keyed", LengthScorer, accepts_any_args=True)]
''')
    assert run(pytester, "--rmb-model", "keyed:x", "--rmb-model-arg", "api_key=sk-planted-123",
               "--rmb-model-arg", "temperature=0", "--rmb-data", "sample", "--rmb-json", "s.json").ret == 0
    text = (pytester.path / "s.json").read_text()
    assert "sk-planted-123" not in text
    assert json.loads(text)["provenance"]["model_args"] == {"temperature": "0"}




def test_credentials_in_a_list_of_urls_and_rejected_values_never_reach_output(pytester):
    pytester.makeconftest('''
from pytest_rmb.backends import Backend, ModelArg
from pytest_rmb.parsers import positive_int
from pytest_rmb.backends.baselines import LengthScorer

def pytest_rmb_add_backends(config):
    return [Backend("urls", LengthScorer, args=(
        ModelArg("base_url", lambda text: text.split(","), ["http://127.0.0.1:8000/v1"]),
        ModelArg("n", positive_int, 1),
    ))]
''')
    done = run(pytester, "--rmb-model", "urls:x", "--rmb-model-arg",
               "base_url=http://user:pw-planted-9@host-a/v1,https://host-b/v1?api_key=key-planted-9",
               "--rmb-data", "sample", "--rmb-json", "s.json")
    assert done.ret == 0
    text = (pytester.path / "s.json").read_text()
    assert "pw-planted-9" not in text and "key-planted-9" not in text
    urls = json.loads(text)["provenance"]["model_args"]["base_url"]
    assert [url.split("//")[1].split("/")[0] for url in urls] == ["user:***@host-a", "host-b"]

    pasted = run(pytester, "--rmb-model", "urls:x", "--rmb-model-arg", "n=sk-planted-secret-123",
                 "--rmb-data", "sample")
    assert pasted.ret == pytest.ExitCode.USAGE_ERROR
    output = pasted.stdout.str() + pasted.stderr.str()
    assert "--rmb-model-arg n: expected a positive integer, got '***'" in output
    assert "sk-planted-secret-123" not in output
