"""The score cache and the output files under faults, as users meet them: a cache line damaged on
disk, a cache folder that cannot be written (from the start, or from half-way through a run), and
two output options naming one file.

Work is counted outside the code under test: a python: model logs every text it is asked to score
into a file of its own, and the judge stand-in (tests/judge_stub.py) logs every request it serves.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import SAMPLE_DATA, all_files, run_rmb
from tests.judge_stub import StubServer

# Unique (conversation, answer) texts of the bundled sample: what a cold run scores, each once.
SAMPLE_TEXTS = len({
    (json.dumps(r["conversation_input"]), answer)
    for records in all_files(SAMPLE_DATA).values() for r in records
    for answer in ([r["chosen"]["answer"], r["reject"]["answer"]] if "pair_uid" in r
                   else [r["bon_best"]["answer"]] + [x["answer"] for x in r["loser_list"]])
})

# A deterministic cached scorer that logs each text it scores (one line each) to scored.jsonl in
# the folder it runs in. With REMOVE_CACHE_AT_CALL=N it deletes the cache folder at the start of
# its N-th call, as a cleanup job or a lost mount would, half-way through the run.
COUNTING_SCORER = '''
import hashlib, json, os, pathlib, shutil

class Counting:
    calls = 0

    def fingerprint(self):
        return "counting-v1"

    def score(self, batch):
        Counting.calls += 1
        if Counting.calls == int(os.environ.get("REMOVE_CACHE_AT_CALL", "0")):
            shutil.rmtree(os.environ["CACHE_TO_REMOVE"])
        with open("scored.jsonl", "a") as log:
            for request in batch:
                log.write(json.dumps({"call": Counting.calls, "text": request.response}) + "\\n")
        return [len(r.response) + int.from_bytes(hashlib.sha256(r.response.encode()).digest()[:4], "big") / 2**32
                for r in batch]

def make():
    return Counting()
'''

@pytest.fixture
def read_only_holds(tmp_path):
    """Skip where a folder's missing write permission does not stop this process (root, or any
    process with the capability to override file permissions): tried, not assumed from the uid."""
    folder = tmp_path / "read-only-probe"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "written").write_text("")
    except PermissionError:
        return
    finally:
        folder.chmod(0o755)
    pytest.skip("this process writes into a read-only (chmod 555) folder anyway (root, or the capability "
                "to override permissions); the root-proof case, a cache folder under a regular file, runs instead")


@pytest.fixture
def counting(pytester, monkeypatch):
    """The counting scorer beside the run; ``scored()`` reads its log."""
    pytester.makepyfile(counting_scorer=COUNTING_SCORER)
    monkeypatch.delenv("REMOVE_CACHE_AT_CALL", raising=False)

    def scored() -> list[dict]:
        log = pytester.path / "scored.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return scored


def rmb(pytester, *args: str):
    return run_rmb(pytester, *args, options=("--rmb-data", "sample"))


def score(pytester, name: str, *args: str):
    """A counting-scorer run writing name.json and name.jsonl."""
    # No self-check: its re-scoring would count as asked texts.
    return rmb(pytester, "--rmb-model", "python:counting_scorer:make", "--rmb-self-check", "0",
               "--rmb-json", f"{name}.json", "--rmb-jsonl", f"{name}.jsonl", *args)


def text_of(result) -> str:
    return result.stdout.str() + "\n" + result.stderr.str()


def summary(pytester, name: str) -> dict:
    return json.loads((pytester.path / f"{name}.json").read_text())


def samples(pytester, name: str) -> str:
    return (pytester.path / f"{name}.jsonl").read_text()


@pytest.fixture
def judge_stub(tmp_path_factory):
    with StubServer(tmp_path_factory.mktemp("stub-logs"), "longer") as stub:
        yield stub


def judge(pytester, stub: StubServer, *args: str):
    return rmb(pytester, "--rmb-model", "openai:stub-judge", "--rmb-model-arg", f"base_url={stub.base_url}", *args)


# -- 3. a cache line whose bytes are not UTF-8 ------------------------------------------------------

def damage(line: bytes) -> bytes:
    """The line with one byte of its key replaced by one that no UTF-8 text has (0xff)."""
    start = line.index(b'"k": "') + len(b'"k": "')
    return line[:start + 3] + b"\xff" + line[start + 4:]


def test_a_cache_line_that_is_not_utf8_costs_only_its_own_text(pytester, counting):
    cold = score(pytester, "cold", "--rmb-cache-dir", "cache")
    assert cold.ret == 0, text_of(cold)
    assert len(counting()) == SAMPLE_TEXTS
    cache_file = pytester.path / "cache" / "counting-v1.jsonl"
    lines = cache_file.read_bytes().splitlines(keepends=True)
    assert len(lines) == SAMPLE_TEXTS
    hit = 7  # a line in the middle: the lines after it must still count
    cache_file.write_bytes(b"".join(lines[:hit] + [damage(lines[hit])] + lines[hit + 1:]))

    rerun = score(pytester, "rerun", "--rmb-cache-dir", "cache")
    assert rerun.ret == 0, text_of(rerun)
    assert "UnicodeDecodeError" not in text_of(rerun)
    assert len(counting()) == SAMPLE_TEXTS + 1  # that one text, asked again
    assert samples(pytester, "rerun") == samples(pytester, "cold")
    assert summary(pytester, "rerun")["outcomes"] == summary(pytester, "cold")["outcomes"]
    engine = summary(pytester, "rerun")["engine"]
    assert (engine["texts_scored"], engine["cache_hits"]) == (1, SAMPLE_TEXTS - 1)
    # The text asked again is the damaged line's: its record is appended as it was before the damage.
    assert cache_file.read_bytes().splitlines(keepends=True)[-1] == lines[hit]


def test_a_judge_cache_line_that_is_not_utf8_costs_only_its_own_comparison(pytester, judge_stub):
    cold = judge(pytester, judge_stub, "--rmb-cache-dir", "cache", "--rmb-jsonl", "cold.jsonl")
    assert cold.ret == 0, text_of(cold)
    paid = len(judge_stub.requests())
    [cache_file] = (pytester.path / "cache").glob("*.jsonl")
    lines = cache_file.read_bytes().splitlines(keepends=True)
    assert paid % len(lines) == 0  # every comparison costs the same requests (its orders)
    per_comparison = paid // len(lines)
    cache_file.write_bytes(b"".join([damage(lines[0]), *lines[1:]]))

    rerun = judge(pytester, judge_stub, "--rmb-cache-dir", "cache", "--rmb-jsonl", "rerun.jsonl")
    assert rerun.ret == 0, text_of(rerun)
    assert len(judge_stub.requests()) == paid + per_comparison
    assert samples(pytester, "rerun") == samples(pytester, "cold")
    again = json.loads(cache_file.read_bytes().splitlines()[-1])
    assert again["k"] == json.loads(lines[0])["k"]


# -- 4. a cache folder that cannot be written ----------------------------------------------------

def assert_refused_before_anything(result, folder: Path) -> None:
    out = text_of(result)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, out
    assert f"cannot write the score cache folder {folder}" in out
    assert "--rmb-no-cache" in out and "--rmb-cache-dir" in out
    assert "Traceback" not in out and "PermissionError" not in out


def test_a_cache_folder_under_a_regular_file_is_refused_before_any_request(pytester, judge_stub):
    (pytester.path / "blocker").write_text("a file, not a folder\n")
    refused = judge(pytester, judge_stub, "--rmb-cache-dir", "blocker/cache", "--rmb-json", "error.json")
    assert_refused_before_anything(refused, pytester.path / "blocker" / "cache")
    assert judge_stub.requests(path="") == []  # not even the check of the served models
    error = summary(pytester, "error")
    assert error["status"] == "error" and "blocker/cache" in error["reason"]

    # The ways out the message names both work.
    assert judge(pytester, judge_stub, "--rmb-no-cache", "-m", "harmlessness").ret == 0
    assert judge(pytester, judge_stub, "--rmb-cache-dir", "elsewhere", "-m", "harmlessness").ret == 0


def test_a_model_is_not_loaded_for_a_cache_that_cannot_be_written(pytester, counting):
    (pytester.path / "blocker").write_text("")
    refused = score(pytester, "error", "--rmb-cache-dir", "blocker/cache", "-n", "2")
    assert_refused_before_anything(refused, pytester.path / "blocker" / "cache")
    assert counting() == []


def test_an_empty_read_only_cache_folder_is_refused_without_a_traceback_per_item(pytester, judge_stub,
                                                                                  read_only_holds):
    folder = pytester.path / "cache"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        refused = judge(pytester, judge_stub, "--rmb-cache-dir", "cache")
    finally:
        folder.chmod(0o755)
    assert_refused_before_anything(refused, folder)
    assert judge_stub.requests(path="") == []


def test_a_read_only_cache_with_files_in_it_is_refused_before_any_paid_request(pytester, judge_stub,
                                                                                 read_only_holds):
    # A CI cache restored read-only: filled by an earlier run of part of the benchmark.
    assert judge(pytester, judge_stub, "--rmb-cache-dir", "cache", "-m", "harmlessness").ret == 0
    paid = len(judge_stub.requests(path=""))
    folder = pytester.path / "cache"
    folder.chmod(0o555)
    try:
        refused = judge(pytester, judge_stub, "--rmb-cache-dir", "cache")
    finally:
        folder.chmod(0o755)
    assert_refused_before_anything(refused, folder)
    assert len(judge_stub.requests(path="")) == paid


def test_a_cache_lost_mid_run_costs_no_result(pytester, counting, monkeypatch):
    reference = score(pytester, "reference", "--rmb-no-cache")
    assert reference.ret == 0, text_of(reference)
    asked_for_reference = len(counting())
    (pytester.path / "scored.jsonl").unlink()

    monkeypatch.setenv("CACHE_TO_REMOVE", str(pytester.path / "cache"))
    monkeypatch.setenv("REMOVE_CACHE_AT_CALL", "3")
    lost = score(pytester, "lost", "--rmb-cache-dir", "cache", "--rmb-batch-size", "4")
    out = text_of(lost)
    assert lost.ret == 0, out
    assert len(counting()) == asked_for_reference == SAMPLE_TEXTS
    # Every result is in the outputs, as in a run without a cache.
    assert samples(pytester, "lost") == samples(pytester, "reference")
    assert summary(pytester, "lost")["outcomes"] == summary(pytester, "reference")["outcomes"]
    assert summary(pytester, "lost")["sections"] == summary(pytester, "reference")["sections"]
    # The texts of the third call on were received after the folder went: not one of them saved.
    unsaved = sum(1 for entry in counting() if entry["call"] >= 3)
    assert 0 < unsaved < SAMPLE_TEXTS
    assert summary(pytester, "lost")["engine"]["cache_write_failures"] == unsaved
    assert out.count(f"cannot write the score cache {pytester.path / 'cache' / 'counting-v1.jsonl'}") == 1
    assert f"; {unsaved} results not saved in the cache (a rerun asks them again)" in out
    assert not (pytester.path / "cache").exists()


def test_a_run_whose_cache_writes_fine_counts_no_failures(pytester, counting):
    result = score(pytester, "fine", "--rmb-cache-dir", "cache")
    assert result.ret == 0, text_of(result)
    assert summary(pytester, "fine")["engine"]["cache_write_failures"] == 0
    assert "cannot write the score cache" not in text_of(result)
    assert "not saved in the cache" not in text_of(result)


# -- 5. two outputs on one path -----------------------------------------------------------------

PAIRS = [
    ("--rmb-json", "--rmb-jsonl"),
    ("--rmb-json", "--rmb-markdown"),
    ("--rmb-jsonl", "--rmb-markdown"),
    ("--rmb-json", "--junitxml"),
    ("--rmb-jsonl", "--junitxml"),
    ("--rmb-markdown", "--junitxml"),
]


def spellings(root: Path) -> dict[str, tuple[str, str]]:
    """Two ways to name root/out/run.txt, by kind."""
    (root / "out").mkdir(exist_ok=True)
    (root / "link").symlink_to(root / "out", target_is_directory=True)
    return {
        "same": ("out/run.txt", "out/run.txt"),
        "relative-and-absolute": ("out/run.txt", str(root / "out" / "run.txt")),
        "dot-slash": ("./out/run.txt", "out/../out/run.txt"),
        "symlinked-folder": ("out/run.txt", "link/run.txt"),
    }


@pytest.mark.parametrize("first, second", PAIRS)
@pytest.mark.parametrize("spelling", ["same", "relative-and-absolute", "dot-slash", "symlinked-folder"])
def test_two_outputs_on_one_file_are_refused_before_anything_runs(pytester, first, second, spelling):
    one, other = spellings(pytester.path)[spelling]
    result = rmb(pytester, "--rmb-model", "length", first, one, second, other)
    out = text_of(result)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, out
    assert (f"{first} {one} and {second} {other} name the same file ({pytester.path / 'out' / 'run.txt'})"
            in out)
    assert list((pytester.path / "out").iterdir()) == []  # nothing ran, nothing written
    assert "passed" not in out


def test_an_existing_file_and_a_symlink_to_it_are_one_file(pytester):
    (pytester.path / "run.json").write_text("{}")
    (pytester.path / "alias.jsonl").symlink_to(pytester.path / "run.json")
    result = rmb(pytester, "--rmb-model", "length", "--rmb-json", "run.json", "--rmb-jsonl", "alias.jsonl")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--rmb-json run.json and --rmb-jsonl alias.jsonl name the same file" in text_of(result)
    assert (pytester.path / "run.json").read_text() == "{}"


def test_two_outputs_on_one_file_are_refused_once_under_xdist(pytester):
    result = rmb(pytester, "--rmb-model", "length", "-n", "2", "--rmb-json", "run.json", "--junitxml", "./run.json")
    out = text_of(result)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, out
    assert out.count("--rmb-json run.json and --junitxml ./run.json name the same file") == 1
    assert not (pytester.path / "run.json").exists()


def test_outputs_on_different_files_all_get_written(pytester):
    result = rmb(pytester, "--rmb-model", "length", "-m", "harmlessness", "--rmb-json", "run.json",
                 "--rmb-jsonl", "run.jsonl", "--rmb-markdown", "run.md", "--junitxml", "run.xml")
    assert result.ret == 0, text_of(result)
    assert json.loads((pytester.path / "run.json").read_text())["status"] == "ok"
    assert (pytester.path / "run.jsonl").read_text().count("\n") > 0
    assert (pytester.path / "run.md").read_text().startswith("#")
    assert (pytester.path / "run.xml").read_text().startswith("<?xml")

