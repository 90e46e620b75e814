"""DPO models as reward models: implicit rewards checked against an independent computation (one
text at a time, float64 log-softmax) and against RewardBench's own ``DPOInference``, load-time
errors, truncation, caching, and end-to-end runs on the bundled sample."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pytest_rmb.backends import ModelLoadError, ModelSettings
from pytest_rmb.backends.dpo import BACKEND, DPORewardModel
from pytest_rmb.backends import RMBWarning
from pytest_rmb.data import Message
from pytest_rmb.models import ScoreRequest
from tests.helpers import SAMPLE_DATA
from tests.tiny_models import CAUSAL_TEMPLATE, save_causal_lm, save_decoder

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
MODES = ["ref", "avg", "sum", "norm"]
REWARDBENCH_HINT = (
    "rewardbench is not installed: pip install --no-deps --target DIR rewardbench==0.1.4 and set "
    "RMB_REWARDBENCH_PATH=DIR (its dpo.py needs only torch and numpy; a full install pins transformers 4.51)"
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models gain nothing from threads, and on a shared 2-core machine they lose 5x to contention.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo-models")
    bos_template = "{{ bos_token }}" + CAUSAL_TEMPLATE
    return {
        "policy": save_causal_lm(root / "policy", seed=1),
        "reference": save_causal_lm(root / "reference", seed=2),
        # The policy's weights (same seed) behind other tokenizer settings.
        "policy-left": save_causal_lm(root / "policy-left", seed=1, padding_side="left"),
        "policy-bos": save_causal_lm(root / "policy-bos", seed=1, template=bos_template),
        "policy-plain": save_causal_lm(root / "policy-plain", seed=1, template=None),
        "policy-short": save_causal_lm(root / "policy-short", seed=1, max_length=32),
        "other-vocab": save_causal_lm(root / "other-vocab", seed=2, extra_tokens=("<tool>",)),
        "other-ids": save_causal_lm(root / "other-ids", seed=2, lowercase=True),
        "classifier": save_decoder(root / "classifier"),
    }


def settings_for(policy, *args: str, **options) -> ModelSettings:
    options.setdefault("device", "cpu")
    pairs = [tuple(a.split("=", 1)) for a in args]
    return ModelSettings(f"dpo:{policy}", args=BACKEND.parse_args(pairs), **options)


def load(models, mode="ref", *args: str, policy="policy", **options) -> DPORewardModel:
    given = [f"ref={models['reference']}"] if mode == "ref" else [f"ref_free={mode}"]
    model = BACKEND.load(settings_for(models[policy], *given, *args, **options))
    assert isinstance(model, DPORewardModel)
    return model


def chat(request: ScoreRequest) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in request.conversation]


def expected_rewards(policy, reference, requests, mode="ref", *, beta=1.0, max_length=None, template=True):
    """Each text alone, no padding, log-softmax in float64: computed without pytest_rmb."""
    tokenizer = AutoTokenizer.from_pretrained(policy)
    nets = [AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval() for p in (policy, reference) if p]
    bos = tokenizer.bos_token_id
    rewards = []
    for request in requests:
        if template:
            prompt = tokenizer.apply_chat_template(chat(request), tokenize=False, add_generation_prompt=True)
            full = tokenizer.apply_chat_template(
                chat(request) + [{"role": "assistant", "content": request.response}], tokenize=False
            )
            # The test template writes no BOS; the tokenizer puts one before plain text.
            prompt_ids = [bos] + tokenizer(prompt, add_special_tokens=False)["input_ids"]
            ids = [bos] + tokenizer(full, add_special_tokens=False)["input_ids"]
        else:
            prompt = "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in chat(request))
            prompt += "\n\nAssistant:"
            prompt_ids = tokenizer(prompt)["input_ids"]
            ids = tokenizer(f"{prompt} {request.response}")["input_ids"] + [tokenizer.eos_token_id]
        assert ids[: len(prompt_ids)] == prompt_ids
        start = len(prompt_ids)
        if max_length is not None and len(ids) > max_length:
            cut = len(ids) - max_length
            ids, start = ids[:1] + ids[cut + 1:], max(start - cut, 1)
        tokens = torch.tensor(ids)
        per_model = []
        for net in nets:
            with torch.no_grad():
                logps = net(tokens[None]).logits[0].double().log_softmax(-1)
            # Token i is predicted at position i - 1.
            per_model.append(logps[torch.arange(start - 1, len(ids) - 1), tokens[start:]])
        policy_logps = per_model[0]
        if mode == "ref":
            value = policy_logps.sum() - per_model[1].sum()
        elif mode == "sum":
            value = policy_logps.sum()
        elif mode == "avg":
            value = policy_logps.mean()
        else:
            value = -torch.sqrt((policy_logps ** 2).sum())
        rewards.append(beta * value.item())
    return rewards


@pytest.mark.parametrize("mode", MODES)
def test_rewards_match_an_independent_computation_alone_and_in_any_batch(models, mode):
    model = load(models, mode)
    reference = models["reference"] if mode == "ref" else None
    expected = expected_rewards(models["policy"], reference, REQUESTS, mode)
    assert model.score(REQUESTS) == pytest.approx(expected, abs=1e-4)
    assert [model.score([r])[0] for r in REQUESTS] == pytest.approx(expected, abs=1e-4)
    order = list(range(len(REQUESTS)))
    random.Random(3).shuffle(order)
    shuffled = model.score([REQUESTS[i] for i in order])
    assert [shuffled[order.index(i)] for i in range(len(REQUESTS))] == pytest.approx(expected, abs=1e-4)
    assert len(set(expected)) == len(expected)  # the check has teeth: the rewards differ


def test_beta_scales_every_reward_and_no_ranking(models):
    plain = load(models).score(REQUESTS)
    scaled = load(models, "ref", "beta=0.1").score(REQUESTS)
    assert scaled == pytest.approx([0.1 * value for value in plain], abs=1e-5)
    assert sorted(range(len(plain)), key=plain.__getitem__) == sorted(range(len(scaled)), key=scaled.__getitem__)


def test_padding_side_and_a_bos_written_by_the_template_change_nothing(models):
    expected = load(models, "sum").score(REQUESTS)
    for name in ("policy-left", "policy-bos"):
        model = load(models, "sum", policy=name)
        assert model.score(REQUESTS) == pytest.approx(expected, abs=1e-4)
        for ids, _ in model.encode(REQUESTS):
            assert ids[0] == model.tokenizer.bos_token_id and ids[1] != model.tokenizer.bos_token_id


def test_response_tokens_are_the_answer_and_the_turn_end(models):
    model = load(models, "sum")
    tokenizer = model.tokenizer
    (ids, start), = model.encode([REQUESTS[0]])
    assert tokenizer.decode(ids[start:]) == REQUESTS[0].response + tokenizer.eos_token
    assert tokenizer.decode(ids[:start]).endswith("strings in Python?</s><|assistant|>")
    (ids, start), = model.encode([REQUESTS[1]])  # an empty answer: only its turn end is scored
    assert ids[start:] == [tokenizer.eos_token_id]


def test_without_a_chat_template_plain_rendering_closed_by_eos(models):
    with pytest.warns(RMBWarning, match="no chat template"):
        model = load(models, "sum", policy="policy-plain")
    expected = expected_rewards(models["policy-plain"], None, REQUESTS, "sum", template=False)
    assert model.score(REQUESTS) == pytest.approx(expected, abs=1e-4)


def test_long_texts_keep_their_end_and_are_counted(models):
    model = load(models, "ref", max_length=24)
    lengths = [len(ids) for ids, _ in model.encode(REQUESTS)]
    long = sum(1 for n in lengths if n > 24)
    assert long >= 2 and model.cost(REQUESTS) == [min(n, 24) for n in lengths]
    expected = expected_rewards(models["policy"], models["reference"], REQUESTS, max_length=24)
    assert model.score(REQUESTS) == pytest.approx(expected, abs=1e-4)
    assert model.take_counters() == {"truncated": long}
    assert model.take_counters() == {"truncated": 0}


def test_cost_is_tokens_and_the_budget_is_the_classifiers(models):
    model = load(models)
    tokenizer = AutoTokenizer.from_pretrained(models["policy"])
    counted = [len(tokenizer(tokenizer.apply_chat_template(
        chat(r) + [{"role": "assistant", "content": r.response}], tokenize=False))["input_ids"]) for r in REQUESTS]
    assert model.cost(REQUESTS) == counted
    assert model.batch_tokens == 4096  # CPU; 16384 on a GPU, as for sequence classifiers


def test_default_max_length_is_the_smallest_limit(models):
    assert load(models).max_length == 1024
    assert load(models, "avg", policy="policy-short").max_length == 32
    with pytest.raises(ModelLoadError, match="accepts at most 32 tokens"):
        load(models, "avg", policy="policy-short", max_length=64)


def test_both_models_load_in_the_requested_dtype(models):
    model = load(models, dtype="bfloat16")
    assert model.policy.dtype == torch.bfloat16 and model.reference.dtype == torch.bfloat16
    assert model.describe()["dtype"] == "bfloat16"
    assert all(isinstance(v, float) for v in model.score(REQUESTS[:2]))
    assert load(models).reference.dtype == torch.float32


def test_the_reference_sits_beside_the_policy_unless_ref_device_says(models):
    assert load(models).describe()["reference"]["device"] == "cpu"
    assert load(models, "ref", "ref_device=cpu").describe()["reference"]["device"] == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="ref_device=cuda:1: CUDA is not available"):
            load(models, "ref", "ref_device=cuda:1")


def test_fingerprint_covers_both_models_and_every_setting(models, tmp_path):
    base = load(models).fingerprint()
    assert base == load(models).fingerprint()
    template = tmp_path / "template.jinja"
    template.write_text(CAUSAL_TEMPLATE.replace("<|assistant|>", "<|bot|>"))
    variants = [
        load(models, "ref", "beta=2"),
        load(models, "avg"),
        load(models, "sum"),
        load(models, "ref", dtype="bfloat16"),
        load(models, "ref", max_length=512),
        load(models, "ref", chat_template=str(template)),
        BACKEND.load(settings_for(models["policy"], f"ref={models['policy-left']}")),  # other reference weights
        BACKEND.load(settings_for(models["reference"], f"ref={models['reference']}")),  # other policy weights
    ]
    prints = [m.fingerprint() for m in variants]
    assert base not in prints and len(set(prints)) == len(prints)


@pytest.mark.parametrize(
    ("policy", "given", "message"),
    [
        ("policy", ["ref=other-vocab"], r"dpo:.*ref=.*: the tokenizers differ \(\d+ vs \d+ tokens"),
        ("policy", ["ref=other-ids"], r"the tokenizers split the same text differently"),
        ("policy", ["ref=missing"], r"--rmb-model-arg ref=.*missing: no such directory"),
        ("policy", ["ref=classifier"], r"ref=.*classifier: the checkpoint has no trained language-model head"),
        ("classifier", ["ref_free=avg"], r"--rmb-model dpo:.*classifier: the checkpoint has no trained language"),
        ("policy", ["ref=reference", "ref_free=sum"], r"ref_free=sum applies only without ref"),
        ("empty", [], r"--rmb-model dpo:: no policy model; expected dpo:POLICY"),
    ],
)
def test_load_errors_name_the_model(models, tmp_path, policy, given, message):
    def path(name):
        return str(tmp_path / name) if name == "missing" else "" if name == "empty" else str(models[name])

    args = [f"{key}={path(value) if key == 'ref' else value}" for key, value in (g.split("=") for g in given)]
    with pytest.raises(ModelLoadError, match=message):
        BACKEND.load(settings_for(path(policy), *args))


def test_a_reward_index_does_not_apply(models):
    with pytest.raises(ModelLoadError, match="--rmb-reward-index 1: a DPO reward is a log-probability ratio"):
        BACKEND.load(settings_for(models["policy"], "ref_free=avg", reward_index=1))


@pytest.mark.parametrize(("given", "message"), [
    (("beta", "0"), "--rmb-model-arg beta: expected a finite number > 0"),
    (("ref_free", "mean"), "--rmb-model-arg ref_free: expected one of norm, avg, sum"),
])
def test_bad_settings_are_refused_before_loading(given, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        BACKEND.parse_args([given])


# -- RewardBench parity ----------------------------------------------------------------------------


def rewardbench_dpo() -> types.ModuleType:
    """RewardBench's dpo.py, loaded alone: the package's __init__ imports its whole CLI stack."""
    root = os.environ.get("RMB_REWARDBENCH_PATH")
    path = None
    if root:
        path = Path(root) / "rewardbench" / "dpo.py"
    else:
        spec = importlib.util.find_spec("rewardbench")
        if spec is not None and spec.submodule_search_locations:
            path = Path(next(iter(spec.submodule_search_locations))) / "dpo.py"
    if path is None or not path.is_file():
        pytest.skip(REWARDBENCH_HINT)
    module_spec = importlib.util.spec_from_file_location("rewardbench_dpo", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def rewardbench_rewards(policy, reference, requests, mode="ref", *, dtype=torch.float32, batch_size=6):
    """Per-text rewards from RewardBench's DPOInference, fed as its run_dpo.py feeds it.

    Common rendering: RewardBench renders the prompt without the generation prompt and appends an
    EOS to every answer itself. We give it our context (with the generation prompt) and the full
    text without the template's closing EOS, which it then appends: the same tokens as ours.
    """
    dpo = rewardbench_dpo()
    tokenizer = AutoTokenizer.from_pretrained(policy)
    policy_net = AutoModelForCausalLM.from_pretrained(policy, dtype=dtype)
    reference_net = AutoModelForCausalLM.from_pretrained(reference, dtype=dtype) if mode == "ref" else None
    inference = dpo.DPOInference(policy_net, reference_net, tokenizer,
                                 types.SimpleNamespace(device=torch.device("cpu")),
                                 ref_free_norm="norm" if mode == "ref" else mode)
    rows = []
    for request in requests:
        prompt = tokenizer.apply_chat_template(chat(request), tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(chat(request) + [{"role": "assistant", "content": request.response}],
                                             tokenize=False)
        assert full.startswith(prompt) and full.endswith(tokenizer.eos_token)
        text = full[: -len(tokenizer.eos_token)]
        rows.append(inference.tokenize_row({"prompt": prompt, "text_chosen": text, "text_rejected": text}))
    rewards: list[float] = []
    for first in range(0, len(rows), batch_size):
        chunk = rows[first:first + batch_size]
        batch = {}
        # What trl's DPODataCollatorWithPadding does for these keys: right padding.
        for key in chunk[0]:
            if not key.startswith(("chosen_", "rejected_")):
                continue
            pad = -100 if key.endswith("labels") else 0 if key.endswith("attention_mask") else tokenizer.pad_token_id
            width = max(len(row[key]) for row in chunk)
            batch[key] = torch.tensor([row[key] + [pad] * (width - len(row[key])) for row in chunk])
        chosen, _ = inference.inference_step(batch, ref_free=mode != "ref")
        rewards.extend(chosen.double().tolist())
    return rewards


def float64_model(models, mode) -> DPORewardModel:
    """Our model class over float64 weights (--rmb-dtype stops at float32): exact sums on both sides."""
    given = [f"ref={models['reference']}"] if mode == "ref" else [f"ref_free={mode}"]
    nets = [AutoModelForCausalLM.from_pretrained(models[name], dtype=torch.float64)
            for name in (("policy", "reference") if mode == "ref" else ("policy",))]
    settings = settings_for(models["policy"], *given)
    return DPORewardModel(nets[0], nets[1] if mode == "ref" else None, AutoTokenizer.from_pretrained(models["policy"]),
                          settings, beta=0.5, ref_free=settings.args["ref_free"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("mode", MODES)
def test_parity_with_rewardbench_dpo_inference(models, mode, dtype):
    rewardbench_dpo()  # skips at once when it is not installed
    reference = models["reference"] if mode == "ref" else None
    beta = 0.5
    model = load(models, mode, f"beta={beta}") if dtype == torch.float32 else float64_model(models, mode)
    ours = model.score(REQUESTS)
    theirs = rewardbench_rewards(models["policy"], reference, REQUESTS, mode, dtype=dtype)
    differences = [abs(a / beta - b) for a, b in zip(ours, theirs)]
    print(f"max |ours/beta - rewardbench| ({mode}, {dtype}): {max(differences):.3g}")
    assert max(differences) < 1e-4


def test_parity_with_rewardbench_on_every_sample_text_in_float64(models):
    rewardbench_dpo()
    requests = unique_sample_requests()
    ours = float64_model(models, "ref").score(requests)
    theirs = rewardbench_rewards(models["policy"], models["reference"], requests, dtype=torch.float64)
    differences = [abs(a / 0.5 - b) for a, b in zip(ours, theirs)]
    print(f"max |ours/beta - rewardbench| over {len(requests)} sample texts (ref, float64): {max(differences):.3g}")
    assert max(differences) < 1e-4


# -- end to end on the bundled sample --------------------------------------------------------------


def sample_records():
    """(goal, kind, record) for every record of the bundled sample, read with json alone."""
    for path in sorted(SAMPLE_DATA.glob("*_set/**/*.json")):
        relative = path.relative_to(SAMPLE_DATA).parts
        kind = "pairwise" if relative[0] == "Pairwise_set" else "bon"
        for record in json.loads(path.read_text(encoding="utf-8")):
            yield relative[1].lower(), kind, record


def record_requests(record) -> list[ScoreRequest]:
    conversation = tuple(Message(m["role"], m["content"]) for m in record["conversation_input"])
    answers = ([record["chosen"], record["reject"]] if "pair_uid" in record
               else [record["bon_best"], *record["loser_list"]])
    return [ScoreRequest(conversation, a["answer"]) for a in answers]


def tally(reward_of) -> dict[str, tuple[int, int]]:
    """RMB's four sections from per-text rewards: best strictly above every other answer."""
    sections: dict[str, list[int]] = {}
    for goal, kind, record in sample_records():
        best, *others = (reward_of[r] for r in record_requests(record))
        counts = sections.setdefault(f"{goal}.{kind}", [0, 0])
        counts[0] += all(best > other for other in others)
        counts[1] += 1
    return {name: (correct, total) for name, (correct, total) in sections.items()}


