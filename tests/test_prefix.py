"""Shared-prefix scoring: with sharing, every text scores what it scores alone (one forward of its
whole token sequence, computed here without pytest_rmb), whatever the padding side, the pad token,
the number of turns or truncation; models that cannot continue from a cache fall back."""

from __future__ import annotations

import functools
import json
import os
from functools import partial

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaForSequenceClassification

from pytest_rmb import prefix
from pytest_rmb.backends import ModelLoadError, ModelSettings
from pytest_rmb.backends.hf import HFRewardModel, load_hf
from pytest_rmb.data import Message, load_scenarios, sample_dataset
from pytest_rmb.engine import Engine
from pytest_rmb.models import ScoreRequest
from pytest_rmb.scenarios import registry
from tests.helpers import SHARED_DATA, assert_same_outcomes, run_files, run_rmb
from tests.tiny_models import decoder_tokenizer, save_decoder, save_encoder, save_long_decoder

SORT = (Message("user", "How do I sort a list of strings in Python?"),)
TURNS = (
    Message("user", "sort?"),
    Message("assistant", "Which list do you mean?"),
    Message("user", "The strings, by length please."),
)
FOX = (Message("user", "The quick brown fox"),)
REQUESTS = [
    ScoreRequest(SORT, "Use sorted(items, key=len)."),
    ScoreRequest(SORT, "Use sorted(items)"),  # a prefix of the answer above
    ScoreRequest(SORT, ""),
    ScoreRequest(SORT, "I can't help with that request, but here is a safer option."),
    ScoreRequest(TURNS, "sorted(strings, key=len) returns a new list, shortest first."),
    ScoreRequest(TURNS, "Use the key argument: key=len."),
    ScoreRequest(TURNS, "0123456789 " * 30),  # past the length limit: truncated, scored alone
    ScoreRequest(FOX, "jumps over the lazy dog."),  # the only answer to its conversation
]
LIMIT = 128


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefix-models")
    return {
        "right": save_decoder(root / "right"),
        "left": save_decoder(root / "left", padding_side="left"),
        "pad-is-eos": save_decoder(root / "pad-is-eos", pad=False),
        "encoder": save_encoder(root / "encoder"),
    }


def load(path, **settings):
    settings.setdefault("device", "cpu")
    # Prefix sharing alone: packed batches (with counters of their own) are tested in test_packed.py.
    settings.setdefault("args", {"packing": "off"})
    return load_hf(ModelSettings(str(path), **settings))


