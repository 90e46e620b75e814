"""The scoring self-check: after the run, a seeded sample of texts is re-scored one at a time.

Batch-dependent scores (padding on the wrong side, a pad token pooled as the reward, attention
masks ignored, nondeterministic kernels) make a benchmark number depend on what else was in the
batch, and a gate on such a number is not a gate. So after the batched scoring, each process that
scored re-scores ``--rmb-self-check N`` of its texts alone (no padding) and compares. Only model
backends are checked (pointwise models with a cache fingerprint); the free baselines are exact.

Each pytest-xdist worker checks the texts it scored and hands its result to the controller in
``workeroutput``; the controller reports the largest difference of all.
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_rmb.engine import Engine, self_check_tolerance
from pytest_rmb.gate import FAIL, PASS, GateResult

WORKER_OUTPUT = "rmb_self_check"
METRIC = "self-check"


class SelfCheck:
    """A plugin beside the :class:`~pytest_rmb.session.RMBSession` it reads the engine and model of."""

    def __init__(self, session: Any):
        self._session = session
        self._results: list[dict[str, Any]] = []

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        # First: the session's own hook closes the model and writes the summary.
        result = self._check(exitstatus)
        if result is None:
            return
        config = session.config
        if hasattr(config, "workerinput"):
            config.workeroutput[WORKER_OUTPUT] = result  # type: ignore[attr-defined]
        else:
            self._results.append(result)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        result = getattr(node, "workeroutput", {}).get(WORKER_OUTPUT)
        if result:
            self._results.append(result)

    def _check(self, exitstatus: int) -> dict[str, Any] | None:
        rmb = self._session
        count = rmb.settings.self_check
        engine, model = rmb.engine, rmb.model
        if count <= 0 or exitstatus == pytest.ExitCode.INTERRUPTED or rmb.load_error is not None:
            return None
        if not isinstance(engine, Engine) or model is None or model.fingerprint() is None:
            return None
        if engine.totals.texts_scored == 0:
            # Every score came from the cache: checked by the run that made them, and checking
            # again would load the model (or call its server) for nothing else.
            return None
        tolerance = self_check_tolerance(model.describe().get("dtype"))
        result = engine.self_check(count, rmb.settings.scorer.seed or 0, tolerance)
        if result is not None:
            result["dtype"] = str(model.describe().get("dtype") or "float32")
        return result

    def summary(self) -> dict[str, Any] | None:
        """The run's self-check for the JSON summary; None when none ran."""
        return merge(self._results)


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


def describe(entry: dict[str, Any]) -> str:
    if entry.get("error"):
        return (f"re-scoring texts alone failed after {entry['checked']}: {entry['error']}; "
                "batch invariance is unchecked")
    return (f"{entry['checked']} texts re-scored alone differ from their batched scores by up to "
            f"{entry['max_abs_diff']:.3g} ({entry['max_scaled_diff']:.3g} relative to scores above 1; "
            f"tolerance {entry['tolerance']:g} for {entry['dtype']})")


def self_check_gates(entry: dict[str, Any] | None, gated: bool) -> list[GateResult]:
    """A gate row for the self-check in a gated run: scores that depend on the batch fail the gate."""
    if entry is None or not gated:
        return []
    return [GateResult(METRIC, None, f"batch-invariant within {entry['tolerance']:g}", None,
                       PASS if entry["ok"] else FAIL, describe(entry))]
