"""``pytest-rmb fetch``: download RMB's ``RMB_dataset/`` and verify every byte.

The package ships a manifest (``rmb_manifest.tsv``) of the git blob sha1 of every upstream file at
the pinned commit. A file only ever appears under its final name after its bytes matched the
manifest (downloaded to a temp file in the same folder, hashed, then renamed), so an interrupted
or failed fetch leaves nothing unverified in place and a rerun downloads only what is missing.
All HTTP goes through :mod:`pytest_rmb.http`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from pytest_rmb.cache import cache_home
from pytest_rmb.http import HTTPFailure, JSONClient, RetryPolicy, redact_url

if TYPE_CHECKING:
    from rich.progress import Progress as RichProgress
    from rich.progress import TaskID

MANIFEST = Path(__file__).with_name("rmb_manifest.tsv")
DATASET = "RMB_dataset"
STATE_FILE = ".pytest-rmb-fetch.json"
PART_SUFFIX = ".part"
DEFAULT_JOBS = 8
# Each file's download may take 60 s plus 1 s per 32 KiB received (JSONClient.download): a slow but
# steady line finishes a multi-MB file, a server that drips or stalls is cut off and asked again.
FETCH_POLICY = RetryPolicy(retries=4, backoff=0.5, max_backoff=10.0, timeout=60.0)


@dataclass(frozen=True)
class Manifest:
    """``entries``: (path in the upstream repository, git blob sha1), in manifest order."""

    entries: tuple[tuple[str, str], ...]
    repo: str | None = None
    commit: str | None = None
    source: str = ""

    @property
    def default_url(self) -> str:
        if not (self.repo and self.commit):
            raise ValueError(f"{self.source}: the header names no upstream repo and commit; pass --url")
        return f"https://raw.githubusercontent.com/{self.repo}/{self.commit}/"

    def manual_hint(self) -> str:
        if not (self.repo and self.commit):
            return ""
        name = self.repo.rsplit("/", 1)[-1]
        return (
            f"To get the data by hand: git clone https://github.com/{self.repo} && "
            f"git -C {name} checkout {self.commit}, then use --rmb-data {name}/{DATASET}"
        )


def read_manifest(path: Path = MANIFEST) -> Manifest:
    """Parse a manifest: ``# ... upstream OWNER/REPO at commit SHA`` header, then ``sha1<TAB>path``."""
    repo = commit = None
    entries = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            words = line.split()
            if "upstream" in words and "commit" in words:
                repo = words[words.index("upstream") + 1]
                commit = words[words.index("commit") + 1]
            continue
        sha, tab, name = line.partition("\t")
        if not tab or len(sha) != 40 or not name or name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"{path}:{number}: expected '<git blob sha1><TAB><relative path>'")
        entries.append((name, sha.lower()))
    if not entries:
        raise ValueError(f"{path}: no files listed")
    return Manifest(tuple(entries), repo, commit, str(path))


def git_blob_sha1(path: Path) -> str:
    """The git blob id of a file: sha1(b"blob <size>\\0" + bytes)."""
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)  # git's object id, not security
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_dest() -> Path:
    """Where the data goes without --dest: pytest-rmb's folder in the user's cache, which also holds
    the score cache (``$XDG_CACHE_HOME/pytest-rmb``, else ``~/.cache/pytest-rmb``)."""
    return cache_home()


def _on_disk(root: Path, name: str) -> Path:
    """Where manifest path ``name`` lives under ``root``: a parent of RMB_dataset/, or that folder."""
    if not (root / DATASET).is_dir() and name.startswith(DATASET + "/"):
        return root / name[len(DATASET) + 1 :]
    return root / name


# -- check -----------------------------------------------------------------------------------------


@dataclass
class CheckResult:
    good: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path, sha1 found)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.bad


def check(root: Path, manifest: Manifest) -> CheckResult:
    """Hash every manifest file under ``root`` (the folder holding RMB_dataset/, or RMB_dataset/)."""
    result = CheckResult()
    for name, sha in manifest.entries:
        path = _on_disk(root, name)
        if not path.is_file():
            result.missing.append(name)
            continue
        found = git_blob_sha1(path)
        if found == sha:
            result.good.append(name)
        else:
            result.bad.append((name, found))
    return result


def cached_dataset() -> Path | None:
    """The default destination's RMB_dataset folder if a fetch verified it and it still looks intact.

    Quick: compares presence and size against what the last fetch recorded, without hashing. A
    fetch that could not get every file still counts (the harness reports missing files itself).
    """
    root = default_dest()
    dataset = root / DATASET
    try:
        state = json.loads((root / STATE_FILE).read_text(encoding="utf-8"))
        files = state["files"]
        if not dataset.is_dir() or not files:
            return None
        for name, record in files.items():
            if (root / name).stat().st_size != record["size"]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return dataset