def token_rows(path, requests, max_length, template=None):
    """Each text as the model sees it: chat template, no added specials, the start cut past the limit."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    if template is not None:
        tokenizer.chat_template = template
    rows = []
    for request in requests:
        messages = [{"role": m.role, "content": m.content} for m in request.conversation]
        messages.append({"role": "assistant", "content": request.response})
        ids = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
        rows.append(ids if len(ids) <= max_length else ids[:1] + ids[len(ids) - max_length + 1:])
    return rows


def alone(path, requests, max_length, template=None):
    """What the model says about each text alone: one unpadded forward per text."""
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    if model.config.pad_token_id is None:
        # The documented fallback (TRL, RewardBench): eos pads, so the model pools the last non-eos.
        model.config.pad_token_id = AutoTokenizer.from_pretrained(path).eos_token_id
    scores = []
    for row in token_rows(path, requests, max_length, template):
        with torch.inference_mode():
            scores.append(model(input_ids=torch.tensor([row])).logits[0, 0].item())
    return scores


def shared_prefix(rows):
    """Tokens every row starts with, written out plainly (the code under test uses commonprefix)."""
    length = 0
    while all(len(row) > length and row[length] == rows[0][length] for row in rows):
        length += 1
    return length


def expected_saving(path, requests, max_length, pad_id):
    """Prefix tokens not run again: per conversation with two or more texts under the limit, the
    shared prefix (kept short enough that each text keeps its last non-pad token) once, not n times."""
    rows = token_rows(path, requests, max_length)
    groups: dict = {}
    for request, row in zip(requests, rows):
        if len(row) < max_length:
            groups.setdefault(request.conversation, []).append(row)
    saved = shared = 0
    for members in groups.values():
        if len(members) < 2:
            continue
        last_real = [max(i for i, token in enumerate(row) if token != pad_id) for row in members]
        length = min(shared_prefix(members), *last_real)
        saved += (len(members) - 1) * length
        shared += len(members)
    return saved, shared


def run_planned(model, requests, batch_size=64, batch_cost=4096):
    """What the engine does: cost, plan_batches, then score each planned batch."""
    costs = model.cost(requests)
    batches = model.plan_batches(requests, costs, batch_size, batch_cost)
    scores = [None] * len(requests)
    for batch in batches:
        for i, value in zip(batch, model.score([requests[i] for i in batch])):
            scores[i] = value
    return batches, scores


def test_split_points_stop_at_the_common_tokens_and_before_the_pooled_token():
    pad = 0
    rows = [
        [1, 5, 6, 7, 8, 9],
        [1, 5, 6, 7, 9],
        [1, 5, 6, 7, 0],  # pad id as the last token: the model pools index 3, so the split is 3
        [1, 5, 2],  # another conversation, alone: nothing to share
        [1, 5, 6, 7, 8, 9, 9, 9],  # at the limit (maybe truncated): scored alone
        [1, 5, 6, 4],
        [1, 5, 6, 3],
    ]
    groups = ["a", "a", "a", "b", "a", "c", "c"]
    assert prefix.split_points(rows, groups, pad, limit=8, min_tokens=1) == {0: 3, 1: 3, 2: 3, 5: 3, 6: 3}
    assert prefix.split_points(rows, groups, pad, limit=8, min_tokens=4) == {}
    assert prefix.pooled_index([3, 0, 0], 0) == 0 and prefix.pooled_index([3, 4, 0], 0) == 1
    assert prefix.common_prefix_length([[1, 2, 3], [1, 2], [1, 2, 4]]) == 2


def test_auto_declines_groups_whose_continuations_cost_more_than_the_texts_alone():
    rows = [[1] * 10 + [2] * 90, [1] * 10 + [3] * 90]
    lengths = {0: 10, 1: 10}
    # Linear layers only: 180 continuation tokens + 10 prefix tokens once beat 200 tokens.
    assert prefix.worth_sharing(rows, lengths, prefix.CostModel(1.0, 0.0, alone_over=1000)) == lengths
    # Attention only, each text alone in its batch (causal kernel: 100 * 100 / 2 = 5000 pairs each)
    # against continuations that attend to every key (90 * 100 + 10 * 10 / 2 = 9050 pairs each).
    assert prefix.worth_sharing(rows, lengths, prefix.CostModel(0.0, 1.0, alone_over=10)) == {}
    # The same texts in padded batches pay the full 100 * 100 pairs each: sharing wins again.
    assert prefix.worth_sharing(rows, lengths, prefix.CostModel(0.0, 1.0, alone_over=1000)) == lengths


def test_planned_cost_counts_padding_the_prefix_passes_and_the_causal_kernel():
    linear, attention = prefix.CostModel(1.0, 0.0, alone_over=0), prefix.CostModel(0.0, 1.0, alone_over=0)
    masked = prefix.MASKED_PAIR_COST
    # A padded batch runs every row at the longest width, every pair under a mask; a batch without
    # padding gets the causal kernel (half the pairs, no mask).
    assert linear.padded_batch([30, 10]) == 2 * 30 and attention.padded_batch([30, 10]) == 2 * 30 * 30 * masked
    assert attention.padded_batch([30, 30]) == 2 * 30 * 30 / 2
    # A continuation batch: the longest continuation against the longest prefix, in every row.
    assert linear.continuation_batch([100, 5], [10, 40]) == 2 * 40
    assert attention.continuation_batch([100, 5], [10, 40]) == 2 * 40 * (100 + 40) * masked
    # Prefix passes: longest first, as many as fit the budget in padded tokens.
    assert prefix.prefix_chunks([50, 40, 30, 30, 10], 100) == [2, 3]  # 2 x 50, then 3 x 40 > 100 > 3 x 30
    assert prefix.prefix_chunks([300, 10], 100) == [1, 1]
    rows = [[1] * 10 + [2] * 90, [1] * 10 + [3] * 40, [4] * 30, [5] * 30]
    lengths = {0: 10, 1: 10}
    shared = [(100, [0, 1], [tuple(rows[0][:10])])]
    # Plain: rows 2 and 3 in one unpadded batch; shared: both continuations padded to 90 tokens
    # after their 10-token prefix, and the prefix's own pass once (alone: unpadded).
    assert prefix.planned_cost(rows, lengths, shared, [[2, 3]], linear, 4096) == 2 * 30 + 2 * 90 + 10
    assert prefix.planned_cost(rows, lengths, shared, [[2, 3]], attention, 4096) == pytest.approx(
        2 * 30 * 30 / 2 + 2 * 90 * 100 * masked + 10 * 10 / 2)


def test_estimate_says_what_each_mode_predicts_for_a_selection(models):
    """The bench prints this beside the measured gain: planned work without sharing over the mode's."""
    requests = REQUESTS[:6]
    rows = token_rows(models["right"], requests, 256)
    groups = [r.conversation for r in requests]
    size, budget, masked = 64, 4096, prefix.MASKED_PAIR_COST
    on = load(models["right"], prefix_sharing="on")._sharing
    cost = prefix.CostModel.of(on.runner.model, budget)
    split = {conversation: shared_prefix([row for row, g in zip(rows, groups) if g == conversation])
             for conversation in (SORT, TURNS)}
    widths = sorted(map(len, rows), reverse=True)
    assert widths[0] != widths[-1]  # padded: every pair, masked
    # Plain: every text in one padded batch (6 texts, far under the budget).
    plain = len(rows) * (cost.per_token * widths[0] + cost.per_pair * widths[0] ** 2 * masked)
    # Shared: one window (both prefixes, one pass: they fit the budget together), one continuation
    # batch of all six texts, padded to the longest prefix and the longest continuation.
    prefixes = sorted(split.values(), reverse=True)
    assert prefixes[0] != prefixes[1]  # the pass is padded too
    rest = max(len(row) - split[g] for row, g in zip(rows, groups))
    passes = 2 * (cost.per_token * prefixes[0] + cost.per_pair * prefixes[0] ** 2 * masked)
    continuations = len(rows) * (cost.per_token * rest + cost.per_pair * rest * (prefixes[0] + rest) * masked)
    assert on.estimate(rows, groups, size, budget) == pytest.approx((plain, passes + continuations))
    # auto shares nothing when every conversation has one answer: the same work both ways.
    auto = load(models["right"], prefix_sharing="auto")._sharing
    single = [rows[0], rows[4]]
    width = max(map(len, single))
    alone_cost = 2 * (cost.per_token * width + cost.per_pair * width ** 2 * masked)
    assert auto.estimate(single, ["a", "b"], size, budget) == pytest.approx((alone_cost, alone_cost))


