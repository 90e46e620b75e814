"""The score cache in the user's cache folder, and ``pytest-rmb cache info|prune``, as users meet them:
real runs in subprocesses started from different directories, the judge stand-in counting every
request, and the command run on real cache folders.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pytest_rmb.cache import GITIGNORE, CachedModel, ScoreCache, cache_home, cached_models, remove
from tests.judge_stub import StubServer

DAY = 86400


def pytest_rmb(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest_rmb", *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=cwd, check=False)


def judge_run(stub: StubServer, cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """A judge run over the sample's chat scenarios, as a user types it in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rmb-model", "openai:stub-judge",
         "--rmb-model-arg", f"base_url={stub.base_url}", "--rmb-data", "sample", "-k", "chat", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# -- the default folder follows the user, not the directory -----------------------------------------


def test_a_judge_run_started_elsewhere_asks_the_judge_nothing_again(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    env = {**os.environ, "XDG_CACHE_HOME": str(xdg)}
    first, second = tmp_path / "project", tmp_path / "elsewhere" / "deeper"
    first.mkdir()
    second.mkdir(parents=True)
    scores = xdg / "pytest-rmb" / "scores"
    with StubServer(tmp_path, "longer") as stub:
        cold = judge_run(stub, first, env)
        assert cold.returncode == 0, cold.stdout[-3000:] + cold.stderr[-3000:]
        asked = len(stub.requests())
        warm = judge_run(stub, second, env)
        assert warm.returncode == 0, warm.stdout[-3000:] + warm.stderr[-3000:]
        assert len(stub.requests()) == asked

    # Every verdict the first run paid for is in the user's cache: one line per comparison, each
    # comparison asked in both orders.
    [cache_file] = scores.glob("*.jsonl")
    assert asked > 0 and asked == 2 * len(lines_of(cache_file))
    assert "0 requests to stub-judge: the cache holds every verdict this run needs" in warm.stdout
    # On the first screen: where the cache is.
    for run in (cold, warm):
        assert f"rmb: score cache {scores} (pytest-rmb cache info)" in run.stdout.splitlines()[:8]
    # Nothing in either directory the runs started from.
    assert [p.name for p in first.iterdir()] == [] and [p.name for p in second.iterdir()] == []

    info = pytest_rmb("cache", "info", env=env, cwd=second)
    assert info.returncode == 0, info.stderr
    rows = info.stdout.splitlines()
    assert rows[0] == f"score cache: {scores}"
    assert rows[1].startswith(f"1 model(s), {len(lines_of(cache_file))} entries, ")
    [row] = [r for r in rows if r.startswith(cache_file.stem)]
    assert row.split()[1] == str(len(lines_of(cache_file)))
    assert row.endswith("  openai:stub-judge")


def test_the_cache_home_is_xdg_cache_home_when_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_home() == tmp_path / "xdg" / "pytest-rmb"
    # A relative one would make the folder depend on where the run starts: the XDG spec says to
    # ignore it.
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    assert cache_home() == tmp_path / "home" / ".cache" / "pytest-rmb"


# -- pytest-rmb cache info | prune ------------------------------------------------------------------


def make_cache(folder: Path, models: dict[str, tuple[str | None, int, float]]) -> dict[str, Path]:
    """A cache as runs leave it: fingerprint -> (--rmb-model, entries, days since last use)."""
    files = {}
    for fingerprint, (model, entries, days_ago) in models.items():
        cache = ScoreCache(folder, fingerprint, model=model)
        cache.append([(f"key-{i}", float(i)) for i in range(entries)])
        stamp = time.time() - days_ago * DAY
        os.utime(cache.path, (stamp, stamp))
        files[fingerprint] = cache.path
    return files


def test_info_lists_each_model_newest_first(tmp_path: Path) -> None:
    folder = tmp_path / "scores"
    files = make_cache(folder, {"aaaa": ("hf:old-model", 3, 40), "bbbb": ("openai:judge", 5, 1)})
    # A key written twice (a rerun after a torn line) is one entry; a torn line is none.
    with open(files["aaaa"], "a", encoding="utf-8") as out:
        out.write(json.dumps({"k": "key-0", "s": 9.0}) + "\n" + '{"k": "torn')
    stamp = time.time() - 40 * DAY
    os.utime(files["aaaa"], (stamp, stamp))
    done = pytest_rmb("cache", "info", "--cache-dir", str(folder))
    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()
    assert rows[0] == f"score cache: {folder}"
    oldest = time.strftime("%Y-%m-%d", time.localtime(time.time() - 40 * DAY))
    assert rows[1].startswith("2 model(s), 8 entries, ") and f"from {oldest}" in rows[1]
    assert [row.split()[:2] + row.split()[-1:] for row in rows[3:]] == [
        ["bbbb", "5", "openai:judge"], ["aaaa", "3", "hf:old-model"]]


def test_info_on_a_folder_with_nothing_yet(tmp_path: Path) -> None:
    done = pytest_rmb("cache", "info", "--cache-dir", str(tmp_path / "never-made"))
    assert done.returncode == 0
    assert done.stdout.splitlines() == [f"score cache: {tmp_path / 'never-made'}",
                                        "empty: nothing has been cached here yet"]
    assert not (tmp_path / "never-made").exists()


def test_prune_older_than_removes_only_models_unused_that_long(tmp_path: Path) -> None:
    folder = tmp_path / "scores"
    files = make_cache(folder, {"old": ("hf:old-model", 2, 40), "new": ("hf:new-model", 2, 2)})
    dry = pytest_rmb("cache", "prune", "--older-than", "30", "--dry-run", "--cache-dir", str(folder))
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("would remove old (hf:old-model; 2 entries, ")
    assert "would remove 1 of 2 model(s)" in dry.stdout
    assert files["old"].exists() and (folder / "old.model").exists()

    done = pytest_rmb("cache", "prune", "--older-than", "30", "--cache-dir", str(folder))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("removed old (hf:old-model; 2 entries, ")
    assert sorted(p.name for p in folder.iterdir()) == [".gitignore", "new.jsonl", "new.model"]


def test_prune_one_model_by_fingerprint_or_name_or_all(tmp_path: Path) -> None:
    folder = tmp_path / "scores"
    make_cache(folder, {"f1": ("hf:one", 1, 0), "f2": ("hf:two", 1, 0), "f3": (None, 1, 0), "f4": ("hf:four", 1, 0)})
    assert pytest_rmb("cache", "prune", "--model", "f1", "--cache-dir", str(folder)).returncode == 0
    assert pytest_rmb("cache", "prune", "--model", "hf:two", "--cache-dir", str(folder)).returncode == 0
    assert sorted(p.name for p in folder.glob("*.jsonl")) == ["f3.jsonl", "f4.jsonl"]
    unknown = pytest_rmb("cache", "prune", "--model", "hf:nine", "--cache-dir", str(folder))
    assert unknown.returncode == 2
    assert f"pytest-rmb cache: --model hf:nine: no such model in {folder}; cached: " in unknown.stderr
    assert "f4 (hf:four)" in unknown.stderr and "f3" in unknown.stderr
    everything = pytest_rmb("cache", "prune", "--model", "all", "--cache-dir", str(folder))
    assert everything.returncode == 0
    assert "removed 2 of 2 model(s)" in everything.stdout
    assert [p.name for p in folder.iterdir()] == [".gitignore"]


def test_prune_says_what_it_needs_and_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    folder = tmp_path / "scores"
    make_cache(folder, {"f1": ("hf:one", 1, 99)})
    vague = pytest_rmb("cache", "prune", "--cache-dir", str(folder))
    assert vague.returncode == 2
    assert "say what to remove: --older-than DAYS, --model FINGERPRINT, or --model all" in vague.stderr
    negative = pytest_rmb("cache", "prune", "--older-than", "-3", "--cache-dir", str(folder))
    assert negative.returncode == 2 and "expected a number of days (0 or more), got '-3'" in negative.stderr

    someone_elses = tmp_path / "logs"
    someone_elses.mkdir()
    (someone_elses / "events.jsonl").write_text('{"k": "x", "s": 1}\n')
    (someone_elses / ".gitignore").write_text("*.log\n")
    for command in (["prune", "--model", "all"], ["info"]):
        refused = pytest_rmb("cache", *command, "--cache-dir", str(someone_elses))
        assert refused.returncode == 2
        assert refused.stderr.strip() == (
            f"pytest-rmb cache: {someone_elses} does not look like a pytest-rmb score cache (no .gitignore "
            "written by pytest-rmb in it); nothing was read or removed")
    assert (someone_elses / "events.jsonl").read_text() == '{"k": "x", "s": 1}\n'


def test_a_run_marks_its_model_used_even_when_the_cache_answers_everything(tmp_path: Path) -> None:
    folder = tmp_path / "scores"
    [path] = make_cache(folder, {"fp": ("hf:m", 1, 50)}).values()
    ScoreCache(folder, "fp", model="hf:m")  # what a run does when it opens its model's cache
    [model] = cached_models(folder)
    assert time.time() - model.last_used < 60
    assert path.read_text(encoding="utf-8").count("\n") == 1


def test_results_appended_while_a_prune_removes_the_file_land_in_a_new_one(tmp_path: Path) -> None:
    """A session still running when its model is pruned keeps what it pays for from then on."""
    import fcntl

    folder = tmp_path / "scores"
    cache = ScoreCache(folder, "fp", model="hf:m")
    cache.append([("before", 1.0)])
    # The prune holds the file's lock while the session's append waits for it, then removes it.
    with open(cache.path, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        waiting = threading.Thread(target=cache.append, args=([("after", 2.0)],))
        waiting.start()
        time.sleep(0.3)
        assert waiting.is_alive()  # blocked on the lock
        cache.path.unlink()
    waiting.join(timeout=10)
    assert lines_of(cache.path) == [{"k": "after", "s": 2.0}]


def test_remove_leaves_everything_but_its_own_two_files(tmp_path: Path) -> None:
    folder = tmp_path / "scores"
    make_cache(folder, {"fp": ("hf:m", 1, 0), "other": ("hf:o", 1, 0)})
    (folder / "notes.txt").write_text("mine")
    [model] = [m for m in cached_models(folder) if m.fingerprint == "fp"]
    remove(folder, model)
    assert sorted(p.name for p in folder.iterdir()) == [".gitignore", "notes.txt", "other.jsonl", "other.model"]
    assert (folder / ".gitignore").read_text() == GITIGNORE
    assert isinstance(model, CachedModel) and model.entries == 1


# -- the test session keeps out of the user's caches ------------------------------------------------


def test_this_session_writes_no_cache_into_the_users_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests import smollm

    base = tmp_path_factory.getbasetemp()
    assert Path(os.environ["XDG_CACHE_HOME"]).is_relative_to(base)
    assert cache_home().is_relative_to(base)
    if not os.environ.get("RMB_TEST_CACHE"):
        # Under xdist the run's folder holds every worker's.
        assert base.is_relative_to(smollm.cache_root().parent)
