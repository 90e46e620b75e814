"""``pytest-rmb fetch`` against real HTTP servers on 127.0.0.1 and real files."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import pytest

import pytest_rmb
from pytest_rmb import fetch as fetch_mod
from pytest_rmb.fetch import (
    MANIFEST,
    Progress,
    cached_dataset,
    check,
    default_dest,
    fetch,
    git_blob_sha1,
    main,
    read_manifest,
)
from pytest_rmb.http import RetryPolicy
from tests.helpers import SAMPLE_DATA, SHARED_DATA
from tests.test_http import LocalServer, Reply, Request, free_port

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO_ROOT = Path(pytest_rmb.__file__).resolve().parents[1]
SHARED_MANIFEST = SHARED_DATA.parent / "RMB_MANIFEST.tsv"
REAL_ABSENT = [
    "RMB_dataset/Pairwise_set/Harmlessness/S11.json",
    "RMB_dataset/Pairwise_set/Helpfulness/Brainstorming/Idea Development.json",
    "RMB_dataset/Pairwise_set/Helpfulness/Generation/Creative Writing.json",
]


def blob_sha(data: bytes) -> str:
    """Git's blob id, computed here independently of pytest_rmb."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Tree:
    """A small RMB-like tree on disk plus its manifest, and a server that serves it."""

    def __init__(self, root: Path, count: int = 20) -> None:
        self.src = root / "src"
        self.files: dict[str, bytes] = {}
        for i in range(count):
            kind = "Pairwise_set" if i % 2 else "BoN_set"
            name = f"RMB_dataset/{kind}/Helpfulness/Open QA/Scenario {i:02d}.json"
            self.files[name] = (f'[{{"uid": "{i}", "text": "' + "abc " * (500 * (i + 1)) + '"}]').encode()
        for name, data in self.files.items():
            (self.src / name).parent.mkdir(parents=True, exist_ok=True)
            (self.src / name).write_bytes(data)
        self.manifest = root / "manifest.tsv"
        lines = [f"# RMB_dataset manifest: upstream Example/Repo at commit {COMMIT}", "# columns: sha1, path"]
        lines += [f"{blob_sha(data)}\t{name}" for name, data in self.files.items()]
        self.manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.overrides: dict[str, Reply] = {}
        self.delay = 0.0

    def app(self, request: Request, index: int) -> Reply:
        name = unquote(request.path).lstrip("/")
        if name in self.overrides:
            return self.overrides[name]
        path = self.src / name
        if not path.is_file():
            return Reply(404, b"Not Found")
        return Reply(body=path.read_bytes(), delay=self.delay)


def gets(server: LocalServer) -> list[str]:
    return [unquote(r.path).lstrip("/") for r in server.requests if r.method == "GET"]


def run_fetch(url: str, dest: Path, manifest: Path, *extra: str) -> tuple[int, str, str, float]:
    out, err = io.StringIO(), io.StringIO()
    start = time.monotonic()
    saved, sys.stderr = sys.stderr, err
    try:
        rc = main(["--url", url, "--dest", str(dest), "--manifest", str(manifest), *extra], out=out)
    finally:
        sys.stderr = saved
    return rc, out.getvalue(), err.getvalue(), time.monotonic() - start


def leftovers(dest: Path) -> list[Path]:
    return [p for p in dest.rglob("*") if p.name.endswith(".part")]


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path)


# -- manifest, hashing, locations ----------------------------------------------------------------


def test_git_blob_sha1_matches_git(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "hello").write_bytes(b"hello\n")
    # the ids `git hash-object` prints for these two files
    assert git_blob_sha1(tmp_path / "empty") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    assert git_blob_sha1(tmp_path / "hello") == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_packaged_manifest_pins_upstream() -> None:
    manifest = read_manifest()
    assert len(manifest.entries) == 98
    assert all(name.startswith("RMB_dataset/") for name, _ in manifest.entries)
    assert manifest.repo == "Zhou-Zoey/RMB-Reward-Model-Benchmark"
    assert manifest.commit == "2be3180857f2190b7ffa929d43190835627f1f4d"
    assert manifest.default_url == (
        "https://raw.githubusercontent.com/Zhou-Zoey/RMB-Reward-Model-Benchmark/"
        "2be3180857f2190b7ffa929d43190835627f1f4d/"
    )
    if SHARED_MANIFEST.is_file():
        assert MANIFEST.read_bytes() == SHARED_MANIFEST.read_bytes()