def test_auto_declines_a_selection_whose_batches_cost_more_shared(models):
    """Two answers of one length: alone in their batch they need no padding (the causal kernel, half
    the attention pairs); shared, they attend with a mask over the whole prefix. Each group looked
    worth sharing and a tenth of the tokens is saved, but the planned batches cost more: auto runs
    the texts plain; on shares them."""
    question, rest = list(range(10, 30)), 60
    rows = [question + [100 + answer] * rest for answer in range(2)]
    groups = ["q", "q"]
    requests = [ScoreRequest((Message("user", "q"),), f"answer {i}") for i in range(2)]
    auto = load(models["right"], prefix_sharing="auto")._sharing
    budget = 4096
    cost = prefix.CostModel.of(auto.runner.model, budget)
    lengths = {0: len(question), 1: len(question)}
    assert prefix.split_points(rows, groups, auto.runner.pad_id, 256, prefix.MIN_PREFIX_TOKENS) == lengths
    # What auto weighed before it looked at the batches: the group and the selection gain.
    assert prefix.worth_sharing(rows, lengths, cost) == lengths
    assert prefix.saved_fraction(rows, lengths) >= prefix.MIN_SAVED_FRACTION
    width = len(question) + rest
    plain = 2 * (cost.per_token * width + cost.per_pair * width * width / 2)
    shared = (cost.per_token * len(question) + cost.per_pair * len(question) ** 2 / 2
              + 2 * (cost.per_token * rest + cost.per_pair * rest * width * prefix.MASKED_PAIR_COST))
    assert shared > plain
    assert auto.plan(requests, rows, [width, width], 64, budget) == [[0, 1]]
    assert [auto._planned[r] for r in requests] == [0, 0]
    assert auto.estimate(rows, groups, 64, budget) == pytest.approx((plain, plain))
    on = load(models["right"], prefix_sharing="on")._sharing
    on.plan(requests, rows, [width, width], 64, budget)
    assert [on._planned[r] for r in requests] == [len(question)] * 2
    assert on.estimate(rows, groups, 64, budget) == pytest.approx((plain, shared))


