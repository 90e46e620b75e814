"""The result cache: one JSON-lines file per model fingerprint, appended as each batch finishes.

A record is ``{"k": <sha256 of the request as the model sees it>, "s": <score>}`` for a pointwise
model, with ``"f": {...}`` when the model reported facts about the text (its token count, whether it
was truncated), or ``{"k": ..., "v": <verdict as JSON>}`` for a pairwise one. The facts are kept so
that a run served from the cache reports the same stats as the run that scored. Appends take an
exclusive lock, so pytest-xdist workers can share a file; a run killed mid-write leaves at most one
torn last line, which reading skips and the next append starts after; a line that is not UTF-8 (a
disk error, a bad copy) is skipped the same way, so only its request is asked again. Scores are
stored as JSON numbers, which round-trip floats exactly, so a resumed run ends with exactly the
scores of an uninterrupted one.

A folder that cannot be written is refused when the cache is opened (:class:`CacheError`), before
anything is asked of the model: otherwise a read-only cache would have every answer paid for and
then lost.

Where it lives: by default in the user's cache folder (:func:`default_cache_dir`), beside the data
``pytest-rmb fetch`` downloads, so every project and every directory a run starts from shares one
cache: keys are content, not paths. Each model's file is touched when a run opens it, so its
modification time says when it was last used, and ``pytest-rmb cache info|prune`` (:func:`main`)
show and trim the folder by model and by last use. A pruned file may still be open in a running
session: appends check under the lock that the file they hold is still the one the folder names,
and start a new one if not, so nothing the run pays for after a prune is lost.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: appends of whole lines, unlocked
    fcntl = None  # type: ignore[assignment]

GITIGNORE = "# Created by pytest-rmb: scores cached between runs.\n*\n"
# Beside a model's results: the --rmb-model it was last opened for, so that people can tell
# fingerprints (hashes) apart.
MODEL_SUFFIX = ".model"
SCORES = "scores"


def cache_home() -> Path:
    """pytest-rmb's folder in the user's cache: ``$XDG_CACHE_HOME/pytest-rmb``, else
    ``~/.cache/pytest-rmb``. A relative ``$XDG_CACHE_HOME`` is ignored, as the XDG spec says: it
    would make the folder depend on where a command is started."""
    cache = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(cache) if cache and os.path.isabs(cache) else Path.home() / ".cache") / "pytest-rmb"


def default_cache_dir() -> Path:
    """The score cache when neither --rmb-cache-dir nor ini rmb_cache_dir says otherwise."""
    return cache_home() / SCORES


class CacheError(Exception):
    """The cache folder cannot be used: the message names it and the ways around it."""


class ScoreCache:
    def __init__(self, directory: Path, fingerprint: str, model: str | None = None):
        """``model``: the --rmb-model this fingerprint is used for, shown by ``pytest-rmb cache info``."""
        self.directory = directory
        self.path = directory / f"{fingerprint}.jsonl"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            ignore = directory / ".gitignore"
            if not ignore.exists():
                ignore.write_text(GITIGNORE)
            self._probe()
            if model:
                _write_label(directory / f"{fingerprint}{MODEL_SUFFIX}", model)
        except OSError as exc:
            raise CacheError(
                f"cannot write the score cache folder {directory} ({exc.strerror or exc}); run with "
                "--rmb-no-cache, or give a writable folder with --rmb-cache-dir (ini rmb_cache_dir)"
            ) from None

    def _probe(self) -> None:
        """Write where the results will go, as the run would. Permission bits alone do not tell
        (a read-only mount, an ACL, root), so a file is created and removed, and an existing cache
        file opened for appending (which changes nothing in it)."""
        handle, probe = tempfile.mkstemp(dir=self.directory, prefix=".write-probe-")
        os.close(handle)
        os.unlink(probe)
        if self.path.exists():
            with open(self.path, "ab"):
                pass
            os.utime(self.path)  # last used: what `pytest-rmb cache prune --older-than` goes by

    def load(self) -> dict[str, Any]:
        return self.load_with_facts()[0]

    def load_with_facts(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """(result by key, facts by key); a key without facts is absent from the second."""
        return read_results(self.path)

    def append(self, entries: Iterable[tuple[str, Any] | tuple[str, Any, dict[str, Any]]]) -> None:
        """Append ``(key, result)`` or ``(key, result, facts)`` entries; empty facts are not written."""
        lines = "".join(json.dumps(_record(*entry)) + "\n" for entry in entries)
        if not lines:
            return
        with self._locked() as handle:
            # A torn line from a killed run must not swallow the first of these records.
            if handle.tell() > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    lines = "\n" + lines
            handle.seek(0, os.SEEK_END)
            handle.write(lines.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())

    @contextmanager
    def _locked(self):
        with _open_locked(self.path) as handle:
            handle.seek(0, os.SEEK_END)
            yield handle


@contextmanager
def _open_locked(path: Path):
    """``path`` opened for appending and locked, still the file the folder names: a prune that
    removed it while this process waited for the lock leaves the old file to this handle alone,
    so the handle is dropped and a new file made."""
    while True:
        handle = open(path, "a+b")
        try:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                same = os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                yield handle
                return
        finally:
            # Closing the file releases its lock.
            handle.close()


def read_results(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A cache file's (result by key, facts by key); a key without facts is absent from the second."""
    results: dict[str, Any] = {}
    facts: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return results, facts
    with open(path, "rb") as lines:
        for line in lines:
            record = _parsed(line)
            if record is None:
                continue
            key = record.get("k")
            if not isinstance(key, str):
                continue
            if isinstance(record.get("s"), (int, float)):
                results[key] = float(record["s"])
            elif isinstance(record.get("v"), dict):
                results[key] = record["v"]
            else:
                continue
            if isinstance(record.get("f"), dict):
                facts[key] = record["f"]
            else:
                facts.pop(key, None)
    return results, facts