def unique_sample_requests() -> list[ScoreRequest]:
    return list(dict.fromkeys(r for _, _, record in sample_records() for r in record_requests(record)))


def run_pytest(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    # One torch thread: see one_thread. The score cache of the folder the run starts in: a
    # module's first run and its tests' reruns share it, and nothing else does.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(cwd / ".cache")}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rmb-data", "sample", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=900, env=env, check=False)


def mode_args(models, mode) -> list[str]:
    setting = f"ref={models['reference']}" if mode == "ref" else f"ref_free={mode}"
    return ["--rmb-model", f"dpo:{models['policy']}", "--rmb-model-arg", setting]


@pytest.fixture(scope="module", params=["ref", "avg"])
def sample_run(request, models, tmp_path_factory):
    """One real `pytest --rmb-model dpo:...` run over the whole bundled sample, per mode."""
    mode = request.param
    cwd = tmp_path_factory.mktemp(f"dpo-run-{mode}")
    result = run_pytest(cwd, *mode_args(models, mode), "--rmb-json", "s.json", "--rmb-jsonl", "s.jsonl")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((cwd / "s.json").read_text())
    samples = [json.loads(line) for line in (cwd / "s.jsonl").read_text().splitlines()]
    return mode, cwd, summary, samples


def sections_of(summary) -> dict[str, tuple[int, int]]:
    return {name: (s["correct"], s["total"]) for name, s in summary["sections"].items()}


def test_sample_run_sections_match_an_independent_tally(models, sample_run):
    mode, _, summary, _ = sample_run
    requests = unique_sample_requests()
    reference = models["reference"] if mode == "ref" else None
    expected = tally(dict(zip(requests, expected_rewards(models["policy"], reference, requests, mode))))
    assert sections_of(summary) == expected
    assert 0 < sum(c for c, _ in expected.values()) < sum(t for _, t in expected.values())


def test_sample_run_matches_rewardbench(models, sample_run):
    rewardbench_dpo()
    mode, _, summary, samples = sample_run
    requests = unique_sample_requests()
    reference = models["reference"] if mode == "ref" else None
    theirs = dict(zip(requests, rewardbench_rewards(models["policy"], reference, requests, mode)))
    assert sections_of(summary) == tally(theirs)
    # Per text, against RewardBench in float64: its float32 sums round at ~1e-4 on sums of ~1000.
    exact = dict(zip(requests, rewardbench_rewards(models["policy"], reference, requests, mode, dtype=torch.float64)))
    by_uid = {(s["kind"], s["uid"]): s["scores"] for s in samples}
    differences, rounding = [], []
    for _, kind, record in sample_records():
        uid = str(record.get("pair_uid", record.get("bon_uid")))
        for ours, request in zip(by_uid[kind, uid], record_requests(record)):
            differences.append(abs(ours - exact[request]))
            rounding.append(abs(theirs[request] - exact[request]))
    print(f"{mode}: max |ours (float32 run) - rewardbench float64| over {len(differences)} sample answers: "
          f"{max(differences):.3g}; rewardbench float32 vs float64: {max(rounding):.3g}")
    assert max(differences) < 1e-4


@pytest.mark.parametrize("sample_run", ["ref"], indirect=True)
def test_a_second_run_reads_the_cache_and_other_settings_do_not(models, sample_run):
    mode, cwd, _, samples = sample_run
    first = {(s["kind"], s["uid"]): s["scores"] for s in samples if s["scenario"].startswith("chat/")}
    again = run_pytest(cwd, *mode_args(models, mode), "-k", "chat", "--rmb-json", "again.json",
                       "--rmb-jsonl", "again.jsonl")
    assert again.returncode == 0, again.stdout + again.stderr
    engine = json.loads((cwd / "again.json").read_text())["engine"]
    assert engine["texts_scored"] == 0 and engine["cache_hits"] > 0
    records = [json.loads(line) for line in (cwd / "again.jsonl").read_text().splitlines()]
    assert {(r["kind"], r["uid"]): r["scores"] for r in records} == first
    other = run_pytest(cwd, *mode_args(models, mode), "--rmb-model-arg", "beta=2", "-k", "chat",
                       "--rmb-json", "beta.json")
    assert other.returncode == 0, other.stdout + other.stderr
    assert json.loads((cwd / "beta.json").read_text())["engine"]["cache_hits"] == 0


def test_a_reference_that_cannot_load_stops_the_run_with_exit_4(models, tmp_path):
    (tmp_path / "s.json").write_text('{"earlier": "results"}')
    missing = tmp_path / "no-such-reference"
    result = run_pytest(tmp_path, "--rmb-model", f"dpo:{models['policy']}", "--rmb-model-arg", f"ref={missing}",
                        "--rmb-json", "s.json")
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    output = result.stdout + result.stderr
    assert f"--rmb-model-arg ref={missing}: no such directory" in output
    summary = json.loads((tmp_path / "s.json").read_text())
    assert "sections" not in summary and "outcomes" not in summary


def test_dpo_without_a_policy_is_a_usage_error(tmp_path):
    result = run_pytest(tmp_path, "--rmb-model", "dpo:")
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert "--rmb-model dpo:" in result.stdout + result.stderr


def test_the_backend_and_its_settings_are_listed(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pytest_rmb", "backends"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    for line in ("dpo:  a DPO-trained causal LM", "ref=MODEL", "ref_free=NORM|AVG|SUM", "beta=FLOAT (default 1.0)",
                 "ref_device=DEVICE"):
        assert line in result.stdout