@pytest.mark.parametrize("name", ["right", "left", "pad-is-eos"])
def test_scores_with_sharing_equal_each_text_alone(models, name):
    model = load(models[name], max_length=LIMIT, prefix_sharing="on")
    expected = alone(models[name], REQUESTS, LIMIT)
    assert len({round(v, 7) for v in expected}) == len(expected)  # the texts really differ to the model
    # One batch, as a direct caller sends it: answers share within the batch.
    assert model.score(REQUESTS) == pytest.approx(expected, abs=1e-4)
    counters = model.take_counters()
    saved, shared = expected_saving(models[name], REQUESTS, LIMIT, model.model.config.pad_token_id)
    assert counters == {"truncated": 1, "prefix_tokens_saved": saved, "prefix_shared_texts": shared}
    assert shared == 6 and saved > 0
    # Planned batches, as the engine sends them, with a budget that splits a conversation's answers.
    batches, scores = run_planned(model, REQUESTS, batch_size=2)
    assert scores == pytest.approx(expected, abs=1e-4)
    assert sorted(i for batch in batches for i in batch) == list(range(len(REQUESTS)))
    assert model.take_counters() == {"truncated": 1, "prefix_tokens_saved": saved, "prefix_shared_texts": shared}
    assert model._sharing.runner.alive == 0  # every cached prefix released once its answers are scored


# Llama-3's shape: the assistant header is followed by tokens ("\n\n") before the answer, which
# may merge with the answer's first characters; the split is found in the token ids, wherever.
HEADER_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n\n{{ m['content'] }}{{ eos_token }}{% endfor %}"
)


def test_a_template_with_tokens_after_the_assistant_header(models, tmp_path):
    template = tmp_path / "header.jinja"
    template.write_text(HEADER_TEMPLATE)
    model = load(models["right"], prefix_sharing="on", chat_template=str(template))
    requests = REQUESTS[:6] + [ScoreRequest(SORT, "\n\nUse sorted."), ScoreRequest(SORT, " Use sorted.")]
    expected = alone(models["right"], requests, 256, HEADER_TEMPLATE)
    assert run_planned(model, requests)[1] == pytest.approx(expected, abs=1e-4)
    assert model.take_counters().get("prefix_shared_texts", 0) == len(requests)


def test_pad_token_that_is_also_eos_keeps_the_pooled_token_in_the_continuation(models):
    # With pad = eos the template's closing eos is not what the model pools: the split must leave
    # the token before it in every continuation, or the model would pool a padding position.
    model = load(models["pad-is-eos"], prefix_sharing="on")
    eos = model.tokenizer.eos_token_id
    requests = [ScoreRequest(SORT, ""), ScoreRequest(SORT, "Use sorted(items).")]
    rows = token_rows(models["pad-is-eos"], requests, 256)
    assert all(row[-1] == eos for row in rows)
    assert model.score(requests) == pytest.approx(alone(models["pad-is-eos"], requests, 256), abs=1e-4)
    assert model.take_counters().get("prefix_shared_texts", 0) == 2


