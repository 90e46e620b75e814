"""Built-in baselines: they need no model and give every run a floor to compare against."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from pytest_rmb.backends import Backend, ModelLoadError, ModelSettings, closest_names
from pytest_rmb.models import PointwiseModel, ScoreRequest


class LengthScorer(PointwiseModel):
    """Score = length of the response in characters: the classic verbosity-bias baseline."""

    name = "length"

    def __init__(self, settings: ModelSettings):
        pass

    def score(self, batch: Sequence[ScoreRequest]) -> list[float]:
        return [float(len(request.response)) for request in batch]


class RandomScorer(PointwiseModel):
    """Uniform in [0, 1), a pure function of the seed and the text.

    Hashing instead of drawing from a generator makes the score independent of order, batch
    and process, so single-process and pytest-xdist runs agree exactly.
    """

    name = "random"

    def __init__(self, settings: ModelSettings):
        self._key = str(settings.seed).encode()

    def score(self, batch: Sequence[ScoreRequest]) -> list[float]:
        return [self._one(request) for request in batch]

    def _one(self, request: ScoreRequest) -> float:
        text = json.dumps([[m.role, m.content] for m in request.conversation] + [request.response])
        digest = hashlib.blake2b(text.encode(), digest_size=8, key=self._key).digest()
        return int.from_bytes(digest, "big") / 2.0**64


BASELINES = {"length": LengthScorer, "random": RandomScorer}


def load_baseline(settings: ModelSettings) -> PointwiseModel:
    name = settings.target
    if name not in BASELINES:
        close = closest_names(name, BASELINES)
        raise ModelLoadError(f"--rmb-model baseline:{name}: no such baseline; the baselines are "
                             f"{', '.join(BASELINES)}" + (f" (did you mean {close[0]}?)" if close else ""))
    return BASELINES[name](settings)


BACKEND = Backend("baseline", load_baseline, summary="built-in baselines that need no model: length, random "
                  "(also as bare names: --rmb-model length)")