# -- fetch -----------------------------------------------------------------------------------------


@dataclass
class FetchResult:
    verified: list[str] = field(default_factory=list)  # present and matching, old or new
    downloaded: list[str] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    unreachable: str | None = None  # the connection failure that stopped the fetch
    bytes: int = 0
    requests: int = 0

    @property
    def ok(self) -> bool:
        return not self.missing and not self.bad and self.unreachable is None


class FetchError(Exception):
    """A problem that stops the fetch before any download (e.g. destination not writable)."""


class Progress:
    """One line per file on a plain stream; a rich bar when the stream is a terminal."""

    def __init__(self, out: TextIO, total: int, rich: bool | None = None) -> None:
        self.out = out
        self.total = total
        self.done = 0
        self.rich = out.isatty() if rich is None else rich
        self._bar: RichProgress | None = None
        self._task: TaskID | None = None

    @contextmanager
    def running(self) -> Iterator[None]:
        if not self.rich or not self.total:
            yield
            return
        from rich import progress as rich_progress
        from rich.console import Console

        columns = (
            rich_progress.TextColumn("fetch"),
            rich_progress.BarColumn(),
            rich_progress.MofNCompleteColumn(),
            rich_progress.TimeElapsedColumn(),
        )
        with rich_progress.Progress(*columns, console=Console(file=self.out)) as bar:
            self._bar = bar
            self._task = bar.add_task("files", total=self.total)
            try:
                yield
            finally:
                self._bar = None

    def file(self, status: str, name: str, detail: str = "", size: int = 0) -> None:
        self.done += 1
        line = f"[{self.done}/{self.total}] {status:<7} {name}" + (f"  {detail}" if detail else "")
        bar = self._bar
        if bar is not None and self._task is not None:
            if status != "ok":
                bar.console.print(line, markup=False, highlight=False)
            bar.update(self._task, advance=1)
        else:
            print(line, file=self.out, flush=True)

    def say(self, text: str) -> None:
        bar = self._bar
        if bar is not None:
            bar.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.out, flush=True)


def _clean_parts(root: Path) -> None:
    """Remove temp files a killed fetch left behind (they were never verified)."""
    for part in (root / DATASET).rglob(f".*{PART_SUFFIX}"):
        part.unlink(missing_ok=True)


def _ensure_writable(root: Path) -> None:
    try:
        (root / DATASET).mkdir(parents=True, exist_ok=True)
        probe = root / DATASET / f".write-test-{os.getpid()}{PART_SUFFIX}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise FetchError(f"cannot write to {root}: {exc.strerror or exc}") from None


def _write_state(root: Path, manifest: Manifest, verified: Sequence[str]) -> None:
    record = {
        "repo": manifest.repo,
        "commit": manifest.commit,
        "files": {name: {"size": (root / name).stat().st_size} for name in sorted(verified)},
    }
    tmp = root / f".{STATE_FILE}.{os.getpid()}{PART_SUFFIX}"
    tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    os.replace(tmp, root / STATE_FILE)


def fetch(
    url: str,
    dest: Path,
    manifest: Manifest,
    *,
    jobs: int = DEFAULT_JOBS,
    policy: RetryPolicy = FETCH_POLICY,
    progress: Progress | None = None,
    client_factory: Callable[[str], JSONClient] | None = None,
) -> FetchResult:
    """Bring ``dest/RMB_dataset`` in line with the manifest, downloading from ``url`` what is missing."""
    _ensure_writable(dest)
    _clean_parts(dest)
    result = FetchResult()
    wanted: list[tuple[str, str]] = []
    for name, sha in manifest.entries:
        path = dest / name
        if path.is_file():
            if git_blob_sha1(path) == sha:
                result.verified.append(name)
                continue
            # An unverified file must not stay under a final name, whatever happens next.
            path.unlink()
        wanted.append((name, sha))

    progress = progress or Progress(sys.stdout, len(wanted))
    progress.total = len(wanted)
    base = url.rstrip("/")
    if result.verified:
        progress.say(f"{len(result.verified)} of {len(manifest.entries)} files already verified in {dest}")
    if wanted:
        progress.say(f"fetching {len(wanted)} files from {redact_url(base)}/ into {dest}")
    factory = client_factory or (lambda base_url: JSONClient([base_url], concurrency=jobs, policy=policy))

    async def main() -> None:
        gate = asyncio.Semaphore(jobs)
        async with factory(base) as client:

            async def one(name: str, sha: str) -> None:
                async with gate:
                    if result.unreachable is not None:
                        return
                    await _fetch_one(client, dest, name, sha, result, progress)

            try:
                await asyncio.gather(*(one(name, sha) for name, sha in wanted))
            finally:
                result.requests = client.requests

    try:
        with progress.running():
            if wanted:
                asyncio.run(main())
    finally:
        _write_state(dest, manifest, result.verified)
    return result