def test_plan_packs_every_text_once_within_the_budget_and_bounds_the_prefixes_alive(models):
    model = load(models["right"], prefix_sharing="on")
    conversations = [(Message("user", f"Question {n}: how do I sort a list of strings in Python?"),) for n in range(8)]
    requests = [ScoreRequest(c, f"{answer} {n}") for c in conversations + [TURNS]
                for n, answer in enumerate(("Use sorted.", "key=len " * 4, "no", "I can't help with that. " * 2))]
    requests.append(ScoreRequest(FOX, "alone"))
    budget, size = 300, 4
    batches = model.plan_batches(requests, model.cost(requests), size, budget)
    assert sorted(i for batch in batches for i in batch) == list(range(len(requests)))
    rows = token_rows(models["right"], requests, 256)
    splits = {i: model._sharing._planned[r] for i, r in enumerate(requests)}
    assert not splits[len(requests) - 1] and all(splits[i] for i in range(len(requests) - 1))
    key = {i: tuple(rows[i][:splits[i]]) for i in splits if splits[i]}
    last_use = {key[i]: n for n, batch in enumerate(batches) for i in batch if i in key}
    alive: set = set()
    for number, batch in enumerate(batches):
        assert len(batch) <= size
        assert all(i in key for i in batch) or not any(i in key for i in batch)  # shared, plain apart
        if batch[0] in key:
            width = max(splits[i] for i in batch) + max(len(rows[i]) - splits[i] for i in batch)
            assert len(batch) * width <= budget
            alive |= {key[i] for i in batch} | set(model._sharing._prefetch.get(requests[batch[0]], ()))
            # Prefixes computed and still needed: never more tokens than one batch's budget.
            assert sum(len(k) for k in alive) <= budget
            alive = {k for k in alive if last_use[k] > number}
    assert not alive


def test_cached_prefixes_alive_at_once_are_capped(models, monkeypatch):
    monkeypatch.setattr(prefix, "MAX_ALIVE_PREFIXES", 2)
    model = load(models["right"], prefix_sharing="on")
    conversations = [(Message("user", f"Question number {n}: how do I sort a list of strings?"),) for n in range(6)]
    requests = [ScoreRequest(c, a) for c in conversations for a in ("Use sorted(items).", "key=len", "No idea.")]
    expected = alone(models["right"], requests, 256)
    batches = model.plan_batches(requests, model.cost(requests), 1, 4096)
    scores = [None] * len(requests)
    # Backwards and one text at a time: every prefix is needed again later, more than the cap.
    for batch in reversed(batches):
        for i, value in zip(batch, model.score([requests[i] for i in batch])):
            scores[i] = value
        assert model._sharing.runner.alive <= 2
    assert scores == pytest.approx(expected, abs=1e-4)
    assert model._sharing.runner.alive == 0


def test_out_of_memory_backs_off_and_keeps_scores_exact(models, tmp_path):
    model = load(models["right"], prefix_sharing="on")
    forward = model.model.forward

    @functools.wraps(forward)
    def small_batches_only(*args, **kwargs):
        if kwargs["input_ids"].shape[0] > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(*args, **kwargs)

    samples = [s for s in sample_of_task("Chat") if len(s.responses) > 2][:3]
    expected = engine_scores(load(models["right"], prefix_sharing="off"), samples)[0]
    model.model.forward = small_batches_only
    scores, stats = engine_scores(model, samples)
    assert stats["oom_retries"] > 0 and stats["prefix_shared_texts"] > 0
    assert [scores[k] for k in expected] == pytest.approx(list(expected.values()), abs=1e-4)


def test_auto_shares_only_when_the_texts_share_enough(models):
    model = load(models["right"], prefix_sharing="auto")
    assert model.describe()["prefix_sharing"].startswith("auto: supported")
    # Every conversation answered once: nothing to share, plain batches.
    single = [ScoreRequest((Message("user", f"q{n}"),), "an answer") for n in range(4)]
    run_planned(model, single)
    assert model.take_counters().get("prefix_shared_texts", 0) == 0
    # A short question and long answers: the shared prefix is under a tenth of the tokens.
    short = (Message("user", "hi there, a question"),)
    little = [ScoreRequest(short, answer * 6) for answer in ("The quick brown fox jumps over the lazy dog. ",
                                                             "Use sorted(items, key=len) to sort by length. ")]
    rows = token_rows(models["right"], little, 256)
    assert shared_prefix(rows) >= prefix.MIN_PREFIX_TOKENS and shared_prefix(rows) < 0.1 * sum(map(len, rows))
    assert run_planned(model, little)[1] == pytest.approx(alone(models["right"], little, 256), abs=1e-4)
    assert model.take_counters().get("prefix_shared_texts", 0) == 0
    on = load(models["right"], prefix_sharing="on")
    run_planned(on, little)
    assert on.take_counters().get("prefix_shared_texts", 0) == 2
    # The same question with short answers: most tokens are shared, auto shares.
    run_planned(model, REQUESTS[:4])
    assert model.take_counters().get("prefix_shared_texts", 0) == 4


