import subprocess
import sys

from pytest_rmb.data import Message
from pytest_rmb.backends import ModelSettings, load_spec
from pytest_rmb.models import ScoreRequest, as_chat

CONV = (Message("user", "hello"),)


def requests(*texts, conversation=CONV):
    return [ScoreRequest(conversation, t) for t in texts]


def test_length_is_characters_not_bytes():
    scorer = load_spec(ModelSettings("length"))
    assert scorer.score(requests("", "abc", "héllo", "日本語")) == [0.0, 3.0, 5.0, 3.0]


def test_random_is_uniform_in_unit_interval_and_independent_of_order_and_batch():
    scorer = load_spec(ModelSettings("random", seed=0))
    texts = [f"answer {i}" for i in range(2000)]
    together = scorer.score(requests(*texts))
    alone = [scorer.score(requests(t))[0] for t in reversed(texts)][::-1]
    assert together == alone
    assert all(0.0 <= x < 1.0 for x in together)
    assert 0.45 < sum(together) / len(together) < 0.55
    assert len(set(together)) == len(together)


def test_random_depends_on_seed_and_on_the_conversation():
    zero = load_spec(ModelSettings("random", seed=0)).score(requests("a", "b"))
    one = load_spec(ModelSettings("random", seed=1)).score(requests("a", "b"))
    assert zero != one
    other_prompt = load_spec(ModelSettings("random", seed=0)).score(
        requests("a", "b", conversation=(Message("user", "bye"),))
    )
    assert other_prompt != zero


def test_random_is_the_same_in_another_process():
    here = load_spec(ModelSettings("random", seed=5)).score(requests("same text"))[0]
    code = (
        "from pytest_rmb.data import Message;"
        "from pytest_rmb.backends import ModelSettings, load_spec;"
        "from pytest_rmb.models import ScoreRequest;"
        "print(repr(load_spec(ModelSettings('random', seed=5))"
        ".score([ScoreRequest((Message('user', 'hello'),), 'same text')])[0]))"
    )
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(there.stdout) == here


def test_as_chat_appends_the_response_as_assistant():
    conversation = (Message("user", "q1"), Message("assistant", "a1"), Message("user", "q2"))
    assert as_chat(conversation, "a2") == [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
    ]
