"""Every message a worker sends the controller, in one place: one enum of names, ``attach``, ``read``.

pytest-xdist carries two things from a worker to the controller: test reports, whose
``user_properties`` travel as plain builtins, and the worker's ``workeroutput`` when it finishes.
A single process takes the same path (its reports reach its own listener), so the controller reads
every result the same way however the run was spread. Values are plain builtins only: execnet
serialises nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import Enum
from typing import Any


class Message(Enum):
    """What a report or a worker's output may carry, by its name on the wire."""

    # On every report of an RMB item that failed, and on a worker's setup reports: the item's
    # scenario and kind ({"scenario", "kind"}), so that the controller never parses a node id.
    ITEM = "rmb_item"
    # On the call report: the sample's record (scenario, kind, uid, correct, scores or verdicts).
    RESULT = "rmb"
    # On a call report: the engine's counters since the last report of this process.
    ENGINE = "rmb_engine"
    # On every report of an item standing for a missing or empty data file.
    MISSING = "rmb_missing"
    # Once per process, on its first call report after the model loaded: kind and description.
    MODEL_INFO = "rmb_model_info"
    # Once per worker, on the failed report of the item whose model could not load: why.
    LOAD_ERROR = "rmb_load_error"
    # Once per process: what the model reads for the samples --rmb-show-input chose.
    SHOWN_INPUT = "rmb_shown_input"
    # In a worker's workeroutput: the self-check of the texts that worker scored.
    SELF_CHECK = "rmb_self_check"


_BY_NAME = {message.value: message for message in Message}


def attach(target: Any, message: Message, value: Any) -> None:
    """Put ``value`` on a report (or an item, whose properties every report of it copies)."""
    target.user_properties.append((message.value, value))


def read(report: Any) -> Iterator[tuple[Message, Any]]:
    """The messages a report carries, in the order attached; other properties are skipped."""
    for name, value in report.user_properties:
        message = _BY_NAME.get(name)
        if message is not None:
            yield message, value


def find(report: Any, message: Message) -> Any:
    """The first value of ``message`` on a report, or None."""
    for name, value in report.user_properties:
        if name == message.value:
            return value
    return None


def send_at_finish(config: Any, message: Message, value: Any) -> None:
    """Hand ``value`` to the controller when this worker finishes (``workeroutput``)."""
    config.workeroutput[message.value] = value


def received_at_finish(node: Any, message: Message) -> Any:
    """What a finished worker handed over with :func:`send_at_finish`, or None."""
    return getattr(node, "workeroutput", {}).get(message.value)
