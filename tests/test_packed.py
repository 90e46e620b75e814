"""Padding-free (packed) batches: every text scores what it scores alone (one unpadded forward of
its tokens, computed here without pytest_rmb), on Llama-, Qwen2- and Gemma-shaped decoders, with a
pad token of its own or the EOS as pad; models that cannot be packed say why; a run with packing
gives the outcomes of a run without it."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GemmaConfig,
    GemmaForSequenceClassification,
    Qwen2Config,
    Qwen2ForSequenceClassification,
)

from pytest_rmb.backends import ModelLoadError, ModelSettings
from pytest_rmb.backends._transformers import packed_pays
from pytest_rmb.backends.hf import load_hf
from pytest_rmb.data import Message
from pytest_rmb.models import ScoreRequest
from pytest_rmb.prefix import MASKED_PAIR_COST, CostModel
from tests.helpers import assert_same_outcomes, run_files, run_rmb
from tests.tiny_models import decoder_tokenizer, save_decoder, save_encoder

SORT = (Message("user", "How do I sort a list of strings in Python?"),)
FOX = (Message("user", "The quick brown fox"),)
# Lengths far apart, so that a padded batch of them is mostly padding.
REQUESTS = [
    ScoreRequest(SORT, "Use sorted(items, key=len)."),
    ScoreRequest(SORT, ""),
    ScoreRequest(SORT, "I can't help with that request, but here is a safer option. " * 3),
    ScoreRequest(FOX, "jumps over the lazy dog."),
    ScoreRequest(FOX, "0123456789 " * 12),
]

# One long text and many short ones: a padded batch of them is nearly all padding.
SKEWED = [ScoreRequest(FOX, "0123456789 " * 12)] + [ScoreRequest(FOX, word) for word in ("Yes.", "No.", "", "Sure.",
                                                                                         "Hi", "OK", "dog", "fox")]


def save_other(path, kind: str, *, pad: bool = True):
    """A tiny Qwen2- or Gemma-shaped reward model (random weights, fixed seed) with the decoder tokenizer."""
    tokenizer = decoder_tokenizer(pad=pad)
    torch.manual_seed(1)
    shape = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, num_labels=1,
                 pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                 eos_token_id=tokenizer.eos_token_id)
    if kind == "qwen2":
        model = Qwen2ForSequenceClassification(Qwen2Config(**shape))
    else:
        model = GemmaForSequenceClassification(GemmaConfig(head_dim=8, **shape))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("packed-models")
    return {
        "llama": save_decoder(root / "llama"),
        "llama-pad-is-eos": save_decoder(root / "llama-pad-is-eos", pad=False),
        "qwen2": save_other(root / "qwen2", "qwen2"),
        "gemma": save_other(root / "gemma", "gemma"),
        "gemma-pad-is-eos": save_other(root / "gemma-pad-is-eos", "gemma", pad=False),
        "encoder": save_encoder(root / "encoder"),
    }


def load(path, packing: str, **settings):
    settings.setdefault("device", "cpu")
    settings.setdefault("prefix_sharing", "off")
    return load_hf(ModelSettings(str(path), args={"packing": packing}, **settings))


def token_rows(path, requests):
    """Each text as the model reads it: the chat template, no added special tokens."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = []
    for request in requests:
        messages = [{"role": m.role, "content": m.content} for m in request.conversation]
        messages.append({"role": "assistant", "content": request.response})
        rows.append(tokenizer(tokenizer.apply_chat_template(messages, tokenize=False),
                              add_special_tokens=False)["input_ids"])
    return rows


def alone(path, requests):
    """What the model says about each text alone: one unpadded forward per text, its own pooling."""
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    if model.config.pad_token_id is None:
        model.config.pad_token_id = AutoTokenizer.from_pretrained(path).eos_token_id
    scores = []
    for row in token_rows(path, requests):
        with torch.inference_mode():
            scores.append(model(input_ids=torch.tensor([row])).logits[0, 0].item())
    return scores, model.config.pad_token_id