def _parsed(line: bytes) -> dict[str, Any] | None:
    """One line's record; None for a line that cannot be one (torn by a kill, bytes that are not
    UTF-8, not a JSON object), which costs only its own request."""
    try:
        record = json.loads(line.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError and JSONDecodeError alike
        return None
    return record if isinstance(record, dict) else None


def _record(key: str, value: Any, facts: dict[str, Any] | None = None) -> dict[str, Any]:
    record = {"k": key, "v" if isinstance(value, dict) else "s": value}
    if facts:
        record["f"] = facts
    return record


def _write_label(path: Path, model: str) -> None:
    """Record ``model`` beside its results, replaced whole so that a reader never sees half."""
    try:
        if path.read_text(encoding="utf-8") == model + "\n":
            return
    except (OSError, UnicodeDecodeError):
        pass
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".label-")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(model + "\n")
    os.replace(temporary, path)


# -- pytest-rmb cache info | prune -----------------------------------------------------------------


@dataclass(frozen=True)
class CachedModel:
    """One model's results in a cache folder."""

    fingerprint: str
    model: str | None  # the --rmb-model it was last opened for; None in caches made before labels
    entries: int  # distinct requests with a result
    size: int  # bytes, label included
    last_used: float  # when a run last opened or wrote it (seconds since the epoch)


class NotACache(CacheError):
    """A folder that pytest-rmb did not make: nothing in it is listed or removed."""


def check_is_cache(directory: Path) -> None:
    """Refuse a folder without the ``.gitignore`` every score cache is made with: pruning a
    mistyped folder must not delete someone's ``*.jsonl`` files."""
    if not directory.is_dir():
        raise NotACache(f"{directory}: no such folder")
    try:
        marker = (directory / ".gitignore").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        marker = ""
    if marker != GITIGNORE:
        raise NotACache(
            f"{directory} does not look like a pytest-rmb score cache (no .gitignore written by pytest-rmb "
            "in it); nothing was read or removed"
        )


def cached_models(directory: Path) -> list[CachedModel]:
    """Every model with a results file in ``directory``, most recently used first."""
    check_is_cache(directory)
    found = []
    for path in directory.glob("*.jsonl"):
        if not path.is_file() or path.is_symlink():
            continue
        fingerprint = path.stem
        label_path = directory / f"{fingerprint}{MODEL_SUFFIX}"
        try:
            label = label_path.read_text(encoding="utf-8").strip() or None
            label_size = label_path.stat().st_size
        except (OSError, UnicodeDecodeError):
            label, label_size = None, 0
        stat = path.stat()
        entries = len(read_results(path)[0])
        found.append(CachedModel(fingerprint, label, entries, stat.st_size + label_size, stat.st_mtime))
    return sorted(found, key=lambda model: (-model.last_used, model.fingerprint))


def remove(directory: Path, model: CachedModel) -> None:
    """Delete one model's results and label, under the results file's lock: an append waiting for
    it then starts a new file (see :func:`_open_locked`) instead of writing into the removed one."""
    path = directory / f"{model.fingerprint}.jsonl"
    with open(path, "rb") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        path.unlink()
    (directory / f"{model.fingerprint}{MODEL_SUFFIX}").unlink(missing_ok=True)


