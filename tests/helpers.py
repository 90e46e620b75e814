"""Builders for RMB-format files, written independently of pytest_rmb's loader."""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "RMB_dataset"
SAMPLE_DATA = Path(__file__).resolve().parents[1] / "scenarios" / "sample"


def turn(role: str, content: str, language: str | None = "English") -> dict:
    message = {"role": role, "content": content}
    if language is not None:
        message["language"] = language
    return message


def pair(uid: str, prompt: str, chosen: str, rejected: str, path: str = "") -> dict:
    return {
        "pair_uid": uid,
        "category_path": path,
        "conversation_input": [turn("user", prompt)],
        "chosen": {"llm_name": "model-a", "answer": chosen},
        "reject": {"llm_name": "model-b", "answer": rejected},
    }


def bon(uid: str, prompt: str, best: str, losers: list[str], path: str = "") -> dict:
    return {
        "bon_uid": uid,
        "category_path": path,
        "conversation_input": [turn("user", prompt)],
        "bon_best": {"llm_name": "model-a", "answer": best},
        "loser_list": [{"llm_name": f"model-{i}", "answer": text} for i, text in enumerate(losers)],
    }


def write_dataset(root: Path, files: dict[str, object]) -> Path:
    """Write ``{relative path: records}`` under root; a str value is written verbatim."""
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return root


def all_files(root: Path) -> dict[str, list]:
    """Every data file under root, parsed with the json module alone."""
    return {
        str(path.relative_to(root)): json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(root.glob("*_set/**/*.json"))
    }


def expected_correct(record: dict) -> tuple[bool, list[float]]:
    """Length-baseline outcome of one raw record, computed here without pytest_rmb."""
    if "pair_uid" in record:
        scores = [len(record["chosen"]["answer"]), len(record["reject"]["answer"])]
    else:
        scores = [len(record["bon_best"]["answer"])] + [len(x["answer"]) for x in record["loser_list"]]
    return all(scores[0] > s for s in scores[1:]), [float(s) for s in scores]


# The summary's section of each folder of the data: (kind folder, goal folder) -> section.
SECTION_OF = {
    ("Pairwise_set", "Helpfulness"): "helpfulness.pairwise",
    ("Pairwise_set", "Harmlessness"): "harmlessness.pairwise",
    ("BoN_set", "Helpfulness"): "helpfulness.bon",
    ("BoN_set", "Harmlessness"): "harmlessness.bon",
}


def length_sections(root: Path, goals=("Helpfulness", "Harmlessness"), kinds=("Pairwise_set", "BoN_set"),
                    files: tuple[str, ...] | None = None, only: tuple[str, ...] | None = None,
                    ) -> dict[str, tuple[int, int]]:
    """The length baseline's (correct, total) per section, from the raw files; ``files``: only
    files whose path ends so, ``only``: only files whose path holds one of these."""
    correct: Counter = Counter()
    total: Counter = Counter()
    for relative, records in all_files(root).items():
        kind_dir, goal_dir = relative.split("/")[:2]
        if kind_dir not in kinds or goal_dir not in goals:
            continue
        if files is not None and not any(relative.endswith(f) for f in files):
            continue
        if only is not None and not any(part in relative for part in only):
            continue
        for record in records:
            section = SECTION_OF[kind_dir, goal_dir]
            total[section] += 1
            correct[section] += expected_correct(record)[0]
    return {section: (correct[section], total[section]) for section in total}


def ctrl_c_reaches_it() -> None:
    """``preexec_fn`` for a child that a test stops with SIGINT, as Ctrl-C would. A shell that
    starts the suite in the background (``pytest &`` without job control) makes SIGINT ignored,
    and an ignored signal stays ignored through fork and exec: Python would then never raise
    KeyboardInterrupt in the child and the run would go on to the end."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_rmb(pytester, *args: str, options: tuple[str, ...] = ()):
    """A run as a user starts it, inside this process: every test file's runs go through here.

    pytest's own cache is off (it would write beside the data); ``options`` are a file's standing
    options (``--rmb-data sample``), given before the test's own."""
    return pytester.runpytest("-p", "no:cacheprovider", *options, *args)


class FakeReporter:
    """pytest's terminal reporter as the plain-line progress uses it, keeping the lines written."""

    def __init__(self):
        self.lines: list[str] = []

    def write_line(self, line: str) -> None:
        self.lines.append(line)

    def flush(self) -> None:
        pass


# A python: model whose every batch takes $SLOW_SECONDS: long enough for progress to show.
SLOW_MODEL = """
import os, time

class Slow:
    def score(self, batch):
        time.sleep(float(os.environ["SLOW_SECONDS"]))
        return [float(len(r.response)) for r in batch]

def make():
    return Slow()
"""


def run_files(folder: Path, name: str) -> tuple[dict, dict[tuple, dict]]:
    """A run's ``NAME.json`` summary and its ``NAME.jsonl`` records by (kind, uid, scenario)."""
    summary = json.loads((folder / f"{name}.json").read_text())
    records = [json.loads(line) for line in (folder / f"{name}.jsonl").read_text().splitlines()]
    return summary, {(r["kind"], r["uid"], r["scenario"]): r for r in records}


def assert_same_outcomes(one: tuple[dict, dict], other: tuple[dict, dict], tolerance: float = 1e-4) -> None:
    """Two runs (as :func:`run_files` reads them) with the same sections, samples and outcomes, and
    scores within ``tolerance``."""
    (summary, records), (other_summary, other_records) = one, other
    assert summary["sections"] == other_summary["sections"]
    assert records.keys() == other_records.keys()
    for key, record in other_records.items():
        assert records[key]["scores"] == pytest.approx(record["scores"], abs=tolerance)
        assert records[key]["correct"] == record["correct"]