@pytest.mark.parametrize("kind", ["llama", "llama-pad-is-eos", "qwen2", "gemma", "gemma-pad-is-eos"])
def test_packed_batch_scores_each_text_as_alone_and_counts_the_padding_it_spared(models, kind):
    expected, pad = alone(models[kind], REQUESTS)
    model = load(models[kind], "on")
    assert model.describe()["packing"] == "on (every batch of two or more texts)"
    assert model.score(REQUESTS) == pytest.approx(expected, abs=1e-4)
    rows = token_rows(models[kind], REQUESTS)
    # Padded: every row as wide as the longest. Packed: each row up to its last token that is not
    # the pad token (with EOS as pad, a template's closing EOS is not run).
    last_real = [max(i for i, token in enumerate(row) if token != pad) + 1 for row in rows]
    counters = model.take_counters()
    assert counters["packed_batches"] == 1
    assert counters["packed_pad_tokens_saved"] == len(rows) * max(map(len, rows)) - sum(last_real)
    if kind.endswith("pad-is-eos"):
        assert sum(last_real) < sum(map(len, rows))
    # A text alone is never packed: the self-check's rescoring takes the padded path.
    assert model.score(REQUESTS[:1]) == pytest.approx(expected[:1], abs=1e-4)
    assert "packed_batches" not in model.take_counters()


def test_off_never_packs_and_says_so(models):
    expected, _ = alone(models["llama"], REQUESTS)
    model = load(models["llama"], "off")
    assert model.score(REQUESTS) == pytest.approx(expected, abs=1e-4)
    assert model.take_counters() == {"truncated": 0}
    assert model.describe()["packing"] == "off (--rmb-model-arg packing=off)"


def test_auto_packs_a_batch_only_where_the_cost_model_says_it_pays(models):
    model = load(models["llama"], "auto")
    assert model.describe()["packing"].startswith("auto: supported (a block mask over the row")
    cost = CostModel.of(model.model, 4096)
    rows = token_rows(models["llama"], SKEWED)
    widths = [len(row) for row in rows]
    width, total = max(widths), sum(widths)
    padded = len(widths) * (cost.per_token * width + cost.per_pair * width * width * MASKED_PAIR_COST)
    packed = cost.per_token * total + cost.per_pair * total * total * MASKED_PAIR_COST
    assert packed < padded  # one long text, many short: packing pays even with a mask over the row
    expected, _ = alone(models["llama"], SKEWED)
    assert model.score(SKEWED) == pytest.approx(expected, abs=1e-4)
    assert model.take_counters()["packed_batches"] == 1

    # Texts of one length: no padding to spare, and the packed row's mask costs more.
    same = [ScoreRequest(FOX, "lazy dog"), ScoreRequest(FOX, "brown fox")]
    assert len(set(map(len, token_rows(models["llama"], same)))) == 1
    model.score(same)
    assert "packed_batches" not in model.take_counters()


def test_packed_pays_by_hand():
    # 100 FLOPs a token, 10 a (query, key) pair.
    cost = CostModel(per_token=100.0, per_pair=10.0, alone_over=2048)
    # Padded: 3 rows of 8, masked: 3 * (800 + 10 * 64 * 1.25) = 4800.
    # Packed, masked row: 100 * 11 + 10 * 121 * 1.25 = 2612.5; varlen: 1100 + 10 * 33 = 1430.
    assert packed_pays(cost, [8, 2, 1], varlen=False)
    assert packed_pays(cost, [8, 2, 1], varlen=True)
    # Equal widths: padded is unmasked, 3 * (800 + 10 * 32) = 3360; masked row: 2400 + 10 * 576 * 1.25 = 9600;
    # varlen: 2400 + 10 * 96 = 3360, not less.
    assert not packed_pays(cost, [8, 8, 8], varlen=False)
    assert not packed_pays(cost, [8, 8, 8], varlen=True)
    assert not packed_pays(cost, [8], varlen=True)


def test_an_encoder_is_not_packed_and_on_says_why(models):
    model = load(models["encoder"], "auto")
    assert model.describe()["packing"].startswith("off (its head is not a last-token score layer")
    with pytest.raises(ModelLoadError, match=r"--rmb-model-arg packing=on: .* cannot score padding-free batches: "
                                             r"its head is not a last-token score layer.*use packing=auto or "
                                             r"packing=off"):
        load(models["encoder"], "on")


def test_a_model_whose_packed_rows_leak_across_texts_falls_back(models, monkeypatch):
    """With a cache, transformers does not see packed position ids and lets texts attend to each
    other: the probe catches it, auto pads, on refuses."""
    from pytest_rmb.backends import _transformers

    real = _transformers.packed_forward

    def leaky(model, rows, pad_id, reward_index):
        base = getattr(model, model.base_model_prefix)
        forward = base.forward
        base.forward = lambda **kw: forward(**{**kw, "position_ids": None})
        try:
            return real(model, rows, pad_id, reward_index)
        finally:
            del base.forward

    monkeypatch.setattr("pytest_rmb.backends.hf.packed_forward", leaky)
    model = load(models["llama"], "auto")
    assert model.describe()["packing"].startswith("off (scores of a packed row differ from padded ones")
    with pytest.raises(ModelLoadError, match="packing=on: .*scores of a packed row differ from padded ones"):
        load(models["llama"], "on")


