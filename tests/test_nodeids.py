"""The node-id grammar (pytest_rmb/nodeids.py) and the wire between workers and controller (wire.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pytest_rmb import wire
from pytest_rmb.nodeids import NodeIdError, display_nodeid, is_under, scenario_and_kind, split_node_args
from pytest_rmb.wire import Message


@pytest.mark.parametrize(
    ("nodeid", "shown", "identity"),
    [
        ("rmb/chat/discussion::test_bon[3]", "rmb/chat/discussion::test_bon[3]", ("chat/discussion", "bon")),
        ("sub/dir/rmb/code/data_management::test_pairwise[848]@code/data_management",
         "rmb/code/data_management::test_pairwise[848]", ("code/data_management", "pairwise")),
        ("tests/test_x.py::test_y", "tests/test_x.py::test_y", None),
        ("rmb/chat::test_bon[1]", "rmb/chat::test_bon[1]", None),
    ],
)
def test_node_ids_are_shown_and_read_back(nodeid, shown, identity):
    assert display_nodeid(nodeid) == shown
    assert scenario_and_kind(nodeid) == identity


def test_prefixes_select_tasks_scenarios_tests_and_samples():
    sample = "rmb/chat/discussion::test_bon[3]"
    for prefix in ("rmb", "rmb/chat", "rmb/chat/discussion", "rmb/chat/discussion::test_bon", sample):
        assert is_under(sample, prefix)
    for prefix in ("rmb/cha", "rmb/chat/discussion::test_pairwise", "rmb/chat/discussion::test_bon[30]"):
        assert not is_under(sample, prefix)


def test_command_line_node_ids_are_split_from_paths_and_checked():
    paths, prefixes = split_node_args(["tests/", "rmb/chat/", "../proj/rmb/code/data_management::test_bon[2]"])
    assert paths == ["tests/"]
    assert prefixes == ("rmb/chat", "rmb/code/data_management::test_bon[2]")
    with pytest.raises(NodeIdError, match=r"rmb/chat/discusion: no RMB scenario or task.*rmb/chat/discussion"):
        split_node_args(["rmb/chat/discusion"])
    with pytest.raises(NodeIdError, match=r"no test 'test_pair'; did you mean rmb/chat/discussion::test_pairwise"):
        split_node_args(["rmb/chat/discussion::test_pair"])


def test_messages_travel_as_plain_strings_and_foreign_properties_are_skipped():
    report = SimpleNamespace(user_properties=[("someone_else", 1)])
    wire.attach(report, Message.RESULT, {"correct": True})
    wire.attach(report, Message.ENGINE, {"batches": 2})
    assert all(type(name) is str for name, _ in report.user_properties)
    assert list(wire.read(report)) == [(Message.RESULT, {"correct": True}), (Message.ENGINE, {"batches": 2})]
    assert wire.find(report, Message.ENGINE) == {"batches": 2}
    assert wire.find(report, Message.MISSING) is None
    config = SimpleNamespace(workeroutput={})
    wire.send_at_finish(config, Message.SELF_CHECK, {"ok": True})
    finished = SimpleNamespace(workeroutput=config.workeroutput)
    assert wire.received_at_finish(finished, Message.SELF_CHECK) == {"ok": True}
    assert wire.received_at_finish(SimpleNamespace(), Message.SELF_CHECK) is None
    assert len({m.value for m in Message}) == len(Message)
