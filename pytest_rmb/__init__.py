"""pytest-rmb: benchmark reward models on RMB as a pytest plugin.

The names exported here are what a user needs to write their own scorer (see README.md,
"Plugging in your own model").
"""

from pytest_rmb.data import BonSample, Conversation, Message, PairSample, Response
from pytest_rmb.scorers import ScoreRequest, Scorer, as_chat

__version__ = "0.1.0"

__all__ = [
    "BonSample",
    "Conversation",
    "Message",
    "PairSample",
    "Response",
    "ScoreRequest",
    "Scorer",
    "__version__",
    "as_chat",
]