def _size(count: int) -> str:
    if count < 1000:
        return f"{count} bytes"
    scaled = float(count)
    for unit in ("kB", "MB", "GB"):
        scaled /= 1000
        if scaled < 1000 or unit == "GB":
            break
    return f"{scaled:.1f} {unit}"


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def _describe(model: CachedModel) -> str:
    return (f"{model.fingerprint} ({model.model or 'model not recorded'}; {model.entries} entries, "
            f"{_size(model.size)}, last used {_when(model.last_used)})")


def _info(directory: Path, out: TextIO) -> int:
    print(f"score cache: {directory}", file=out)
    if not directory.exists():
        print("empty: nothing has been cached here yet", file=out)
        return 0
    models = cached_models(directory)
    if not models:
        print("empty: no model's results are cached here", file=out)
        return 0
    total = sum(model.size for model in models)
    entries = sum(model.entries for model in models)
    print(f"{len(models)} model(s), {entries} entries, {_size(total)}; last used from "
          f"{_when(models[-1].last_used)} (oldest) to {_when(models[0].last_used)} (newest)", file=out)
    rows = [("fingerprint", "entries", "size", "last used", "model")]
    rows += [(m.fingerprint, str(m.entries), _size(m.size), _when(m.last_used), m.model or "(not recorded)")
             for m in models]
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].rjust(widths[1]), row[2].rjust(widths[2]),
                 row[3].ljust(widths[3]), row[4]]
        print("  ".join(cells), file=out)
    return 0


def _prune(directory: Path, older_than: float | None, wanted: str | None, dry_run: bool, out: TextIO) -> int:
    if not directory.exists():
        print(f"score cache: {directory}\nempty: nothing to prune", file=out)
        return 0
    models = cached_models(directory)
    chosen = models
    if wanted is not None and wanted != "all":
        chosen = [m for m in models if wanted in (m.fingerprint, m.model)]
        if not chosen:
            known = ", ".join(f"{m.fingerprint} ({m.model})" if m.model else m.fingerprint for m in models)
            raise CacheError(f"--model {wanted}: no such model in {directory}; cached: {known or 'none'}")
    if older_than is not None:
        cutoff = time.time() - older_than * 86400
        chosen = [m for m in chosen if m.last_used < cutoff]
    verb = "would remove" if dry_run else "removed"
    for model in chosen:
        if not dry_run:
            remove(directory, model)
        print(f"{verb} {_describe(model)}", file=out)
    freed = sum(model.size for model in chosen)
    print(f"{verb} {len(chosen)} of {len(models)} model(s), {_size(freed)}, from {directory}", file=out)
    return 0


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        days = -1.0
    if not days >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of days (0 or more), got {text!r}")
    return days


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pytest-rmb cache",
        description="See and trim the score cache: each model's scores and verdicts, one file per model "
        f"fingerprint, in {default_cache_dir()} unless --rmb-cache-dir (ini rmb_cache_dir) names another folder.",
    )
    commands = parser.add_subparsers(dest="command", metavar="{info,prune}", required=True)
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--cache-dir", metavar="DIR", type=Path,
                       help=f"the cache folder, as given to --rmb-cache-dir (default: {default_cache_dir()})")
    commands.add_parser("info", parents=[where], help="where the cache is, its size, and each model's entries and "
                        "last use", description="Where the cache is, its size, and each model's entries and last use.")
    prune = commands.add_parser(
        "prune", parents=[where], help="remove models' cached results by last use or by model",
        description="Remove whole models' results from the cache (a rerun asks for them again). Give "
        "--older-than, --model, or both (then a model must match both).")
    prune.add_argument("--older-than", metavar="DAYS", type=_days,
                       help="models no run has used for more than DAYS days")
    prune.add_argument("--model", metavar="FINGERPRINT", help="one model, by its fingerprint or its --rmb-model "
                       "as `pytest-rmb cache info` shows them, or 'all'")
    prune.add_argument("--dry-run", action="store_true", help="say what would be removed; remove nothing")
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """``pytest-rmb cache info|prune``."""
    out = out or sys.stdout
    parser = _parser()
    args = parser.parse_args(argv)
    directory = (args.cache_dir or default_cache_dir()).absolute()
    try:
        if args.command == "info":
            return _info(directory, out)
        if args.older_than is None and args.model is None:
            parser.error("prune: say what to remove: --older-than DAYS, --model FINGERPRINT, or --model all")
        return _prune(directory, args.older_than, args.model, args.dry_run, out)
    except CacheError as exc:
        print(f"pytest-rmb cache: {exc}", file=sys.stderr)
        return 2