def test_packing_with_prefix_sharing_packs_the_unshared_batches(models):
    # Two answers to conversations of their own: no prefix to share, so they go in a plain batch.
    alone_in_conversation = [ScoreRequest((Message("user", "Hi"),), "Hello!"),
                             ScoreRequest((Message("user", "Translate to French: where is the train station?"),),
                                          "Where is the train station? " * 4)]
    requests = REQUESTS + alone_in_conversation
    expected, _ = alone(models["llama"], requests)
    model = load(models["llama"], "on", prefix_sharing="on")
    costs = model.cost(requests)
    scores = [0.0] * len(requests)
    for batch in model.plan_batches(requests, costs, 64, 4096):
        for index, value in zip(batch, model.score([requests[i] for i in batch])):
            scores[index] = value
    assert scores == pytest.approx(expected, abs=1e-4)
    counters = model.take_counters()
    assert counters["prefix_shared_texts"] == len(REQUESTS)
    lengths = [len(row) for row in token_rows(models["llama"], alone_in_conversation)]
    assert counters["packed_batches"] == 1
    assert counters["packed_pad_tokens_saved"] == 2 * max(lengths) - sum(lengths)


run = partial(run_rmb, options=("--rmb-data", "sample", "--rmb-device", "cpu", "--rmb-no-cache"))


def test_plugin_runs_with_packing_on_and_off_give_the_same_outcomes(pytester, models):
    runs = {}
    for mode in ("on", "off"):
        result = run(pytester, "--rmb-model", str(models["llama"]), "--rmb-model-arg", f"packing={mode}",
                     "--rmb-prefix-sharing", "off", "--rmb-jsonl", f"{mode}.jsonl", "--rmb-json", f"{mode}.json")
        assert result.ret == 0
        runs[mode] = run_files(pytester.path, mode)
    (on, _), (off, _) = runs["on"], runs["off"]
    assert on["engine"]["packed_batches"] > 0 and on["engine"]["packed_pad_tokens_saved"] > 0
    assert "packed_batches" not in off["engine"]
    assert on["provenance"]["model_info"]["packing"] == "on (every batch of two or more texts)"
    assert off["provenance"]["model_info"]["packing"] == "off (--rmb-model-arg packing=off)"
    assert_same_outcomes(runs["on"], runs["off"])


def test_plugin_self_check_passes_with_packing_and_bad_values_are_named(pytester, models):
    # The self-check needs the score cache: it re-scores texts of the run alone (padded, one row).
    result = run_rmb(pytester, "--rmb-data", "sample", "--rmb-device", "cpu", "--rmb-cache-dir", "cache",
                     "--rmb-model", str(models["llama"]), "--rmb-model-arg", "packing=on",
                     "--rmb-self-check", "8", "--rmb-json", "checked.json")
    assert result.ret == 0
    summary = json.loads((pytester.path / "checked.json").read_text())
    assert summary["engine"]["packed_batches"] > 0
    check = summary["self_check"]
    assert check["checked"] == 8 and check["ok"] and check["max_abs_diff"] <= 1e-4

    result = run(pytester, "--rmb-model", str(models["encoder"]), "--rmb-model-arg", "packing=on")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(["*--rmb-model-arg packing=on: *cannot score padding-free batches: its head is not "
                                 "a last-token score layer (an encoder such as BERT pools its first token); use "
                                 "packing=auto or packing=off*"])

    result = run(pytester, "--rmb-model", str(models["llama"]), "--rmb-model-arg", "packing=sometimes")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--rmb-model-arg packing: expected one of auto, on, off, got 'sometimes'*"])


