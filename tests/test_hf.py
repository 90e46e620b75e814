"""Hugging Face reward models: scores checked against an independent reference (render, tokenize,
one forward per text, no padding), batch invariance, truncation, and loading errors."""

from __future__ import annotations

import json
import random

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from pytest_rmb.data import Message
from pytest_rmb.backends import ModelLoadError, ModelSettings, load_spec
from pytest_rmb.models import ScoreRequest
from pytest_rmb.backends import RMBWarning
from pytest_rmb.backends._transformers import plain_render
from tests.helpers import SHARED_DATA, all_files
from tests.tiny_models import save_decoder, save_encoder

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


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "decoder-right": save_decoder(root / "decoder-right"),
        "decoder-left": save_decoder(root / "decoder-left", padding_side="left"),
        "decoder-nopad": save_decoder(root / "decoder-nopad", pad=False),
        "decoder-plain": save_decoder(root / "decoder-plain", template=False),
        "encoder-right": save_encoder(root / "encoder-right"),
        "encoder-left": save_encoder(root / "encoder-left", padding_side="left"),
        "decoder-2labels": save_decoder(root / "decoder-2labels", num_labels=2),
        "encoder-base": save_encoder(root / "encoder-base", head=False),
    }


def load(path, **settings):
    settings.setdefault("device", "cpu")
    return load_spec(ModelSettings(str(path), **settings))


