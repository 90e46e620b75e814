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
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: appends of whole lines, unlocked
    fcntl = None  # type: ignore[assignment]

GITIGNORE = "# Created by pytest-rmb: scores cached between runs.\n*\n"


class CacheError(Exception):
    """The cache folder cannot be used: the message names it and the ways around it."""


class ScoreCache:
    def __init__(self, directory: Path, fingerprint: str):
        self.directory = directory
        self.path = directory / f"{fingerprint}.jsonl"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            ignore = directory / ".gitignore"
            if not ignore.exists():
                ignore.write_text(GITIGNORE)
            self._probe()
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

    def load(self) -> dict[str, Any]:
        return self.load_with_facts()[0]

    def load_with_facts(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """(result by key, facts by key); a key without facts is absent from the second."""
        results: dict[str, Any] = {}
        facts: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return results, facts
        with open(self.path, "rb") as lines:
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
        with open(self.path, "a+b") as handle:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                handle.seek(0, os.SEEK_END)
                yield handle
            finally:
                if fcntl is not None:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


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
