"""Built-in baselines: they need no model and give every run a floor to compare against."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from pytest_rmb.scorers import ScoreRequest, ScorerSettings


class LengthScorer:
    """Score = length of the response in characters: the classic verbosity-bias baseline."""

    name = "length"

    def __init__(self, settings: ScorerSettings):
        pass

    def score(self, batch: Sequence[ScoreRequest]) -> list[float]:
        return [float(len(request.response)) for request in batch]


class RandomScorer:
    """Uniform in [0, 1), a pure function of the seed and the text.

    Hashing instead of drawing from a generator makes the score independent of order, batch
    and process, so single-process and pytest-xdist runs agree exactly.
    """

    name = "random"

    def __init__(self, settings: ScorerSettings):
        self._key = str(settings.seed).encode()

    def score(self, batch: Sequence[ScoreRequest]) -> list[float]:
        return [self._one(request) for request in batch]

    def _one(self, request: ScoreRequest) -> float:
        text = json.dumps([[m.role, m.content] for m in request.conversation] + [request.response])
        digest = hashlib.blake2b(text.encode(), digest_size=8, key=self._key).digest()
        return int.from_bytes(digest, "big") / 2.0**64


BASELINES = {"length": LengthScorer, "random": RandomScorer}