def test_flash_attention_gets_the_text_boundaries_once(models, monkeypatch):
    """With FlashAttention, each packed text's start and the longest text go to the base model as
    transformers' varlen arguments (computed here from the token rows); other kernels ignore them."""
    from pytest_rmb.backends import _transformers

    model = load(models["llama"], "on")
    base = model.model.model
    seen = []
    forward = base.forward

    def watching(**kwargs):
        seen.append({k: kwargs.get(k) for k in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")})
        return forward(**kwargs)

    monkeypatch.setattr(base, "forward", watching)
    monkeypatch.setattr(_transformers, "varlen_attention", lambda model: True)
    expected, pad = alone(models["llama"], REQUESTS)
    assert model.score(REQUESTS) == pytest.approx(expected, abs=1e-4)
    lengths = [len(row) for row in token_rows(models["llama"], REQUESTS)]  # this tokenizer's pad is not EOS
    starts = [sum(lengths[:i]) for i in range(len(lengths) + 1)]
    assert seen[-1]["cu_seq_lens_q"].tolist() == seen[-1]["cu_seq_lens_k"].tolist() == starts
    assert seen[-1]["max_length_q"] == seen[-1]["max_length_k"] == max(lengths)


# -- dpo: a causal LM's token log-probabilities from a packed row ----------------------------------


@pytest.fixture(scope="module")
def causal(tmp_path_factory):
    from tests.tiny_models import save_causal_lm

    root = tmp_path_factory.mktemp("packed-causal")
    return {"policy": save_causal_lm(root / "policy", seed=0), "reference": save_causal_lm(root / "reference", seed=1)}


def load_dpo(causal, packing: str, reference: bool = True):
    from pytest_rmb.backends.dpo import BACKEND

    given = [("packing", packing)] + ([("ref", str(causal["reference"]))] if reference else [("ref_free", "avg")])
    return BACKEND.load(ModelSettings(f"dpo:{causal['policy']}", device="cpu", dtype="float32",
                                      args=BACKEND.parse_args(given)))


def dpo_lengths(path, requests):
    """Tokens of each text as the DPO scorer reads it: the tokenizer's BOS, then the templated chat."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    lengths = []
    for request in requests:
        messages = [{"role": m.role, "content": m.content} for m in request.conversation]
        messages.append({"role": "assistant", "content": request.response})
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        lengths.append(1 + len(tokenizer(full, add_special_tokens=False)["input_ids"]))
    return lengths


def test_dpo_packed_rewards_are_each_text_alone(causal):
    from tests.test_dpo import expected_rewards

    expected = expected_rewards(causal["policy"], causal["reference"], SKEWED)
    model = load_dpo(causal, "on")
    assert model.describe()["packing"] == "on (every batch of two or more texts)"
    assert model.score(SKEWED) == pytest.approx(expected, abs=1e-4)
    lengths = dpo_lengths(causal["policy"], SKEWED)
    assert model.take_counters() == {"truncated": 0, "packed_batches": 1,
                                     "packed_pad_tokens_saved": len(lengths) * max(lengths) - sum(lengths)}
    off = load_dpo(causal, "off")
    assert off.score(SKEWED) == pytest.approx(expected, abs=1e-4)
    assert off.take_counters() == {"truncated": 0}
    assert off.describe()["packing"] == "off (--rmb-model-arg packing=off)"


def test_dpo_reference_free_packed_and_a_leaking_model_refused(causal, monkeypatch):
    from tests.test_dpo import expected_rewards

    expected = expected_rewards(causal["policy"], None, SKEWED, "avg")
    model = load_dpo(causal, "auto", reference=False)
    model.load()  # the weights load on first need; packing is decided with them
    assert model.describe()["packing"].startswith("auto: supported (a block mask")
    assert model.score(SKEWED) == pytest.approx(expected, abs=1e-4)
    assert model.take_counters()["packed_batches"] == 1

    # Position ids dropped on the way to the model: texts of one row see each other.
    from pytest_rmb.backends import _transformers

    inputs = _transformers.PackedRow.inputs
    monkeypatch.setattr(_transformers.PackedRow, "inputs",
                        lambda self, model: {**inputs(self, model), "position_ids": None})
    with pytest.raises(ModelLoadError, match=r"packing=on: .*log-probabilities of a packed row differ from padded"):
        load_dpo(causal, "on", reference=False).score(SKEWED[:2])


def test_plugin_dpo_runs_with_packing_on_and_off_give_the_same_outcomes(pytester, causal):
    runs = {}
    for mode in ("on", "off"):
        result = run(pytester, "--rmb-model", f"dpo:{causal['policy']}", "--rmb-model-arg",
                     f"ref={causal['reference']}", "--rmb-model-arg", f"packing={mode}", "--rmb-prefix-sharing", "off",
                     "--rmb-jsonl", f"{mode}.jsonl", "--rmb-json", f"{mode}.json")
        assert result.ret == 0
        runs[mode] = run_files(pytester.path, mode)
    (on, _), (off, _) = runs["on"], runs["off"]
    assert on["engine"]["packed_batches"] > 0 and "packed_batches" not in off["engine"]
    assert on["provenance"]["model_info"]["packing"] == "on (every batch of two or more texts)"
    assert_same_outcomes(runs["on"], runs["off"])
