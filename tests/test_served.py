"""vllm: and sglang: served reward models, against our own stand-in server (tests/served_stub.py).

The stub speaks vLLM's pooling API and SGLang's native /classify and scores with the same tiny
Hugging Face checkpoint the HF backend loads, so the served backend must reproduce the HF
backend's scores and sections. Faults (429 with Retry-After, 5xx, timeouts, a server killed
mid-run, no key, the wrong model) are injected into real servers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import httpx
import pytest

from pytest_rmb.backends import ModelLoadError, ModelSettings, load_spec
from pytest_rmb.backends import RMBWarning
from pytest_rmb.cache import default_cache_dir
from pytest_rmb.data import Message
from pytest_rmb.http import HTTPFailure, JSONClient, RetryPolicy
from pytest_rmb.models import PartialBatchError, ScoreRequest, batch_progress
from tests.tiny_models import save_decoder

ROOT = Path(__file__).resolve().parents[1]
SERVED_NAME = "tiny-rm"
# The key the stub demands; tests put it in the client's environment only.
SECRET = "sk-stub-7f3a9c41d2e8b6"
SERVER_KEY_ENV = "RMB_STUB_SERVER_KEY"
LONG_LIMIT = 2048
HEAD_SCALE = 20.0

REQUESTS = [
    ScoreRequest((Message("user", "How do I sort a list of strings in Python?"),), "Use sorted(items, key=len)."),
    ScoreRequest((Message("user", "hi"),), ""),
    ScoreRequest((Message("user", "Translate to French: where is the train station?"),), "Ou est la gare ?" * 3),
    ScoreRequest(
        (Message("user", "sort?"), Message("assistant", "Which list?"), Message("user", "strings")),
        "I can't help with that request, but here is a safer option. " * 4,
    ),
    ScoreRequest((Message("user", "The quick brown fox"),), "jumps over the lazy dog."),
]


def many_requests(n: int) -> list[ScoreRequest]:
    return [ScoreRequest((Message("user", f"Question number {i}: sort a list?"),), f"Answer {i}: use sorted().")
            for i in range(n)]


def save_long_decoder(path: Path) -> Path:
    """The HF tests' tiny decoder, with room for every sample text (its rotary positions have no
    hard limit) so that neither side truncates, and a reward head scaled up so that raw rewards
    spread beyond [0, 1] like a real reward model's (random init leaves them all near 0.24)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    save_decoder(path)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    with torch.no_grad():
        model.score.weight.mul_(HEAD_SCALE)
    model.config.max_position_embeddings = LONG_LIMIT
    model.save_pretrained(path)
    file = path / "tokenizer_config.json"
    config = json.loads(file.read_text(encoding="utf-8"))
    config["model_max_length"] = LONG_LIMIT
    file.write_text(json.dumps(config), encoding="utf-8")
    return path


def reference_scores(path: Path, requests, *, max_length: int | None = None) -> list[float]:
    """Each text alone through transformers, rendered here without pytest_rmb."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    scores = []
    for request in requests:
        messages = [{"role": m.role, "content": m.content} for m in request.conversation]
        messages.append({"role": "assistant", "content": request.response})
        ids = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
        if max_length is not None and len(ids) > max_length:
            ids = ids[:1] + ids[len(ids) - max_length + 1:]
        with torch.inference_mode():
            scores.append(model(input_ids=torch.tensor([ids])).logits[0, 0].item())
    return scores


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Stub:
    """One stub server process: started on a free port, reconfigured over /_control, killed by pid."""

    def __init__(self, model: Path, workdir: Path, *, flavor: str = "vllm", key: str | None = SECRET, **options):
        workdir.mkdir(parents=True, exist_ok=True)
        port_file = workdir / "port"
        command = [sys.executable, "-m", "tests.served_stub", "--model", str(model), "--served-name", SERVED_NAME,
                   "--flavor", flavor, "--port-file", str(port_file)]
        env = dict(os.environ)
        if key is not None:
            env[SERVER_KEY_ENV] = key
            command += ["--api-key-env", SERVER_KEY_ENV]
        for name, value in options.items():
            command += [f"--{name.replace('_', '-')}", str(value)]
        # A file, not a pipe: a server that writes more than a pipe holds would block on it.
        self._stderr = open(workdir / "stderr.txt", "w", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=self._stderr)
        deadline = time.monotonic() + 120
        while not port_file.exists():
            if self.process.poll() is not None:
                self._stderr.close()
                raise RuntimeError(f"stub server exited: {(workdir / 'stderr.txt').read_text(encoding='utf-8')}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("stub server did not start within 120 s")
            time.sleep(0.05)
        self.port = int(port_file.read_text(encoding="utf-8"))
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self._logs = 0

    def control(self, **settings) -> Path:
        """New fault settings and a fresh request log; returns the log's path."""
        self._logs += 1
        log = self.workdir / f"requests-{self._logs}.jsonl"
        httpx.post(f"{self.url}/_control", json={**settings, "log": str(log)}, timeout=10).raise_for_status()
        return log

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        self._stderr.close()


