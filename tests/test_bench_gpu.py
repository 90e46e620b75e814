"""bench/bench_gpu.py --tiny as a lead runs it: one subprocess on the CPU over a subset of the real
data; every mode scores the same texts and agrees with the padded mode on every outcome."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 16

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real RMB data not found at {SHARED_DATA}")


def test_tiny_bench_modes_agree(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--tiny", "--data", str(SHARED_DATA),
         "--limit", str(LIMIT), "--max-length", "512", "--self-check", "4"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    out = done.stdout
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^python \S+, torch \S+, transformers \S+, tokenizers \S+; device CPU", out, re.M), out
    assert f"selection: {LIMIT} samples" in out

    modes = {}
    for match in re.finditer(
        r"^ *(?P<mode>[a-z+]+): +[\d.]+ s wall, +\d+ tokens/s \((?P<texts>\d+) texts, (?P<tokens>\d+) tokens\)"
        r".*\n(?P<stats>.*)\n.*self-check passed: 4 texts alone.*\n"
        r".*outcomes agree with padded: (?P<same>\d+) of (?P<of>\d+); max score difference (?P<diff>\S+); "
        r"accuracy (?P<accuracy>\S+)$", out, re.M):
        modes[match["mode"]] = match
    assert set(modes) == {"padded", "shared", "packed", "shared+packed"}, out
    for mode, match in modes.items():
        # The same texts and tokens in every mode, and every sample's outcome the padded one's.
        assert (match["texts"], match["tokens"]) == (modes["padded"]["texts"], modes["padded"]["tokens"])
        assert int(match["same"]) == int(match["of"]) == LIMIT, mode
        assert float(match["diff"]) <= 1e-4, mode
        assert match["accuracy"] == modes["padded"]["accuracy"]
        assert "OOM back-offs 0" in match["stats"] and "truncated" in match["stats"]
    assert "no sharing or packing counters" in modes["padded"]["stats"]
    assert re.search(r"packed_batches [1-9]", modes["packed"]["stats"])
    assert re.search(r"prefix_shared_texts [1-9]", modes["shared"]["stats"])
    assert re.search(r"^verdict: n/a - best \S+ [\d.]+ min for \d+ unique texts against the 4-minute target "
                     r"\(NOT the target's setting.*outcomes identical across modes; self-check within tolerance$",
                     out, re.M), out
