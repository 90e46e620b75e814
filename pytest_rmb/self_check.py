"""The scoring self-check: after the run, a seeded sample of texts is re-scored one at a time.

Batch-dependent scores (padding on the wrong side, a pad token pooled as the reward, attention
masks ignored, nondeterministic kernels) make a benchmark number depend on what else was in the
batch, and a gate on such a number is not a gate. So after the batched scoring, each process that
scored re-scores ``--rmb-self-check N`` of its texts alone (no padding) and compares. Only model
backends are checked (pointwise models with a cache fingerprint); the free baselines are exact.

Each process that scored checks its own texts when its session finishes (session.py); an xdist
worker hands its result to the controller (``wire.Message.SELF_CHECK``), which reports the largest
difference of all (``merge``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pytest_rmb.engine import Engine, self_check_tolerance
from pytest_rmb.gate import FAIL, PASS, GateResult

METRIC = "self-check"


def run_self_check(engine: Any, model: Any, count: int, seed: int | None) -> dict[str, Any] | None:
    """Re-score ``count`` of the texts this process scored, each alone; None when nothing is checked
    (no engine or model here, a free baseline, a pairwise model, ``count`` 0, or nothing scored now)."""
    if count <= 0 or not isinstance(engine, Engine) or model is None or model.fingerprint() is None:
        return None
    if engine.totals.texts_scored == 0:
        # Every score came from the cache: checked by the run that made them, and checking
        # again would load the model (or call its server) for nothing else.
        return None
    tolerance = self_check_tolerance(model.describe().get("dtype"))
    result = engine.self_check(count, seed or 0, tolerance)
    if result is not None:
        result["dtype"] = str(model.describe().get("dtype") or "float32")
    return result


def merge(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not results:
        return None
    worst = max(results, key=lambda r: r["max_scaled_diff"])
    merged = {
        "checked": sum(r["checked"] for r in results),
        "max_abs_diff": max(r["max_abs_diff"] for r in results),
        "max_scaled_diff": worst["max_scaled_diff"],
        "tolerance": min(r["tolerance"] for r in results),
        "ok": all(r["ok"] for r in results),
        "dtype": worst.get("dtype", "float32"),
        "worst": worst["worst"],
    }
    errors = [r["error"] for r in results if r.get("error")]
    if errors:
        merged["error"] = errors[0]
    return merged


def describe(entry: Mapping[str, Any]) -> str:
    if entry.get("error"):
        return (f"re-scoring texts alone failed after {entry['checked']}: {entry['error']}; "
                "batch invariance is unchecked")
    return (f"{entry['checked']} texts re-scored alone differ from their batched scores by up to "
            f"{entry['max_abs_diff']:.3g} ({entry['max_scaled_diff']:.3g} relative to scores above 1; "
            f"tolerance {entry['tolerance']:g} for {entry['dtype']})")


def self_check_gates(entry: Mapping[str, Any] | None, gated: bool) -> list[GateResult]:
    """A gate row for the self-check in a gated run: scores that depend on the batch fail the gate."""
    if entry is None or not gated:
        return []
    return [GateResult(METRIC, None, f"batch-invariant within {entry['tolerance']:g}", None,
                       PASS if entry["ok"] else FAIL, describe(entry))]
