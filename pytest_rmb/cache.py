"""The score cache: one JSON-lines file per scorer fingerprint, appended as each batch finishes.

A record is ``{"k": <sha256 of the text as the scorer sees it>, "s": <score>}``. Appends take an
exclusive lock, so pytest-xdist workers can share a file; a run killed mid-write leaves at most one
torn last line, which reading skips and the next append starts after. Scores are stored as JSON
numbers, which round-trip floats exactly, so a resumed run ends with exactly the scores of an
uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import jsonlines

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: appends of whole lines, unlocked
    fcntl = None

GITIGNORE = "# Created by pytest-rmb: scores cached between runs.\n*\n"


def request_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ScoreCache:
    def __init__(self, directory: Path, fingerprint: str):
        directory.mkdir(parents=True, exist_ok=True)
        ignore = directory / ".gitignore"
        if not ignore.exists():
            ignore.write_text(GITIGNORE)
        self.path = directory / f"{fingerprint}.jsonl"

    def load(self) -> dict[str, float]:
        if not self.path.exists():
            return {}
        scores = {}
        with jsonlines.open(self.path) as reader:
            for record in reader.iter(type=dict, skip_invalid=True):
                if isinstance(record.get("k"), str) and isinstance(record.get("s"), (int, float)):
                    scores[record["k"]] = float(record["s"])
        return scores

    def append(self, entries: Iterable[tuple[str, float]]) -> None:
        lines = "".join(json.dumps({"k": key, "s": score}) + "\n" for key, score in entries)
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