async def _fetch_one(
    client: JSONClient, dest: Path, name: str, sha: str, result: FetchResult, progress: Progress
) -> None:
    final = dest / name
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{secrets.token_hex(4)}{PART_SUFFIX}")
    try:
        try:
            size = await client.download(name, tmp)
        except HTTPFailure as failure:
            if failure.unreachable:
                # The server is gone: stop here instead of failing every other file slowly.
                if result.unreachable is None:
                    result.unreachable = str(failure)
                return
            if failure.status is None:  # the body was cut short on every attempt
                why = f"incomplete download ({failure.detail}) from {failure.url}"
                result.bad.append((name, why))
                progress.file("BAD", name, why)
                return
            why = f"HTTP {failure.status} from {failure.url}"
            result.missing.append((name, why))
            progress.file("MISSING", name, why)
            return
        found = git_blob_sha1(tmp)
        if found != sha:
            why = f"sha1 {found} != manifest {sha} ({size:,} bytes; not kept)"
            result.bad.append((name, why))
            progress.file("BAD", name, why)
            return
        os.replace(tmp, final)
        result.verified.append(name)
        result.downloaded.append(name)
        result.bytes += size
        progress.file("ok", name, f"{size:,} bytes", size)
    finally:
        tmp.unlink(missing_ok=True)


# -- command line ----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pytest-rmb fetch",
        description="Download RMB's RMB_dataset/ (98 JSON files) from the pinned upstream commit and "
        "verify each file against the git blob sha1s shipped with pytest-rmb. Reruns resume.",
    )
    parser.add_argument(
        "--url",
        metavar="BASE",
        help="root under which the manifest's RMB_dataset/... paths are served (a mirror or a local "
        "server); default: the upstream repository's raw files at the pinned commit",
    )
    parser.add_argument(
        "--dest",
        metavar="DIR",
        type=Path,
        help="folder that receives RMB_dataset/ (default: $XDG_CACHE_HOME/pytest-rmb or ~/.cache/pytest-rmb)",
    )
    parser.add_argument(
        "--check",
        metavar="DIR",
        nargs="?",
        const="",
        type=str,
        help="only verify an existing copy (DIR holds RMB_dataset/, or is it; default: --dest); "
        "exit 0 when every file matches",
    )
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS, metavar="N", help="parallel downloads (default 8)")
    parser.add_argument("--manifest", type=Path, default=MANIFEST, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = _parser()
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs: expected a positive integer, got {args.jobs}")
    try:
        manifest = read_manifest(args.manifest)
    except (OSError, ValueError) as exc:
        print(f"error: manifest: {exc}", file=sys.stderr)
        return 2
    dest = args.dest or default_dest()

    if args.check is not None:
        return _main_check(Path(args.check) if args.check else dest, manifest, out)

    try:
        url = args.url or manifest.default_url
    except ValueError as exc:
        parser.error(str(exc))
    if not url.startswith(("http://", "https://")):
        parser.error(f"--url: expected an http:// or https:// URL, got {url!r}")

    start = time.monotonic()
    try:
        result = fetch(url, dest, manifest, jobs=args.jobs, policy=FETCH_POLICY, progress=Progress(out, 0))
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; nothing unverified was kept. Run the same command again to resume.", file=sys.stderr)
        return 130
    elapsed = time.monotonic() - start
    total = len(manifest.entries)
    print(
        f"{len(result.verified)}/{total} files verified in {dest / DATASET}; downloaded "
        f"{len(result.downloaded)} ({result.bytes / 1e6:.1f} MB) in {elapsed:.1f}s",
        file=out,
    )
    if result.unreachable is not None:
        print(f"error: cannot reach the server: {result.unreachable}", file=sys.stderr)
        hint = manifest.manual_hint()
        print(f"Check the network or --url, then rerun to resume. {hint}".rstrip(), file=sys.stderr)
    for name, why in result.missing:
        print(f"missing: {name}: {why}", file=out)
    for name, why in result.bad:
        print(f"failed verification: {name}: {why}", file=out)
    if result.ok:
        print(f"use it with: pytest --rmb-data {dest / DATASET}", file=out)
        return 0
    absent = total - len(result.verified)
    print(f"{absent} file(s) not fetched; rerun to retry only those", file=out)
    return 1


def _main_check(root: Path, manifest: Manifest, out: TextIO) -> int:
    if not root.is_dir():
        print(f"error: {root}: no such directory", file=sys.stderr)
        return 1
    result = check(root, manifest)
    for name in result.missing:
        print(f"missing: {name}", file=out)
    for name, found in result.bad:
        print(f"bad: {name}: sha1 {found} does not match the manifest", file=out)
    total = len(manifest.entries)
    print(f"{len(result.good)}/{total} files verified in {root}", file=out)
    return 0 if result.ok else 1
