"""Affinity routing of served reward models: the answers to one conversation go to one replica,
together, and the outcomes are those of round-robin routing.

Two stand-in replicas (tests/prefix_cache_server.py) count what reached them: the texts of each
conversation, the prompt tokens, and the prefill tokens their prefix cache could not serve.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_rmb.backends.served import affinity_order, conversation_batches
from pytest_rmb.data import Message, sample_dataset
from pytest_rmb.http import replica_for
from pytest_rmb.models import ScoreRequest
from tests.prefix_cache_server import BLOCK, StandIn

pytest_plugins = ["pytester"]

SERVED_NAME = "prefix-rm"
ROOT = Path(__file__).resolve().parent.parent


# -- the routing key -----------------------------------------------------------------------------


def test_replica_for_is_a_sha256_of_the_key_the_same_in_another_process():
    keys = [f"conversation {i}" for i in range(50)]
    expected = [int.from_bytes(hashlib.sha256(k.encode()).digest()[:8], "big") % 3 for k in keys]
    assert [replica_for(k, 3) for k in keys] == expected
    # Python's own hash() is salted per process; the routing must not be.
    other = subprocess.run([sys.executable, "-c", "import json, sys; from pytest_rmb.http import replica_for; "
                            f"print(json.dumps([replica_for(k, 3) for k in {keys!r}]))"],
                           cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(other.stdout) == expected


@pytest.mark.parametrize("replicas", [2, 3, 5])
def test_replica_for_spreads_many_keys_evenly(replicas):
    counts = [0] * replicas
    for i in range(3000):
        counts[replica_for(f"key {i}", replicas)] += 1
    # Each replica within 15% of its fair share: none starves.
    assert all(abs(c - 3000 / replicas) < 0.15 * 3000 / replicas for c in counts), counts


def test_replica_for_refuses_no_replicas():
    with pytest.raises(ValueError, match="replicas must be >= 1, got 0"):
        replica_for("k", 0)


# -- the batches ---------------------------------------------------------------------------------


def _requests(shape: list[int]) -> list[ScoreRequest]:
    """Conversations interleaved: conversation c has shape[c] answers, listed round-robin."""
    requests = []
    for turn in range(max(shape)):
        for c, answers in enumerate(shape):
            if turn < answers:
                requests.append(ScoreRequest((Message("user", f"question {c}"),), f"answer {turn}"))
    return requests


def test_conversation_batches_keep_conversations_whole_within_the_limits():
    requests = _requests([3, 2, 4, 1, 2])
    costs = [10] * len(requests)
    batches = conversation_batches(requests, costs, max_batch_size=5, max_batch_cost=10**9)
    assert sorted(i for batch in batches for i in batch) == list(range(len(requests)))
    assert all(len(batch) <= 5 for batch in batches)
    for batch in batches:
        conversations = [requests[i].conversation for i in batch]
        for conversation in set(conversations):
            everywhere = [i for i, r in enumerate(requests) if r.conversation == conversation]
            assert sorted(i for i in batch if requests[i].conversation == conversation) == everywhere
    # Costliest conversation first (4 answers), as the engine puts the longest texts first.
    assert {requests[i].conversation[0].content for i in batches[0]} == {"question 2"}


def test_conversation_batches_split_a_conversation_bigger_than_a_batch_and_honour_the_cost():
    requests = _requests([7])
    assert conversation_batches(requests, [1] * 7, max_batch_size=3, max_batch_cost=10**9) == [[0, 1, 2], [3, 4, 5],
                                                                                                [6]]
    # Padded cost: 2 texts of cost 5 fill a budget of 10.
    assert conversation_batches(requests, [5] * 7, max_batch_size=100, max_batch_cost=10) == [[0, 1], [2, 3], [4, 5],
                                                                                               [6]]


def _hashes_to(replica: int, replicas: int, count: int) -> list[str]:
    """Questions whose conversation key (the messages as JSON) hashes to ``replica``."""
    found = []
    for n in range(1000):
        key = json.dumps([["user", f"question {n}"]])
        if int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % replicas == replica:
            found.append(f"question {n}")
    return found[:count]


def test_affinity_order_keeps_the_hash_replica_until_it_holds_its_share_then_balances():
    questions = _hashes_to(0, 2, 4)  # all four would go to replica 0
    batch = [ScoreRequest((Message("user", q),), f"answer {a}") for a in range(3) for q in questions]
    order, chosen = affinity_order(batch, 2)
    assert sorted(order) == list(range(len(batch)))
    by_question: dict[str, set[int]] = {}
    for request, replica in zip(batch, chosen):
        by_question.setdefault(request.conversation[0].content, set()).add(replica)
    assert all(len(replicas) == 1 for replicas in by_question.values())  # a conversation on one replica
    assert chosen.count(0) == chosen.count(1) == 6  # equal conversations: two each
    # The first (and so the biggest-first) conversation keeps its own replica.
    assert by_question[questions[0]] == {0}
    # A conversation's answers are sent back to back, and replicas take turns.
    sent = [batch[i].conversation[0].content for i in order]
    assert [sent[i] for i in range(0, 12, 3)] == [sent[i + 2] for i in range(0, 12, 3)]
    assert [chosen[order[i]] for i in range(0, 12, 3)] == [0, 1, 0, 1]


# -- end to end against two stand-in replicas ------------------------------------------------------


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    # A cache that holds the whole sample: what is computed twice is what routing split.
    started = [StandIn(tmp_path_factory.mktemp(f"replica{i}"), served_name=SERVED_NAME, cache_tokens=10**7)
               for i in range(2)]
    yield started
    for replica in started:
        replica.stop()


def _run(pytester, replicas, routing: str | None) -> tuple[dict[str, dict], list[dict]]:
    for replica in replicas:
        replica.reset()
    out = pytester.path / f"samples-{routing}.jsonl"
    args = ["-p", "no:cacheprovider", "--rmb-model", f"vllm:{SERVED_NAME}", "--rmb-data", "sample", "--rmb-no-cache",
            "--rmb-self-check", "0",  # its re-scored texts would count twice at the replicas
            "--rmb-model-arg", "base_url=" + ",".join(r.url for r in replicas), "--rmb-jsonl", str(out)]
    if routing is not None:
        args += ["--rmb-model-arg", f"routing={routing}"]
    result = pytester.runpytest(*args)
    assert result.ret in (0, 1), result.stdout.str()
    samples = {f"{s['scenario']}/{s['kind']}/{s['uid']}": s
               for s in map(json.loads, out.read_text(encoding="utf-8").splitlines())}
    return samples, [replica.stats() for replica in replicas]


def _sample_texts() -> dict[str, list[list[dict]]]:
    """Every text the sample asks to score, as chat messages, by conversation digest (the stand-in's
    own key: a SHA-256 of the messages before the answer), read from the JSON files directly."""
    texts: dict[str, dict[str, list[dict]]] = {}
    for path in sorted(sample_dataset().rglob("*.json")):
        for record in json.loads(path.read_text(encoding="utf-8")):
            conversation = [{"role": t["role"], "content": t["content"]} for t in record["conversation_input"]]
            answers = ([record["chosen"], record["reject"]] if "chosen" in record
                       else [record["bon_best"], *record["loser_list"]])
            digest = hashlib.sha256(json.dumps(conversation, sort_keys=True).encode()).hexdigest()[:16]
            for answer in answers:
                messages = [*conversation, {"role": "assistant", "content": answer["answer"]}]
                texts.setdefault(digest, {})[json.dumps(messages)] = messages
    # The test request each run sends on start.
    probe = [{"role": "user", "content": "Say hello."}]
    texts[hashlib.sha256(json.dumps(probe, sort_keys=True).encode()).hexdigest()[:16]] = {
        "probe": [*probe, {"role": "assistant", "content": "Hello!"}]}
    return {digest: list(by_text.values()) for digest, by_text in texts.items()}


def _least_prefill(texts: list[list[dict]]) -> int:
    """What a server with an unbounded cache computes for these texts, in any order: every token
    outside a full block, and each distinct full block (known by everything before its end) once."""
    blocks: set[tuple[str, ...]] = set()
    tail = 0
    for messages in texts:
        words = " ".join(f"<{m['role']}> {m['content']}" for m in messages).split()
        full = len(words) - len(words) % BLOCK
        tail += len(words) - full
        blocks.update(tuple(words[:end]) for end in range(BLOCK, full + 1, BLOCK))
    return tail + BLOCK * len(blocks)


def test_affinity_scores_as_round_robin_and_sends_each_conversation_to_one_replica(pytester, replicas):
    robin, robin_stats = _run(pytester, replicas, "round-robin")
    affine, affine_stats = _run(pytester, replicas, None)  # affinity is the default

    # Exactness: the same samples, scores and outcomes.
    assert affine.keys() == robin.keys() and len(affine) > 100
    for key, sample in affine.items():
        assert sample["correct"] == robin[key]["correct"], key
        assert sample == robin[key], key

    texts = _sample_texts()
    for stats in (robin_stats, affine_stats):
        assert sum(s["texts"] for s in stats) == sum(len(t) for t in texts.values())
    seen = [set(s["conversations"]) for s in affine_stats]
    assert seen[0] | seen[1] == set(texts)
    # Each conversation's texts reached one replica, and all of them did.
    assert not seen[0] & seen[1]
    for stats in affine_stats:
        assert all(count == len(texts[digest]) for digest, count in stats["conversations"].items())
    # Round-robin split conversations: the check above can fail.
    assert set(robin_stats[0]["conversations"]) & set(robin_stats[1]["conversations"])
    # Balanced: a conversation is the unit, and neither replica gets under a third of the texts.
    total = sum(s["texts"] for s in affine_stats)
    assert min(s["texts"] for s in affine_stats) > total / 3

    # The prefill each replica computed is the least its conversations need (the cache holds the
    # whole sample), and round-robin computed more: the conversations it split, twice.
    for stats, digests in zip(affine_stats, seen):
        assert stats["prefill_tokens"] == _least_prefill([m for d in digests for m in texts[d]])
    least_on_one_server = _least_prefill([m for t in texts.values() for m in t])
    affine_prefill = sum(s["prefill_tokens"] for s in affine_stats)
    robin_prefill = sum(s["prefill_tokens"] for s in robin_stats)
    assert affine_prefill == least_on_one_server  # no prefix block spans two conversations here
    assert robin_prefill > 1.05 * affine_prefill, (robin_prefill, affine_prefill)


def test_an_unknown_routing_is_a_usage_error_naming_the_setting(pytester):
    result = pytester.runpytest("-p", "no:cacheprovider", "--rmb-model", f"vllm:{SERVED_NAME}", "--rmb-data", "sample",
                                "--rmb-model-arg", "routing=sideways")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--rmb-model-arg routing: expected one of affinity, round-robin, got 'sideways'*"])
