"""Results you can trust (issue 9, items 11, 13, 21, 22): stats that describe the results whether
they were scored now or read from the cache, progress a user sees (on a terminal and in a CI log),
a self-check that catches batch-dependent scores, and the exact input a model reads."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_rmb.cache import ScoreCache
from tests.helpers import SAMPLE_DATA, SLOW_MODEL, FakeReporter, all_files

CHAT = ("Pairwise_set/Helpfulness/Chat/", "BoN_set/Helpfulness/Chat/")
DISCUSSION = ("Pairwise_set/Helpfulness/Chat/Discussion.json", "BoN_set/Helpfulness/Chat/Discussion.json")


def answers(record: dict) -> list[str]:
    if "pair_uid" in record:
        return [record["chosen"]["answer"], record["reject"]["answer"]]
    return [record["bon_best"]["answer"]] + [loser["answer"] for loser in record["loser_list"]]


def unique_texts(files) -> list[tuple[list[dict], str]]:
    """The unique (conversation, answer) pairs of the sample files whose path starts with ``files``,
    read with the json module alone."""
    seen: dict[tuple[str, str], tuple[list[dict], str]] = {}
    for relative, records in all_files(SAMPLE_DATA).items():
        if not relative.startswith(tuple(files)):
            continue
        for record in records:
            messages = [{"role": m["role"], "content": m["content"]} for m in record["conversation_input"]]
            for answer in answers(record):
                seen.setdefault((json.dumps(messages), answer), (messages, answer))
    return list(seen.values())


def rmb_args(*args: str) -> tuple[str, ...]:
    return ("-p", "no:cacheprovider", "--rmb-data", "sample", *args)


def assert_in_order(lines: list[str], expected: list) -> None:
    """Each expected entry (an exact line, or a compiled pattern that must match a whole line) appears
    after the previous one."""
    position = 0
    for wanted in expected:
        for index in range(position, len(lines)):
            line = lines[index]
            if (wanted.fullmatch(line) if isinstance(wanted, re.Pattern) else line == wanted):
                position = index + 1
                break
        else:
            raise AssertionError(f"not found after line {position}: {wanted!r}\n" + "\n".join(lines[-80:]))


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PY_COLORS", "FORCE_COLOR", "NO_COLOR", "PYTEST_ADDOPTS")}
    env.update(extra)
    return env


# -- item 11: per-text facts in the cache; scored now and from the cache apart ------------------------


def test_the_cache_keeps_facts_beside_each_score(tmp_path):
    cache = ScoreCache(tmp_path, "fp")
    cache.append([("a", 1.5, {"tokens": 12, "truncated": True}), ("b", -2.0, {}), ("c", 0.5)])
    lines = cache.path.read_text().splitlines()
    assert json.loads(lines[0]) == {"k": "a", "s": 1.5, "f": {"tokens": 12, "truncated": True}}
    assert json.loads(lines[1]) == {"k": "b", "s": -2.0}  # no facts, no "f"
    scores, facts = cache.load_with_facts()
    assert scores == {"a": 1.5, "b": -2.0, "c": 0.5} == cache.load()
    assert facts == {"a": {"tokens": 12, "truncated": True}}
    # A later record of the same key wins, facts included.
    cache.append([("b", -2.0, {"tokens": 3, "truncated": False})])
    assert cache.load_with_facts()[1]["b"] == {"tokens": 3, "truncated": False}


@pytest.fixture(scope="module")
def tiny_decoder(tmp_path_factory):
    from tests.tiny_models import save_decoder

    return save_decoder(tmp_path_factory.mktemp("trust") / "decoder")


def token_lengths(model_path: Path, texts) -> list[int]:
    """Tokens of each text after the chat template, computed with transformers alone."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rendered = [tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": answer}], tokenize=False)
                for messages, answer in texts]
    return [len(ids) for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"]]


MAX_LENGTH = 100


def test_truncation_and_tokens_are_the_same_cold_cached_and_half_cached(pytester, tiny_decoder):
    lengths = token_lengths(tiny_decoder, unique_texts(CHAT))
    texts, truncated = len(lengths), sum(n > MAX_LENGTH for n in lengths)
    tokens = sum(min(n, MAX_LENGTH) for n in lengths)
    assert 0 < truncated < texts  # the limit cuts some texts, not all
    args = rmb_args("--rmb-model", str(tiny_decoder), "--rmb-device", "cpu", "--rmb-max-length", str(MAX_LENGTH),
                    "--rmb-cache-dir", "cache", "rmb/chat")

    cold = pytester.runpytest(*args, "--rmb-json", "cold.json")
    assert cold.ret == 0
    summary = json.loads((pytester.path / "cold.json").read_text())
    engine = summary["engine"]
    assert (engine["texts_scored"], engine["cache_hits"]) == (texts, 0)
    assert (engine["truncated"], engine["tokens"]) == (truncated, tokens)
    cold.stdout.fnmatch_lines([f"engine: {texts} unique texts scored now, 0 from the score cache, *; "
                               f"{truncated} of {texts} truncated"])
    # The tiny model pads on the right with a pad token of its own: batch-invariant.
    check = summary["self_check"]
    assert check["checked"] == min(16, texts) and check["ok"] is True and check["max_abs_diff"] <= 1e-3
    assert check["tolerance"] == 1e-3 and check["dtype"] == "float32"
    cold.stdout.fnmatch_lines([f"rmb: self-check passed: {min(16, texts)} texts re-scored alone*"])

    # Everything from the cache: the same facts; and a gated run carries a passing self-check row.
    warm = pytester.runpytest(*args, "--rmb-json", "warm.json", "--rmb-gate", "overall>=0")
    assert warm.ret == 0
    summary = json.loads((pytester.path / "warm.json").read_text())
    engine = summary["engine"]
    assert (engine["texts_scored"], engine["cache_hits"], engine["batches"]) == (0, texts, 0)
    assert (engine["truncated"], engine["tokens"]) == (truncated, tokens)
    warm.stdout.fnmatch_lines([f"engine: 0 texts scored now; model not loaded; {texts} from the score cache, *; "
                               f"{truncated} of {texts} truncated"])
    # Nothing scored now: nothing to self-check, and no model loaded to do it.
    assert summary["self_check"] is None
    assert all(gate["metric"] != "self-check" for gate in summary["gates"])

    # Half the cache lost, the other half written before facts were kept: split right, facts the same,
    # and the missing facts written back.
    cache_file = next((pytester.path / "cache").glob("*.jsonl"))
    records = [json.loads(line) for line in cache_file.read_text().splitlines()]
    kept = [{"k": r["k"], "s": r["s"]} for r in records[: texts // 2]]
    cache_file.write_text("".join(json.dumps(r) + "\n" for r in kept))
    half = pytester.runpytest(*args, "--rmb-json", "half.json", "--rmb-self-check", "0")
    assert half.ret == 0
    engine = json.loads((pytester.path / "half.json").read_text())["engine"]
    assert (engine["texts_scored"], engine["cache_hits"]) == (texts - len(kept), len(kept))
    assert (engine["truncated"], engine["tokens"]) == (truncated, tokens)
    scores, facts = ScoreCache(pytester.path / "cache", cache_file.stem).load_with_facts()
    assert len(scores) == len(facts) == texts
    assert sum(f["truncated"] for f in facts.values()) == truncated


# -- item 13: progress on a terminal and in a log ---------------------------------------------------



def discussion_texts() -> int:
    return len(unique_texts(DISCUSSION))


def run_slow(cwd: Path) -> list[str]:
    (cwd / "slow_progress.py").write_text(SLOW_MODEL)
    return [sys.executable, "-m", "pytest", *rmb_args("--rmb-model", "python:slow_progress:make",
                                                      "--rmb-batch-size", "1", "rmb/chat/discussion")]


def test_a_ci_log_gets_plain_progress_lines_without_control_characters(tmp_path):
    total = discussion_texts()
    per_batch = 3.0 / total  # about 3 s of scoring: past the 2 s after which progress shows
    done = subprocess.run(run_slow(tmp_path), cwd=tmp_path, capture_output=True, timeout=120,
                          env=clean_env(PYTHONPATH=str(tmp_path), SLOW_SECONDS=str(per_batch), TERM="xterm"))
    output = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, output[-3000:]
    assert "\r" not in output and "\x1b" not in output
    line = r"^rmb: scoring chat/discussion (\d+)/(\d+) texts \((\d+)%\), ([\d.]+) texts/s$"
    progress = re.findall(line, output, re.M)
    assert progress, output[-3000:]
    for count, of, percent, rate in progress:
        assert int(of) == total and 0 < int(count) <= total and int(percent) == 100 * int(count) // total
        assert 0 < float(rate) <= 1 / per_batch + 0.05  # no faster than the scorer's sleep allows (to .1f)
    # Only after 2 s of work, so never at the first text.
    assert int(progress[0][0]) >= int(2 / per_batch)
    line = r"^rmb: scored chat/discussion: (\d+)/(\d+) texts in ([\d.]+) s, ([\d.]+) texts/s$"
    closing = re.findall(line, output, re.M)
    assert len(closing) == 1 and closing[0][:2] == (str(total), str(total)) and float(closing[0][2]) >= 2.9


def test_a_terminal_gets_the_rich_bar_under_pytest_default_capture(tmp_path):
    total = discussion_texts()
    command = run_slow(tmp_path)
    leader, follower = pty.openpty()
    env = clean_env(PYTHONPATH=str(tmp_path), SLOW_SECONDS=str(2.0 / total), TERM="xterm-256color", COLUMNS="120")
    process = subprocess.Popen(command, cwd=tmp_path, stdin=follower, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    chunks = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process is done
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(30) == 0
    output = b"".join(chunks).decode(errors="replace")
    assert "rmb: scoring chat/discussion" in output
    assert "━" in output  # the bar itself
    assert "\x1b[" in output  # drawn and erased in place, not as lines
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output)
    assert re.search(rf"rmb: scoring chat/discussion ━+ [0-{total}]/{total} texts", plain)  # the count column


def test_line_progress_shows_after_two_seconds_then_every_ten_and_closes():
    from pytest_rmb.progress import LineProgress

    reporter = FakeReporter()
    plugins = {"terminalreporter": reporter, "capturemanager": None}
    config = SimpleNamespace(pluginmanager=SimpleNamespace(getplugin=plugins.get))
    now = [0.0]
    progress = LineProgress(config, clock=lambda: now[0])  # type: ignore[arg-type]
    with progress.scoring("code/sql", 100, "texts") as advance:
        for second in range(1, 26):  # 4 texts per second for 25 s
            now[0] = float(second)
            advance(4)
    assert reporter.lines == [
        "rmb: scoring code/sql 8/100 texts (8%), 4.0 texts/s",  # 2 s
        "rmb: scoring code/sql 48/100 texts (48%), 4.0 texts/s",  # 12 s
        "rmb: scoring code/sql 88/100 texts (88%), 4.0 texts/s",  # 22 s
        "rmb: scored code/sql: 100/100 texts in 25.0 s, 4.0 texts/s",
    ]
    reporter.lines.clear()
    now[0] = 0.0
    with progress.scoring("code/sql", 10) as advance:
        now[0] = 1.9
        advance(10)
    with progress.loading("tiny"):
        now[0] = 2.5
    assert reporter.lines == []  # quick work stays quiet


# -- item 21: the self-check --------------------------------------------------------------------------

BATCHY = '''
import hashlib

class Batchy:
    """Depends on its batch: every score grows by 0.01 per text in the batch."""

    def fingerprint(self):
        return "batchy-v1"

    def score(self, batch):
        return [int.from_bytes(hashlib.sha256(r.response.encode()).digest()[:4], "big") / 2**32 + 0.01 * len(batch)
                for r in batch]

def make():
    return Batchy()
'''


def batchy_expectation(files) -> tuple[int, float, float]:
    """(texts, largest absolute difference, largest difference relative to scores above 1) when every
    text of ``files`` is scored in one batch, computed from the raw files."""
    texts = [answer for _, answer in unique_texts(files)]
    k = len(texts)
    base = [int.from_bytes(hashlib.sha256(t.encode()).digest()[:4], "big") / 2**32 for t in texts]
    scaled = max(0.01 * (k - 1) / max(1.0, b + 0.01 * k) for b in base)
    return k, 0.01 * (k - 1), scaled


def test_batch_dependent_scores_warn_and_fail_a_gated_run(pytester, monkeypatch):
    pytester.makepyfile(batchy_one=BATCHY)
    monkeypatch.syspath_prepend(pytester.path)
    texts, largest, scaled = batchy_expectation(DISCUSSION)
    args = rmb_args("--rmb-model", "python:batchy_one:make", "rmb/chat/discussion", "--rmb-no-cache")

    warned = pytester.runpytest(*args, "--rmb-json", "s.json")
    assert warned.ret == 0  # no gate: a loud warning, not a failure
    check = json.loads((pytester.path / "s.json").read_text())["self_check"]
    assert check["checked"] == texts and check["ok"] is False
    assert check["max_abs_diff"] == pytest.approx(largest, abs=1e-9)
    assert check["max_scaled_diff"] == pytest.approx(scaled, abs=1e-9)
    assert check["tolerance"] == 1e-3
    warned.stdout.fnmatch_lines([f"rmb: SELF-CHECK FAILED: {texts} texts re-scored alone differ from their "
                                 f"batched scores by up to {largest:.3g} *"])

    gated = pytester.runpytest(*args, "--rmb-json", "g.json", "--rmb-gate", "overall>=0")
    assert gated.ret == 1
    gates = json.loads((pytester.path / "g.json").read_text())["gates"]
    assert [(g["metric"], g["status"]) for g in gates] == [("overall", "PASS"), ("self-check", "FAIL")]
    gated.stdout.fnmatch_lines(["*rmb: 1 gate(s) failed: self-check*"])

    off = pytester.runpytest(*args, "--rmb-json", "o.json", "--rmb-gate", "overall>=0", "--rmb-self-check", "0")
    assert off.ret == 0
    assert json.loads((pytester.path / "o.json").read_text())["self_check"] is None


def test_the_free_baselines_are_not_self_checked(pytester):
    result = pytester.runpytest(*rmb_args("--rmb-model", "length", "rmb/chat", "--rmb-json", "s.json"))
    assert result.ret == 0
    assert json.loads((pytester.path / "s.json").read_text())["self_check"] is None
    assert "self-check" not in result.stdout.str()


def test_under_xdist_each_worker_checks_its_texts_and_the_largest_difference_is_reported(pytester):
    pytest.importorskip("xdist")
    pytester.makepyfile(batchy_xdist=BATCHY)
    casual = tuple(f"{kind}/Helpfulness/Chat/Casual Conversation.json" for kind in ("Pairwise_set", "BoN_set"))
    one, two = batchy_expectation(DISCUSSION), batchy_expectation(casual)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *rmb_args("--rmb-model", "python:batchy_xdist:make", "--rmb-no-cache",
                                                   "-n", "2", "rmb/chat/discussion", "rmb/chat/casual_conversation",
                                                   "--rmb-json", "s.json")],
        cwd=pytester.path, env=clean_env(PYTHONPATH=str(pytester.path)), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:]
    check = json.loads((pytester.path / "s.json").read_text())["self_check"]
    assert check["checked"] == min(16, one[0]) + min(16, two[0])
    assert check["max_abs_diff"] == pytest.approx(max(one[1], two[1]), abs=1e-9)
    assert check["ok"] is False


# -- item 22: what the model sees ---------------------------------------------------------------------


def discussion_pair(uid: str) -> dict:
    records = json.loads((SAMPLE_DATA / DISCUSSION[0]).read_text())
    return next(r for r in records if r["pair_uid"] == uid)


def test_show_input_prints_the_rendered_text_tokens_truncation_and_reward_position(pytester, tiny_decoder):
    from transformers import AutoTokenizer

    record = discussion_pair("7")
    tokenizer = AutoTokenizer.from_pretrained(tiny_decoder)
    messages = [{"role": m["role"], "content": m["content"]} for m in record["conversation_input"]]
    rendered = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": record["chosen"]["answer"]}],
                                             tokenize=False)
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    limit = len(ids) - 7  # the chosen answer's text is cut by 7 tokens
    kept = ids[:1] + ids[len(ids) - limit + 1:]
    tokens = tokenizer.convert_ids_to_tokens(kept)

    result = pytester.runpytest(*rmb_args("--rmb-model", str(tiny_decoder), "--rmb-device", "cpu", "--rmb-no-cache",
                                          "--rmb-max-length", str(limit), "rmb/chat/discussion",
                                          "--rmb-show-input", "chat/discussion/7", "--rmb-show-input", "nope"))
    assert result.ret == 0
    assert_in_order(result.outlines, [
        re.compile(r"-+ RMB input: chat/discussion pairwise uid 7 -+"),
        f"chosen ({record['chosen']['llm_name']}):",
        f"  rendered text (chat template, {len(rendered)} characters):",
        *[f"    | {line}" for line in rendered.split("\n")],
        f"  tokens: {len(ids)} after rendering, {limit} kept: truncated to {limit}, the first 7 after the "
        f"leading {tokens[0]} dropped (truncation keeps the end)",
        "  the text the model reads after truncation:",
        *[f"    | {line}" for line in tokenizer.decode(kept).split("\n")],
        "  special tokens are [[marked]], the token the reward is read at is >>marked<<:",
        re.compile(re.escape(f"    [[{tokens[0]}]] [... 7 tokens dropped ...] {tokens[1]} ") + ".*"),
        f"  reward: logit 0 read at token {limit - 1} of {limit} ('{tokens[-1]}'): the last token that is not "
        "the pad token",
        re.compile(r"  score of this text alone: -?[\d.e+-]+"),
        f"rejected ({record['reject']['llm_name']}):",
    ])
    assert f">>[[{tokens[-1]}]]<<" in result.stdout.str()  # the reward token, a special one (EOS)
    result.stdout.fnmatch_lines(["*rmb: --rmb-show-input nope: no selected sample has uid nope*"])