def reference_scores(path, requests, *, template=True, index=0, max_length=None):
    """What the model says about each text alone, computed without pytest_rmb's scorer."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    scores = []
    for request in requests:
        messages = [{"role": m.role, "content": m.content} for m in request.conversation]
        messages.append({"role": "assistant", "content": request.response})
        if template:
            text = tokenizer.apply_chat_template(messages, tokenize=False)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            text = "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)
            ids = tokenizer(text)["input_ids"]
        if max_length is not None and len(ids) > max_length:
            ids = ids[:1] + ids[len(ids) - max_length + 1:]
        with torch.inference_mode():
            scores.append(model(input_ids=torch.tensor([ids])).logits[0, index].item())
    return scores


@pytest.mark.parametrize("name", ["decoder-right", "decoder-left", "encoder-right", "encoder-left"])
def test_scores_match_the_reference_alone_and_in_any_batch(models, name):
    scorer = load(models[name])
    expected = reference_scores(models[name], REQUESTS)
    assert scorer.score(REQUESTS) == pytest.approx(expected, abs=1e-5)
    assert [scorer.score([r])[0] for r in REQUESTS] == pytest.approx(expected, abs=1e-5)
    shuffled = list(range(len(REQUESTS)))
    random.Random(1).shuffle(shuffled)
    scores = scorer.score([REQUESTS[i] for i in shuffled])
    assert [scores[shuffled.index(i)] for i in range(len(REQUESTS))] == pytest.approx(expected, abs=1e-5)
    assert len(set(expected)) == len(expected)  # the texts really differ to the model


def test_the_chat_template_bos_is_not_doubled(models):
    scorer = load(models["decoder-right"])
    tokens = scorer.tokenizer(scorer.render(REQUESTS[0]), add_special_tokens=False)["input_ids"]
    assert tokens[0] == scorer.tokenizer.bos_token_id and tokens[1] != scorer.tokenizer.bos_token_id
    scorer.cost(REQUESTS[:1])
    assert scorer.cost(REQUESTS[:1]) == [len(tokens)]


def test_missing_pad_token_falls_back_to_eos(models):
    scorer = load(models["decoder-nopad"])
    assert scorer.tokenizer.pad_token == "</s>"
    assert scorer.model.config.pad_token_id == scorer.tokenizer.eos_token_id
    alone = [scorer.score([r])[0] for r in REQUESTS]
    assert scorer.score(REQUESTS) == pytest.approx(alone, abs=1e-5)


def test_tokenizer_without_template_uses_the_documented_plain_format_with_one_warning(models):
    with pytest.warns(RMBWarning, match="no chat template") as warned:
        scorer = load(models["decoder-plain"])
    assert len(warned) == 1
    assert scorer.render(REQUESTS[3]) == (
        "User: sort?\n\nAssistant: Which list?\n\nUser: strings\n\nAssistant: " + REQUESTS[3].response
    )
    assert plain_render([{"role": "user", "content": "a"}]) == "User: a"
    expected = reference_scores(models["decoder-plain"], REQUESTS, template=False)
    assert scorer.score(REQUESTS) == pytest.approx(expected, abs=1e-5)


def test_chat_template_file_option_replaces_the_fallback(models, tmp_path):
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} {% endfor %}")
    scorer = load(models["decoder-plain"], chat_template=str(template))
    assert scorer.render(REQUESTS[0]) == (
        "[user] How do I sort a list of strings in Python? [assistant] Use sorted(items, key=len). "
    )


def test_long_texts_keep_their_end_and_are_counted(models):
    scorer = load(models["decoder-right"], max_length=16)
    full = scorer.tokenizer(scorer.render(REQUESTS[3]), add_special_tokens=False)["input_ids"]
    assert len(full) > 16
    assert scorer.cost([REQUESTS[3]]) == [16]
    kept = scorer._tokens[REQUESTS[3]]
    assert kept[0] == scorer.tokenizer.bos_token_id and kept[1:] == full[-15:]
    expected = reference_scores(models["decoder-right"], [REQUESTS[3]], max_length=16)
    assert scorer.score([REQUESTS[3]]) == pytest.approx(expected, abs=1e-5)
    assert scorer.take_counters()["truncated"] >= 1
    assert scorer.take_counters() == {"truncated": 0}


def test_default_max_length_is_the_model_limit_capped_at_4096(models):
    assert load(models["decoder-right"]).max_length == 256
    assert load(models["encoder-right"]).max_length == 128
    with pytest.raises(ModelLoadError, match="accepts at most 128 tokens"):
        load(models["encoder-right"], max_length=1000)


def test_several_labels_need_a_reward_index(models):
    with pytest.raises(ModelLoadError, match=r"has 2 output labels .*--rmb-reward-index"):
        load(models["decoder-2labels"])
    scorer = load(models["decoder-2labels"], reward_index=1)
    expected = reference_scores(models["decoder-2labels"], REQUESTS, index=1)
    assert scorer.score(REQUESTS) == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ModelLoadError, match="--rmb-reward-index 2: the model has 2 output labels"):
        load(models["decoder-2labels"], reward_index=2)


def test_a_base_model_without_reward_head_is_refused(models):
    with pytest.raises(ModelLoadError, match=r"no trained reward head \(missing classifier"):
        load(models["encoder-base"])


def test_dtype_and_device_resolution_on_cpu(models):
    scorer = load(models["encoder-right"], device="auto", dtype="auto")
    assert scorer.model.dtype == torch.float32 and str(next(scorer.model.parameters()).device) == "cpu"
    assert scorer.batch_tokens == 4096  # the CPU budget; 16384 on a GPU
    assert load(models["encoder-right"], dtype="bfloat16").model.dtype == torch.bfloat16
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            load(models["encoder-right"], device="cuda:0")


def test_fingerprint_changes_with_what_scores_depend_on(models):
    base = load(models["decoder-right"]).fingerprint()
    assert base == load(models["decoder-right"]).fingerprint()
    assert base != load(models["decoder-right"], max_length=64).fingerprint()
    assert base != load(models["decoder-left"]).fingerprint()


def scenario_slice_args(path):
    return (
        "--rmb-model", str(path), "--rmb-data", str(SHARED_DATA), "--rmb-device", "cpu",
        "-k", "code/documentation", "--rmb-jsonl", "s.jsonl", "--rmb-json", "s.json", "-p", "no:cacheprovider",
    )


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real RMB data not found at {SHARED_DATA}")
@pytest.mark.parametrize("name", ["decoder-right", "encoder-right"])
def test_end_to_end_on_a_slice_of_the_real_data(pytester, models, name):
    result = pytester.runpytest(*scenario_slice_args(models[name]), "--rmb-max-length", "96")
    assert result.ret == 0
    raw = all_files(SHARED_DATA)
    pairs = raw["Pairwise_set/Helpfulness/Code/Documentation.json"]
    lists = raw["BoN_set/Helpfulness/Code/Documentation.json"]
    records = {(r["kind"], r["uid"]): r for r in map(json.loads, (pytester.path / "s.jsonl").read_text().splitlines())}
    assert len(records) == len(pairs) + len(lists)

    def request(record, answer):
        return ScoreRequest(tuple(Message(m["role"], m["content"]) for m in record["conversation_input"]), answer)

    for record in pairs[:8]:
        expected = reference_scores(models[name], [request(record, record["chosen"]["answer"]),
                                                   request(record, record["reject"]["answer"])], max_length=96)
        got = records["pairwise", record["pair_uid"]]
        assert got["scores"] == pytest.approx(expected, abs=1e-4)
        assert got["correct"] == (expected[0] > expected[1])
    summary = json.loads((pytester.path / "s.json").read_text())
    assert summary["engine"]["truncated"] > 0
    assert summary["sections"]["helpfulness.pairwise"]["total"] == len(pairs)
    assert summary["engine"]["texts_scored"] < summary["engine"]["response_slots"]