def logged(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The reference models run in this process; on a shared CPU, intra-op threads spin-wait and
    slow a tiny model's forward a hundredfold. Scores do not depend on the thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", autouse=True)
def http_stack_imported():
    """pytester's in-process runs drop the modules first imported inside them. httpx imports its
    async stack (httpcore, anyio) on first use, and a copy re-imported by a later run raises
    exception classes the earlier copy's handlers do not catch. Using the stack here once, in this
    process, keeps one copy for every run (an artefact of inline runs, not of real ones)."""

    async def refused() -> None:
        async with JSONClient([f"http://127.0.0.1:{free_port()}"], policy=RetryPolicy(retries=0)) as client:
            with pytest.raises(HTTPFailure):
                await client.get("/v1/models")

    asyncio.run(refused())


@pytest.fixture(scope="module")
def long_model(tmp_path_factory) -> Path:
    return save_long_decoder(tmp_path_factory.mktemp("served-models") / "tiny-long")


@pytest.fixture(scope="module")
def vllm_server(long_model, tmp_path_factory):
    stub = Stub(long_model, tmp_path_factory.mktemp("vllm-stub"))
    yield stub
    stub.stop()


@pytest.fixture(scope="module")
def sglang_server(long_model, tmp_path_factory):
    stub = Stub(long_model, tmp_path_factory.mktemp("sglang-stub"), flavor="sglang", key=None)
    yield stub
    stub.stop()


@pytest.fixture
def vllm(vllm_server, monkeypatch):
    """The vLLM stub with no faults and the client's key in its environment."""
    monkeypatch.setenv("VLLM_API_KEY", SECRET)
    vllm_server.control()
    yield vllm_server
    vllm_server.control()


def load(spec: str, *pairs: tuple[str, str], **settings):
    from pytest_rmb.backends import backend_for, installed_backends

    backend = backend_for(spec, installed_backends())
    return load_spec(ModelSettings(spec, args=backend.parse_args(list(pairs)), **settings))


# -- scores --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("endpoint", "template"), [("pooling", "server"), ("classify", "server"),
                                                    ("pooling", "client"), ("classify", "client")])
def test_vllm_scores_are_the_models_raw_rewards(vllm, long_model, endpoint, template):
    model = load(f"vllm:{SERVED_NAME}", ("base_url", vllm.url), ("endpoint", endpoint), ("template", template),
                 ("tokenizer", str(long_model)))
    assert model.score(REQUESTS) == pytest.approx(reference_scores(long_model, REQUESTS), abs=1e-5)


def test_sglang_renders_here_and_matches_hf_with_truncation(sglang_server, long_model):
    """SGLang gets token ids rendered by the HF backend's own code, truncation included."""
    sglang_server.control()
    model = load(f"sglang:{SERVED_NAME}", ("base_url", sglang_server.url), ("tokenizer", str(long_model)),
                 max_length=24)
    hf = load_spec(ModelSettings(str(long_model), device="cpu", max_length=24))
    expected = reference_scores(long_model, REQUESTS, max_length=24)
    assert model.score(REQUESTS) == pytest.approx(expected, abs=1e-5)
    assert hf.score(REQUESTS) == pytest.approx(expected, abs=1e-5)
    assert model.take_counters()["truncated"] == hf.take_counters()["truncated"] > 0


