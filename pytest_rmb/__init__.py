"""pytest-rmb: benchmark reward models on RMB as a pytest plugin.

The names exported here are what a user needs to write their own model or backend (see
docs/how-to/own-model.md and docs/how-to/backend-package.md).
"""

from pytest_rmb.data import BonSample, Conversation, Message, PairSample, Response
from pytest_rmb.models import (
    PairRequest,
    PairwiseModel,
    PointwiseModel,
    RunStopped,
    ScoreRequest,
    Verdict,
    as_chat,
)
from pytest_rmb.version import __version__

__all__ = [
    "BonSample",
    "Conversation",
    "Message",
    "PairRequest",
    "PairSample",
    "PairwiseModel",
    "PointwiseModel",
    "Response",
    "RunStopped",
    "ScoreRequest",
    "Verdict",
    "__version__",
    "as_chat",
]