def test_explain_shows_a_pad_token_equal_to_eos_skipping_the_trailing_eos(tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from pytest_rmb.backends import ModelSettings, load_spec
    from pytest_rmb.data import Message
    from pytest_rmb.models import ScoreRequest
    from tests.tiny_models import save_decoder

    path = save_decoder(tmp_path / "nopad", pad=False)
    model = load_spec(ModelSettings(str(path), device="cpu"))
    question = (Message("user", "How do I sort a list of strings in Python?"),)
    request = ScoreRequest(question, "Use sorted(items, key=len).")
    details = model.explain(request)
    tokenizer = AutoTokenizer.from_pretrained(path)
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": request.conversation[0].content},
                                              {"role": "assistant", "content": request.response}], tokenize=False)
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert details["rendered"] == rendered and details["ids"] == ids and details["dropped"] == 0
    assert ids[-1] == tokenizer.eos_token_id
    # Padding with EOS: the head reads the last token that is not EOS, one before the text's end.
    assert details["reward_position"] == len(ids) - 2
    assert any("the pad token is the EOS token" in note for note in details["notes"])
    reference = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    reference.config.pad_token_id = tokenizer.eos_token_id
    with torch.inference_mode():
        expected = reference(input_ids=torch.tensor([ids])).logits[0, 0].item()
    assert details["score"] == pytest.approx(expected, abs=1e-5)
    assert model.facts(request) == {"tokens": len(ids), "truncated": False}