def test_chat_template_file_travels_with_each_chat_request(vllm, long_model, tmp_path):
    template = tmp_path / "template.jinja"
    template.write_text("{{ bos_token }}{% for m in messages %}[{{ m['role'] | upper }}] {{ m['content'] }}"
                        "{{ eos_token }}{% endfor %}", encoding="utf-8")
    model = load(f"vllm:{SERVED_NAME}", ("base_url", vllm.url), chat_template=str(template))
    hf = load_spec(ModelSettings(str(long_model), device="cpu", chat_template=str(template)))
    default = load(f"vllm:{SERVED_NAME}", ("base_url", vllm.url))
    assert model.score(REQUESTS) == pytest.approx(hf.score(REQUESTS), abs=1e-5)
    assert model.score(REQUESTS) != pytest.approx(default.score(REQUESTS), abs=1e-3)
    assert model.fingerprint() != default.fingerprint()


def test_token_level_output_takes_the_last_tokens_reward(vllm, long_model):
    vllm.control(token_level=True)
    model = load(f"vllm:{SERVED_NAME}", ("base_url", vllm.url))
    assert model.score(REQUESTS) == pytest.approx(reference_scores(long_model, REQUESTS), abs=1e-5)


def test_post_activation_scores_are_warned_about_once(vllm, long_model):
    vllm.control(always_activate=True)
    model = load(f"vllm:{SERVED_NAME}", ("base_url", vllm.url))
    requests = many_requests(25)
    with pytest.warns(RMBWarning, match="probably applies a sigmoid or softmax") as record:
        scores = model.score(requests)
    assert len([w for w in record if issubclass(w.category, RMBWarning)]) == 1
    sigmoid = [1 / (1 + math.exp(-x)) for x in reference_scores(long_model, requests)]
    assert scores == pytest.approx(sigmoid, abs=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.score(many_requests(30))  # once per run, not once per batch


def test_fewer_than_20_unit_interval_scores_are_no_evidence(vllm):
    vllm.control(always_activate=True)
    model = load(f"vllm:{SERVED_NAME}", ("base_url", vllm.url))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.score(many_requests(19))


def test_requests_spread_over_replicas_and_concurrency_is_bounded(vllm, long_model):
    urls = f"{vllm.url},http://localhost:{vllm.port}/v1"
    model = load(f"vllm:{SERVED_NAME}", ("base_url", urls), ("concurrency", "3"))
    log = vllm.control(delay=0.05)
    requests = many_requests(24)
    assert model.batch_size == 4 * 3 * 2
    assert model.score(requests) == pytest.approx(reference_scores(long_model, requests), abs=1e-5)
    entries = [e for e in logged(log) if e["texts"]]
    hosts = {host: sum(e["host"] == host for e in entries) for host in {e["host"] for e in entries}}
    assert hosts == {f"127.0.0.1:{vllm.port}": 12, f"localhost:{vllm.port}": 12}
    assert 1 < max(e["in_flight"] for e in entries) <= 6
    assert all(e["auth"] for e in entries)



def test_progress_moves_with_each_reward_that_arrives(vllm, long_model):
    model = load(f"vllm:{SERVED_NAME}", ("base_url", vllm.url), ("concurrency", "2"))
    vllm.control(delay=0.02)
    seen: list[tuple[int, str]] = []
    with batch_progress(lambda finished, detail, results=None: seen.append((finished, detail))):
        model.score(many_requests(7))
    assert [finished for finished, _ in seen] == [1, 2, 3, 4, 5, 6, 7]
    assert all(re.fullmatch(r"[\d.]+ requests/s", detail) for _, detail in seen)


# -- the cache fingerprint -----------------------------------------------------------------------


def test_fingerprint_names_model_route_and_rendering_never_url_or_key(vllm, long_model, monkeypatch):
    a = load(f"vllm:{SERVED_NAME}", ("base_url", vllm.url))
    monkeypatch.setenv("RMB_OTHER_KEY", SECRET)
    b = load(f"vllm:{SERVED_NAME}", ("base_url", f"http://localhost:{vllm.port}/v1"), ("concurrency", "2"),
             ("api_key_env", "RMB_OTHER_KEY"))
    assert a.fingerprint() == b.fingerprint()
    classify = load(f"vllm:{SERVED_NAME}", ("base_url", vllm.url), ("endpoint", "classify"))
    client = load(f"vllm:{SERVED_NAME}", ("base_url", vllm.url), ("template", "client"), ("tokenizer", str(long_model)))
    truncated = load(f"vllm:{SERVED_NAME}", ("base_url", vllm.url), max_length=64)
    assert len({a.fingerprint(), classify.fingerprint(), client.fingerprint(), truncated.fingerprint()}) == 4
    assert SECRET not in json.dumps([a.describe(), b.describe(), client.describe()])
    assert a.describe()["served_root"] == str(long_model)  # what /v1/models says the server loaded


# -- start-up checks -----------------------------------------------------------------------------


def test_nothing_listening_fails_within_seconds_naming_the_url():  # the model class alone
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(ModelLoadError, match=f"no vLLM server answers at {url}.*vllm serve {SERVED_NAME}"):
        load(f"vllm:{SERVED_NAME}", ("base_url", url))
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(("setting", "message"), [
    ("concurrency=0", "expected a positive integer"),
    ("base_url=ftp://host:8000", "expected an http:// or https:// base URL"),
    ("endpoint=score", "expected one of pooling, classify"),
    ("timeout=0", "expected a number of seconds > 0"),
    ("api_key_env=MY-KEY", "expected the NAME of an environment variable"),
    ("temperature=0", "has no setting 'temperature'"),
])
def test_bad_settings_are_usage_errors_before_anything_loads(pytester, setting, message):
    result = pytester.runpytest("-p", "no:cacheprovider", "--rmb-model", f"vllm:{SERVED_NAME}", "--rmb-data",
                                "sample", "--rmb-model-arg", setting)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stdout.str() + result.stderr.str()


def test_an_unloadable_tokenizer_for_client_rendering_is_named(vllm, tmp_path):
    missing = tmp_path / "no-tokenizer-here"
    with pytest.raises(ModelLoadError, match="template=client needs the model's tokenizer.*tokenizer=ID_OR_DIR"):
        load(f"vllm:{SERVED_NAME}", ("base_url", vllm.url), ("template", "client"), ("tokenizer", str(missing)))


def test_a_route_the_server_lacks_fails_at_load_naming_it(sglang_server, monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", SECRET)
    with pytest.raises(ModelLoadError, match=rf"a test request to /pooling failed: POST {sglang_server.url}/pooling "
                                             r"failed: HTTP 404"):
        load(f"vllm:{SERVED_NAME}", ("base_url", sglang_server.url))


def test_a_model_the_server_does_not_serve_is_named(vllm):
    with pytest.raises(ModelLoadError, match=f"serves {SERVED_NAME}, not 'other-rm'"):
        load("vllm:other-rm", ("base_url", vllm.url))


def test_missing_key_names_the_environment_variable(vllm, monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY")
    with pytest.raises(ModelLoadError, match=r"wants an API key \(\$VLLM_API_KEY is not set\)"):
        load(f"vllm:{SERVED_NAME}", ("base_url", vllm.url))
    monkeypatch.setenv("MY_RM_KEY", SECRET)
    assert load(f"vllm:{SERVED_NAME}", ("base_url", vllm.url), ("api_key_env", "MY_RM_KEY")).score(REQUESTS[:1])


def test_wrong_key_is_refused_without_showing_it(vllm, monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", "sk-wrong-123456")
    with pytest.raises(ModelLoadError) as caught:
        load(f"vllm:{SERVED_NAME}", ("base_url", vllm.url))
    assert "$VLLM_API_KEY is set but the server refuses it" in str(caught.value)
    assert "sk-wrong-123456" not in str(caught.value)


def test_sglang_cannot_apply_templates_server_side(sglang_server):
    with pytest.raises(ModelLoadError, match="template=server: SGLang's /classify takes text or token ids"):
        load(f"sglang:{SERVED_NAME}", ("base_url", sglang_server.url), ("template", "server"))


def test_a_multi_label_model_needs_a_reward_index(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", SECRET)
    two_labels = save_decoder(tmp_path / "two-labels", num_labels=2)
    stub = Stub(two_labels, tmp_path / "stub")
    try:
        with pytest.raises(ModelLoadError, match=r"returns 2 values per text .*pass --rmb-reward-index N"):
            load(f"vllm:{SERVED_NAME}", ("base_url", stub.url))
        model = load(f"vllm:{SERVED_NAME}", ("base_url", stub.url), reward_index=1)
        expected = load_spec(ModelSettings(str(two_labels), device="cpu", reward_index=1)).score(REQUESTS)
        assert model.score(REQUESTS) == pytest.approx(expected, abs=1e-5)
    finally:
        stub.stop()


# -- faults --------------------------------------------------------------------------------------


def test_429_waits_for_retry_after(vllm, long_model):
    model = load(f"vllm:{SERVED_NAME}", ("base_url", vllm.url), ("concurrency", "1"))
    log = vllm.control(fail="429:2:1")
    assert model.score(REQUESTS[:1]) == pytest.approx(reference_scores(long_model, REQUESTS[:1]), abs=1e-5)
    entries = logged(log)
    assert [e["status"] for e in entries] == [429, 429, 200]
    assert entries[1]["time"] - entries[0]["time"] >= 0.95
    assert entries[2]["time"] - entries[1]["time"] >= 0.95
    assert model.take_counters()["http_retries"] == 2


def test_5xx_beyond_the_retries_fails_naming_url_and_status(vllm):
    model = load(f"vllm:{SERVED_NAME}", ("base_url", vllm.url), ("retries", "1"))
    log = vllm.control(fail="503:100")
    with pytest.raises(HTTPFailure, match=rf"POST {vllm.url}/pooling failed: HTTP 503.*after 2 attempts"):
        model.score(REQUESTS[:2])
    assert len(logged(log)) == 4


def test_timeouts_are_retried_then_reported(vllm):
    model = load(f"vllm:{SERVED_NAME}", ("base_url", vllm.url), ("timeout", "0.3"), ("retries", "1"))
    vllm.control(delay=2)
    with pytest.raises(HTTPFailure, match="timed out"):
        model.score(REQUESTS[:1])
    assert model.take_counters()["http_retries"] == 1


def test_a_server_killed_mid_batch_keeps_what_arrived(long_model, tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", SECRET)
    stub = Stub(long_model, tmp_path / "dying", die_after=7)
    try:
        model = load(f"vllm:{SERVED_NAME}", ("base_url", stub.url), ("concurrency", "2"))  # the probe is 1 of 7
        requests = many_requests(20)
        with pytest.raises(PartialBatchError) as caught:
            model.score(requests)
        done = caught.value.done
        assert 7 - 2 - 1 <= len(done) < 20  # up to `concurrency` answers die unwritten; the probe was one
        expected = reference_scores(long_model, requests)
        assert {i: pytest.approx(expected[i], abs=1e-5) for i in done} == done
        with pytest.raises(Exception, match="stopped answering earlier in this run"):
            model.score(requests)  # at once, not after more retries
    finally:
        stub.stop()


# -- end to end, as users run it -----------------------------------------------------------------


def run_benchmark(pytester, name: str, spec: str, *args: str, in_subprocess: bool = False):
    """``pytest --rmb-model SPEC --rmb-data sample`` with both output files; (result, summary, samples).
    pytest-xdist runs go through a subprocess, as in test_plugin.py."""
    out = pytester.path / name
    run = pytester.runpytest_subprocess if in_subprocess else pytester.runpytest
    result = run("-p", "no:cacheprovider", "--rmb-model", spec, "--rmb-data", "sample",
                 "--rmb-json", f"{out}.json", "--rmb-jsonl", f"{out}.jsonl", *args)
    summary_file, samples_file = Path(f"{out}.json"), Path(f"{out}.jsonl")
    summary = json.loads(summary_file.read_text(encoding="utf-8")) if summary_file.exists() else None
    samples = ([json.loads(line) for line in samples_file.read_text(encoding="utf-8").splitlines()]
               if samples_file.exists() else None)
    return result, summary, samples


def assert_same_results(served, hf) -> None:
    """Identical sections and outcomes, and every sample's scores within 1e-4."""
    (_, served_summary, served_samples), (_, hf_summary, hf_samples) = served, hf
    assert served_summary["sections"] == hf_summary["sections"]
    assert served_summary["outcomes"] == hf_summary["outcomes"]
    assert [(s["scenario"], s["kind"], s["uid"]) for s in served_samples] == [
        (s["scenario"], s["kind"], s["uid"]) for s in hf_samples]
    for mine, theirs in zip(served_samples, hf_samples):
        assert mine["scores"] == pytest.approx(theirs["scores"], abs=1e-4), (mine, theirs)


@pytest.fixture
def hf_reference(pytester, long_model):
    """The HF backend's own run on the sample: what every served run must reproduce."""
    reference = run_benchmark(pytester, "hf", str(long_model), "--rmb-no-cache")
    assert reference[1]["engine"]["truncated"] == 0
    assert reference[1]["sections"]
    return reference


def test_vllm_run_reproduces_the_hf_backend_and_never_writes_the_key(pytester, vllm, hf_reference):
    log = vllm.control()
    served = run_benchmark(pytester, "vllm", f"vllm:{SERVED_NAME}", "--rmb-model-arg", f"base_url={vllm.url}")
    assert served[0].ret == hf_reference[0].ret
    assert_same_results(served, hf_reference)
    output = served[0].stdout.str() + served[0].stderr.str()
    assert "RMBWarning" not in output  # raw rewards: no post-activation warning
    entries = logged(log)
    assert entries and all(e["auth"] for e in entries)
    # The key never reaches the output, the summary, the per-sample file or the cache.
    written = [p for folder in (pytester.path, default_cache_dir()) for p in folder.rglob("*") if p.is_file()]
    assert any(p.suffix == ".jsonl" and p.parent == default_cache_dir() for p in written)
    assert not any(SECRET in p.read_text(encoding="utf-8", errors="replace") for p in written)
    assert SECRET not in output
    # Another address of the same server: the same cache, nothing scored again.
    log = vllm.control()
    again = run_benchmark(pytester, "again", f"vllm:{SERVED_NAME}",
                          "--rmb-model-arg", f"base_url=http://localhost:{vllm.port}/v1")
    assert_same_results(again, hf_reference)
    assert again[1]["engine"]["texts_scored"] == 0
    assert again[1]["engine"]["cache_hits"] == served[1]["engine"]["texts_scored"] > 0
    # The cache answers in full: no start-up probe, no self-check, not one request.
    assert [e for e in logged(log) if e["texts"]] == []
    assert again[1]["self_check"] is None and again[1]["engine"]["model_loads"] == 0
    again[0].stdout.fnmatch_lines(["engine: 0 texts scored now; model not loaded; *"])


def test_sglang_run_under_xdist_reproduces_the_hf_backend(pytester, sglang_server, long_model, hf_reference):
    pytest.importorskip("xdist")
    sglang_server.control()
    served = run_benchmark(pytester, "sglang", f"sglang:{SERVED_NAME}", "-n", "2", "--rmb-no-cache",
                           "--rmb-model-arg", f"base_url={sglang_server.url}",
                           "--rmb-model-arg", f"tokenizer={long_model}", in_subprocess=True)
    assert served[0].ret == hf_reference[0].ret
    assert_same_results(served, hf_reference)


def test_server_down_stops_the_run_at_once_naming_the_url(pytester):
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = pytester.runpytest("-p", "no:cacheprovider", "--rmb-model", f"vllm:{SERVED_NAME}", "--rmb-data",
                                "sample", "--rmb-model-arg", f"base_url={url}")
    assert time.monotonic() - started < 20
    assert result.ret != 0
    result.stdout.fnmatch_lines([f"*no vLLM server answers at {url}*"])


def test_killed_server_exits_non_zero_then_the_rerun_scores_only_the_rest(pytester, vllm, long_model, tmp_path,
                                                                           hf_reference):
    dying = Stub(long_model, tmp_path / "dying", die_after=60)
    try:
        first = run_benchmark(pytester, "first", f"vllm:{SERVED_NAME}", "--rmb-model-arg", f"base_url={dying.url}",
                              "--rmb-model-arg", "concurrency=4")
    finally:
        dying.stop()
    assert first[0].ret != 0
    output = first[0].stdout.str()
    assert f"{dying.url}/pooling" in output
    assert "stopped answering earlier in this run" in output
    cache_files = list(default_cache_dir().glob("*.jsonl"))
    assert len(cache_files) == 1
    kept = len(cache_files[0].read_text(encoding="utf-8").splitlines())
    # The stub counts an answer before writing it; when it dies, up to `concurrency` answers are
    # still unwritten, and the start-up probe's is never cached.
    assert 60 - 4 - 1 <= kept < hf_reference[1]["engine"]["texts_scored"]
    # The rerun, against a healthy server at another address: only what is missing is asked for.
    log = vllm.control()
    second = run_benchmark(pytester, "second", f"vllm:{SERVED_NAME}", "--rmb-model-arg", f"base_url={vllm.url}")
    assert second[0].ret == hf_reference[0].ret
    assert_same_results(second, hf_reference)
    assert second[1]["engine"]["cache_hits"] == kept
    scored = [e for e in logged(log) if e["texts"]]
    # + the start-up probe and the end-of-run self-check (texts re-scored alone)
    assert len(scored) == second[1]["engine"]["texts_scored"] + 1 + second[1]["self_check"]["checked"]