def test_default_dest_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pytest_rmb.cache import default_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_dest() == tmp_path / "xdg" / "pytest-rmb"
    # The score cache lives beside the fetched data.
    assert default_cache_dir() == tmp_path / "xdg" / "pytest-rmb" / "scores"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_dest() == tmp_path / "home" / ".cache" / "pytest-rmb"


def test_bad_manifest_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "m.tsv"
    path.write_text("# header\nabc\tRMB_dataset/x.json\n")
    with pytest.raises(ValueError, match=r"m.tsv:2"):
        read_manifest(path)


# -- fetch -----------------------------------------------------------------------------------------


def test_clean_fetch_then_rerun_downloads_nothing(tree: Tree, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    with LocalServer(tree.app) as server:
        rc, out, err, _ = run_fetch(server.url + "/", dest, tree.manifest)
        assert rc == 0, out + err
        assert sorted(gets(server)) == sorted(tree.files)
        for name, data in tree.files.items():
            assert (dest / name).read_bytes() == data
        assert "20/20 files verified" in out and f"--rmb-data {dest / 'RMB_dataset'}" in out
        assert out.count(" ok ") == 20  # one plain progress line per file (output is not a TTY)
        assert not leftovers(dest)

        rc, out, _, _ = run_fetch(server.url, dest, tree.manifest)
        assert rc == 0
        assert len(gets(server)) == 20  # nothing fetched again
        assert "20 of 20 files already verified" in out
    assert check(dest, read_manifest(tree.manifest)).ok


def test_resume_after_kill_downloads_only_the_rest(tree: Tree, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    tree.delay = 0.15  # slow enough to kill the fetch part-way
    with LocalServer(tree.app) as server:
        args = ["--url", server.url, "--dest", str(dest), "--manifest", str(tree.manifest), "--jobs", "2"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest_rmb", "fetch", *args],
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 60
            while len(server.requests) < 8 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
            if proc.stderr:
                proc.stderr.close()
        first = len(server.requests)
        kept = [name for name in tree.files if (dest / name).exists()]
        # everything under a final name is complete and verified, however the kill landed
        assert all((dest / name).read_bytes() == tree.files[name] for name in kept)
        assert 5 <= len(kept) < 20

        tree.delay = 0.0
        rc, out, err, _ = run_fetch(server.url, dest, tree.manifest)
        assert rc == 0, out + err
        again = gets(server)[first:]
        assert sorted(again) == sorted(set(tree.files) - set(kept))  # only the rest, each once
        assert f"{len(kept)} of 20 files already verified" in out
    assert all((dest / name).read_bytes() == data for name, data in tree.files.items())
    assert not leftovers(dest)  # the killed run's temp file was cleaned up


def test_corrupted_file_is_not_kept_and_is_named(tree: Tree, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    bad = next(iter(tree.files))
    tree.overrides[bad] = Reply(body=tree.files[bad].replace(b"abc", b"abd", 1))
    with LocalServer(tree.app) as server:
        rc, out, _, _ = run_fetch(server.url, dest, tree.manifest)
        assert rc == 1
        assert f"failed verification: {bad}: sha1 " in out
        assert "19/20 files verified" in out
        assert not (dest / bad).exists() and not leftovers(dest)
        assert all((dest / n).read_bytes() == d for n, d in tree.files.items() if n != bad)

        del tree.overrides[bad]  # the mirror is fixed: the rerun fetches only that file
        rc, _, _, _ = run_fetch(server.url, dest, tree.manifest)
        assert rc == 0
        assert gets(server)[20:] == [bad]


def test_tampered_local_file_is_replaced(tree: Tree, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    name = list(tree.files)[3]
    (dest / name).parent.mkdir(parents=True)
    (dest / name).write_bytes(b"[]")
    with LocalServer(tree.app) as server:
        rc, _, _, _ = run_fetch(server.url, dest, tree.manifest)
    assert rc == 0 and (dest / name).read_bytes() == tree.files[name]


def test_file_cut_short_is_not_kept(tree: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch_mod, "FETCH_POLICY", RetryPolicy(retries=2, backoff=0.05, timeout=10.0))
    dest = tmp_path / "dest"
    name = list(tree.files)[5]
    tree.overrides[name] = Reply(body=tree.files[name], truncate=1000)
    with LocalServer(tree.app) as server:
        rc, out, _, _ = run_fetch(server.url, dest, tree.manifest)
    assert rc == 1
    assert f"failed verification: {name}: incomplete download" in out
    assert not (dest / name).exists() and not leftovers(dest)
    assert len(check(dest, read_manifest(tree.manifest)).good) == 19


def test_file_the_server_lacks_is_named_and_the_rest_kept(tree: Tree, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    gone = list(tree.files)[7]
    (tree.src / gone).unlink()
    with LocalServer(tree.app) as server:
        rc, out, _, _ = run_fetch(server.url, dest, tree.manifest)
        assert rc == 1
        quoted = gone.replace(" ", "%20")
        assert f"missing: {gone}: HTTP 404 from {server.url}/{quoted}" in out
        assert "1 file(s) not fetched" in out
        assert len(check(dest, read_manifest(tree.manifest)).good) == 19

        rc, out, _, _ = run_fetch(server.url, dest, tree.manifest)  # still absent upstream
        assert rc == 1
        assert gets(server)[20:] == [gone]


def test_server_down_fails_within_seconds_naming_url(tree: Tree, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/mirror/"
    rc, out, err, elapsed = run_fetch(url, tmp_path / "dest", tree.manifest)
    assert rc == 1
    assert elapsed < 5.0
    assert "error: cannot reach the server: GET http://127.0.0.1:" in err
    assert "/mirror/RMB_dataset/" in err and "cannot connect" in err
    assert f"git clone https://github.com/Example/Repo && git -C Repo checkout {COMMIT}" in err
    assert "0/20 files verified" in out


def test_destination_not_writable(tree: Tree, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    rc, _, err, _ = run_fetch("http://127.0.0.1:9", blocker / "dest", tree.manifest)
    assert rc == 1
    assert f"error: cannot write to {blocker / 'dest'}: Not a directory" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only folder")
def test_destination_read_only(tree: Tree, tmp_path: Path) -> None:
    dest = tmp_path / "ro"
    dest.mkdir()
    dest.chmod(0o500)
    try:
        rc, _, err, _ = run_fetch("http://127.0.0.1:9", dest, tree.manifest)
    finally:
        dest.chmod(0o700)
    assert rc == 1 and "Permission denied" in err


def test_rich_progress_on_a_terminal(tree: Tree, tmp_path: Path) -> None:
    out = io.StringIO()
    with LocalServer(tree.app) as server:
        result = fetch(server.url, tmp_path / "d", read_manifest(tree.manifest), progress=Progress(out, 0, rich=True))
    assert result.ok and len(result.downloaded) == 20 and result.requests == 20
    assert "20/20" in out.getvalue() and " ok " not in out.getvalue()


# -- check and the cache ---------------------------------------------------------------------------


def test_check_good_and_tampered_copies(tree: Tree, tmp_path: Path) -> None:
    def check_cli(target: Path) -> tuple[int, str]:
        out = io.StringIO()
        return main(["--check", str(target), "--manifest", str(tree.manifest)], out=out), out.getvalue()

    assert check_cli(tree.src) == (0, f"20/20 files verified in {tree.src}\n")
    assert check_cli(tree.src / "RMB_dataset")[0] == 0  # the dataset folder itself works too
    names = list(tree.files)
    with (tree.src / names[0]).open("ab") as handle:
        handle.write(b" ")
    (tree.src / names[1]).unlink()
    rc, out = check_cli(tree.src)
    assert rc == 1
    assert f"missing: {names[1]}\n" in out
    assert f"bad: {names[0]}: sha1 {blob_sha(tree.files[names[0]] + b' ')} does not match" in out
    assert "18/20 files verified" in out
    assert check_cli(tmp_path / "nowhere")[0] == 1


def test_cached_dataset(tree: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert cached_dataset() is None
    with LocalServer(tree.app) as server:
        out = io.StringIO()
        assert main(["--url", server.url, "--manifest", str(tree.manifest)], out=out) == 0
    dataset = tmp_path / "cache" / "pytest-rmb" / "RMB_dataset"
    assert cached_dataset() == dataset
    name = list(tree.files)[2]
    (tmp_path / "cache" / "pytest-rmb" / name).write_bytes(b"[]")  # a different size
    assert cached_dataset() is None
    (tmp_path / "cache" / "pytest-rmb" / name).unlink()
    assert cached_dataset() is None


# -- the real benchmark ----------------------------------------------------------------------------


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real RMB data not found at {SHARED_DATA}")
def test_full_fetch_of_the_real_dataset(tmp_path: Path) -> None:
    src = tmp_path / "mirror"
    shutil.copytree(SHARED_DATA, src / "RMB_dataset")

    def app(request: Request, index: int) -> Reply:
        path = src / unquote(request.path).lstrip("/")
        return Reply(body=path.read_bytes()) if path.is_file() else Reply(404, b"Not Found")

    dest = tmp_path / "dest"
    with LocalServer(app) as server:
        rc, out, err, elapsed = run_fetch(server.url, dest, MANIFEST)
    assert rc == 1, err
    assert sorted(line.split(": ")[1] for line in out.splitlines() if line.startswith("missing: ")) == REAL_ABSENT
    assert "95/98 files verified" in out and "3 file(s) not fetched" in out
    result = check(dest, read_manifest())
    assert len(result.good) == 95 and sorted(result.missing) == REAL_ABSENT and not result.bad
    print(f"real RMB_dataset, 95 files over 127.0.0.1: {elapsed:.2f}s")



# -- the fetched copy as --rmb-data ------------------------------------------------------------------


class SampleTree(Tree):
    """The bundled sample under RMB_dataset/ paths, with its own manifest: a stand-in upstream."""

    def __init__(self, root: Path) -> None:
        self.src = root / "src"
        self.files = {}
        for path in sorted(SAMPLE_DATA.rglob("*.json")):
            name = f"RMB_dataset/{path.relative_to(SAMPLE_DATA).as_posix()}"
            self.files[name] = path.read_bytes()
            (self.src / name).parent.mkdir(parents=True, exist_ok=True)
            (self.src / name).write_bytes(self.files[name])
        self.manifest = root / "manifest.tsv"
        lines = [f"# RMB_dataset manifest: upstream Example/Repo at commit {COMMIT}", "# columns: sha1, path"]
        lines += [f"{blob_sha(data)}\t{name}" for name, data in self.files.items()]
        self.manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.overrides = {}
        self.delay = 0.0


def test_the_fetched_copy_is_what_rmb_data_rmb_and_no_rmb_data_run_on(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("RMB_DATA", None)
    work = tmp_path / "work"
    work.mkdir()

    def pytest_run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rmb-model", "length",
                               *args], cwd=work, env=env, capture_output=True, text=True, timeout=300)

    before = pytest_run("--rmb-data", "rmb")
    assert before.returncode == 4
    assert "no fetched copy of RMB" in before.stderr and "`pytest-rmb fetch`" in before.stderr

    tree = SampleTree(tmp_path)
    with LocalServer(tree.app) as server:
        fetched = subprocess.run([sys.executable, "-m", "pytest_rmb", "fetch", "--url", server.url,
                                  "--manifest", str(tree.manifest)], env=env, capture_output=True, text=True,
                                 timeout=300)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr

    assert pytest_run("--rmb-data", "sample", "--rmb-json", "sample.json").returncode == 0
    sample_sections = json.loads((work / "sample.json").read_text())["sections"]
    for args in (["--rmb-data", "rmb"], []):
        done = pytest_run(*args, "--rmb-json", "fetched.json")
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        summary = json.loads((work / "fetched.json").read_text())
        assert summary["dataset"] == str(tmp_path / "cache" / "pytest-rmb" / "RMB_dataset")
        assert summary["sections"] == sample_sections