def test_show_input_of_a_model_without_explain_shows_the_conversation_and_responses(pytester):
    record = discussion_pair("8")
    result = pytester.runpytest(*rmb_args("--rmb-model", "length", "rmb/chat/discussion", "--rmb-show-input", "8"))
    assert result.ret == 0
    assert_in_order(result.outlines, [
        re.compile(r"-+ RMB input: chat/discussion pairwise uid 8 -+"),
        f"chosen ({record['chosen']['llm_name']}):",
        "  the model has no explain(request); it receives this conversation and response:",
        f"  [{record['conversation_input'][0]['role']}]",
        *[f"    | {line}" for line in record["conversation_input"][0]["content"].split("\n")],
        "  [response]",
        *[f"    | {line}" for line in record["chosen"]["answer"].split("\n")],
        f"rejected ({record['reject']['llm_name']}):",
        "  [response]",
        *[f"    | {line}" for line in record["reject"]["answer"].split("\n")],
    ])


JUDGE = """
from pytest_rmb.models import Verdict

class LongerWins:
    def compare(self, batch):
        return [Verdict(len(r.first) > len(r.second)) for r in batch]

def make():
    return LongerWins()
"""


def test_show_input_of_a_pairwise_model_shows_each_comparison(pytester, monkeypatch):
    pytester.makepyfile(judge_show=JUDGE)
    monkeypatch.syspath_prepend(pytester.path)
    records = json.loads((SAMPLE_DATA / DISCUSSION[1]).read_text())
    record = next(r for r in records if r["bon_uid"] == "4")
    losers = [loser["answer"] for loser in record["loser_list"]]
    result = pytester.runpytest(*rmb_args("--rmb-model", "python:judge_show:make", "rmb/chat/discussion",
                                          "--rmb-show-input", "chat/discussion/4"))
    assert result.ret == 0
    expected: list = [re.compile(r"-+ RMB input: chat/discussion bon uid 4 -+")]
    for position, loser in enumerate(losers, start=1):
        expected += [
            f"comparison {position} of {len(losers)}: best (first) against loser {position} of {len(losers)}",
            "  the model has no explain(request); it receives this conversation and two answers:",
            "  [answer A (first)]",
            *[f"    | {line}" for line in record["bon_best"]["answer"].split("\n")],
            "  [answer B (second)]",
            *[f"    | {line}" for line in loser.split("\n")],
        ]
    assert_in_order(result.outlines, expected)