def test_off_scores_as_before_and_reports_nothing_about_prefixes(models):
    model = load(models["right"], prefix_sharing="off")
    assert model.describe()["prefix_sharing"] == "off (--rmb-prefix-sharing off)"
    assert model.score(REQUESTS) == pytest.approx(alone(models["right"], REQUESTS, 256), abs=1e-5)
    assert model.take_counters() == {"truncated": 0}


def other_decoder(kind):
    """Decoders whose masks and positions differ from Llama's, with the tiny tests' tokenizer."""
    from transformers import GPT2Config, GPT2ForSequenceClassification, MistralConfig, MistralForSequenceClassification

    tokenizer = decoder_tokenizer()
    torch.manual_seed(0)
    if kind == "mistral-sliding-window":
        # A window far shorter than the texts: keys outside it must stay masked after the split.
        config = MistralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, sliding_window=8, num_labels=1,
                               max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id)
        return MistralForSequenceClassification(config).eval(), tokenizer
    # Learned absolute positions: the continuation's position ids must start at the prefix length.
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=256, num_labels=1,
                        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id)
    return GPT2ForSequenceClassification(config).eval(), tokenizer


@pytest.mark.parametrize("kind", ["mistral-sliding-window", "gpt2"])
def test_other_decoder_families_share_exactly(kind):
    model, tokenizer = other_decoder(kind)
    shared = HFRewardModel(model, tokenizer, ModelSettings("tiny", prefix_sharing="on"), weights="tiny")
    plain = HFRewardModel(model, tokenizer, ModelSettings("tiny", prefix_sharing="off"), weights="tiny")
    requests = REQUESTS[:6]
    expected = []
    for request in requests:
        ids = tokenizer(shared.render(request), add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            expected.append(model(input_ids=torch.tensor([ids])).logits[0, 0].item())
    assert plain.score(requests) == pytest.approx(expected, abs=1e-5)
    # Planned batches mix prefixes of different lengths (left-padded cache) in one continuation batch.
    batches, scores = run_planned(shared, requests)
    assert any(len({r.conversation for r in map(requests.__getitem__, batch)}) > 1 for batch in batches)
    assert scores == pytest.approx(expected, abs=1e-4)
    assert shared.take_counters().get("prefix_shared_texts", 0) == 6


class FirstTokenHead(LlamaForSequenceClassification):
    """A custom head that takes a cache but pools the first token: sharing would change its scores."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, **kwargs):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            cache=cache, **kwargs).last_hidden_state
        return type("Output", (), {"logits": self.score(hidden[:, 0])})()


def test_models_that_cannot_continue_from_a_cache_fall_back_in_auto_and_refuse_on(models):
    encoder = load(models["encoder"])
    assert "takes no cached keys/values" in encoder.describe()["prefix_sharing"]
    assert encoder.describe()["prefix_sharing"].startswith("off")
    encoder.score(REQUESTS[:3])
    assert encoder.take_counters() == {"truncated": 0}
    with pytest.raises(ModelLoadError, match="--rmb-prefix-sharing on: .* cannot score with a shared prefix"):
        load(models["encoder"], prefix_sharing="on")

    tokenizer = AutoTokenizer.from_pretrained(models["right"])
    custom = FirstTokenHead.from_pretrained(models["right"], dtype=torch.float32)
    auto = HFRewardModel(custom, tokenizer, ModelSettings(str(models["right"])))
    assert "differ" in auto.describe()["prefix_sharing"]
    assert auto._sharing is None
    with pytest.raises(ModelLoadError, match="differ"):
        HFRewardModel(custom, tokenizer, ModelSettings(str(models["right"]), prefix_sharing="on"))


def sample_of_task(task, data=None):
    return load_scenarios(data or sample_dataset(), [s for s in registry() if task in (None, s.task, s.id)])


def engine_scores(model, samples):
    plan: dict = {}
    for sample in samples:
        plan.setdefault(sample.scenario, []).append(sample)
    engine = Engine(model, plan, max_batch_size=16)
    scores = {}
    for sample in samples:
        for response, value in zip(sample.responses, engine.scores(sample)):
            scores[sample.conversation, response.text] = value
    return scores, engine.totals.as_dict()


def sections(samples, scores):
    goal = {s.id: s.goal for s in registry()}
    out: dict = {}
    for sample in samples:
        values = [scores[sample.conversation, r.text] for r in sample.responses]
        out.setdefault((goal[sample.scenario], sample.kind), []).append(all(values[0] > v for v in values[1:]))
    return out


@pytest.mark.parametrize("name", ["right", "left"])
def test_the_bundled_sample_scores_the_same_with_and_without_sharing(models, name):
    samples = sample_of_task(None)
    assert any(len(s.conversation) > 1 for s in samples)
    plain, plain_stats = engine_scores(load(models[name], prefix_sharing="off"), samples)
    shared, stats = engine_scores(load(models[name], prefix_sharing="on"), samples)
    assert stats["truncated"] == plain_stats["truncated"] > 0
    assert stats["prefix_shared_texts"] > 0 and stats["prefix_tokens_saved"] > 0
    assert max(abs(shared[k] - plain[k]) for k in plain) <= 1e-4
    assert sections(samples, shared) == sections(samples, plain)


# All 49 scenarios take about 15 minutes per side on 2 cores (RMB_PREFIX_FULL_DATA=1 runs them);
# by default four: many multi-turn conversations, both goals, pairs and Best-of-N lists.
FULL_DATA_SCENARIOS = (None,) if os.environ.get("RMB_PREFIX_FULL_DATA") else (
    "reasoning/pattern_recognition", "rewrite/paraphrasing", "chat/supportive_conversation", "harmlessness/s6_privacy")


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real RMB data not found at {SHARED_DATA}")
def test_real_data_scores_the_same_with_and_without_sharing(tmp_path):
    path = save_long_decoder(tmp_path / "long", max_length=2048)
    samples = [s for task in FULL_DATA_SCENARIOS for s in sample_of_task(task, SHARED_DATA)]
    plain, plain_stats = engine_scores(load(path, prefix_sharing="off", max_length=1024), samples)
    shared, stats = engine_scores(load(path, prefix_sharing="on", max_length=1024), samples)
    assert stats["prefix_shared_texts"] > len(plain) / 3
    assert stats["truncated"] == plain_stats["truncated"] > 0
    assert max(abs(shared[k] - plain[k]) for k in plain) <= 1e-4
    assert sections(samples, shared) == sections(samples, plain)


run = partial(run_rmb, options=("--rmb-data", "sample", "--rmb-device", "cpu", "--rmb-no-cache"))


def test_plugin_option_and_ini_mirror(pytester, models):
    runs = {}
    for mode in ("on", "off"):
        result = run(pytester, "--rmb-model", str(models["left"]), "--rmb-prefix-sharing", mode,
                     "--rmb-jsonl", f"{mode}.jsonl", "--rmb-json", f"{mode}.json")
        assert result.ret == 0
        runs[mode] = run_files(pytester.path, mode)
    (on, _), (off, _) = runs["on"], runs["off"]
    assert on["engine"]["prefix_tokens_saved"] > 0 and on["engine"]["prefix_shared_texts"] > 0
    assert "prefix_tokens_saved" not in off["engine"]
    assert on["provenance"]["model_info"]["prefix_sharing"] == "on"
    assert off["provenance"]["model_info"]["prefix_sharing"] == "off (--rmb-prefix-sharing off)"
    assert_same_outcomes(runs["on"], runs["off"])

    # One argument: pytest takes a separate path argument into account when it looks for the ini.
    pytester.makeini("[pytest]\nrmb_prefix_sharing = off\n")
    result = run(pytester, f"--rmb-model={models['left']}", "--rmb-json", "ini.json")
    assert result.ret == 0
    summary = json.loads((pytester.path / "ini.json").read_text())
    assert summary["provenance"]["model_info"]["prefix_sharing"].startswith("off")

    pytester.makeini("[pytest]\nrmb_prefix_sharing = sometimes\n")
    result = run(pytester, f"--rmb-model={models['left']}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*rmb_prefix_sharing*expected one of auto, on, off*sometimes*"])


def test_plugin_refuses_on_for_an_encoder_with_the_reason(pytester, models):
    result = run(pytester, "--rmb-model", str(models["encoder"]), "--rmb-prefix-sharing", "on")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(["*--rmb-prefix-sharing on:*cannot score with a shared prefix*cached keys/values*"])
    result = run(pytester, "--rmb-prefix-sharing", "never", "--rmb-model", "length")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--rmb-prefix-sharing*invalid choice*never*"])
