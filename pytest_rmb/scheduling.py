"""pytest-xdist scheduling for RMB: each scenario is one unit of work, run whole on one worker.

A scenario's first item scores every selected sample of that scenario in batches, so its items
must stay together. pytest-xdist's own ``loadgroup`` cannot do that here (pytest 9.2 no longer lets
xdist tag node ids with their group, pytest-xdist #1386) and its scheduler is quadratic in group
size and loses work when a crashed worker is replaced (#1323, #1327, #1378). This is a scheduler
of our own written against xdist's documented ``Scheduling`` protocol, returned from the public
``pytest_xdist_make_scheduler`` hook; it subclasses nothing and touches no private state.

- Units: all items of one RMB scenario (both kinds); any other test is grouped by its
  ``xdist_group`` where xdist tagged its node id with one (``@name``; pytest 9.2 and later no
  longer let xdist do that, #1386), else by its module, so that a user's own groups stay together.
- A worker gets a unit when it has fewer than two tests left (xdist holds a worker's last test
  until it knows the next one), and every worker is told to finish once no unit is left.
- A worker that dies: the test it died on is reported by xdist as crashed; its other pending tests
  go back to the front of the queue as one unit, for a replacement or a surviving worker.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from pytest_rmb.nodeids import scenario_and_kind


def unit_of(nodeid: str) -> str:
    """The scheduling unit of a node id: its RMB scenario; for any other test the ``xdist_group``
    xdist tagged it with (``::test@group``), else its module."""
    rmb_item = scenario_and_kind(nodeid)
    if rmb_item is not None:
        return f"rmb scenario {rmb_item[0]}"
    module, _, test = nodeid.partition("::")
    if "@" in test:
        return f"xdist group {test.rsplit('@', 1)[1]}"
    return module


def worker_count(config: Any) -> int:
    """How many workers xdist starts: its ``--tx`` specs, where ``3*popen`` means three (``-n 3``
    becomes exactly that)."""
    count = 0
    for spec in config.getvalue("tx") or ():
        multiplier, star, _ = spec.partition("*")
        count += int(multiplier) if star and multiplier.isdigit() else 1
    return count


class ScenarioScheduling:
    def __init__(self, config: Any, log: Any = None):
        self.numnodes = worker_count(config)
        self.log = log
        self.collection: list[str] | None = None
        self.node2collection: dict[Any, list[str]] = {}
        # Indices of the tests each worker has been sent and not yet finished, in order.
        self.node2pending: dict[Any, list[int]] = {}
        self.queue: OrderedDict[str, list[int]] = OrderedDict()

    # -- the protocol's properties ----------------------------------------------------------

    @property
    def nodes(self) -> list[Any]:
        return list(self.node2pending)

    @property
    def collection_is_completed(self) -> bool:
        # Once every first worker has collected, it stays completed: workers that finish or die
        # leave, and a replacement's collection only has to match.
        return self.collection is not None or len(self.node2collection) >= self.numnodes

    @property
    def tests_finished(self) -> bool:
        if not self.collection_is_completed or self.queue:
            return False
        return not any(self.node2pending.values())

    @property
    def has_pending(self) -> bool:
        return bool(self.queue) or any(self.node2pending.values())

    # -- workers coming and going -----------------------------------------------------------

    def add_node(self, node: Any) -> None:
        assert node not in self.node2pending
        self.node2pending[node] = []

    def add_node_collection(self, node: Any, collection: Sequence[str]) -> None:
        collection = list(collection)
        if self.collection is not None and collection != self.collection:
            # Every worker must collect the same items in the same order (RMB's collection is
            # deterministic); a worker that does not would run the wrong tests by index.
            if self.log is not None:
                self.log(f"worker {getattr(node, 'gateway', node)} collected differently; not using it")
            node.shutdown()
            return
        self.node2collection[node] = collection

    def remove_node(self, node: Any) -> str | None:
        pending = self.node2pending.pop(node)
        if node not in self.node2collection and self.collection is None:
            # It died before it collected (a usage error on the worker): wait for one less.
            self.numnodes -= 1
        self.node2collection.pop(node, None)
        if not pending:
            return None
        assert self.collection is not None
        crash_index, rest = pending[0], pending[1:]
        if rest:
            self.queue[f"requeued from {getattr(node, 'gateway', node)}"] = rest
            self.queue.move_to_end(next(reversed(self.queue)), last=False)
        self._hand_out()
        return self.collection[crash_index]

    # -- the work ---------------------------------------------------------------------------

    def schedule(self) -> None:
        assert self.collection_is_completed
        if self.collection is None:
            first = next(iter(self.node2collection.values()), [])
            self.collection = first
            for index, nodeid in enumerate(first):
                self.queue.setdefault(unit_of(nodeid), []).append(index)
        self._hand_out()

    def mark_test_complete(self, node: Any, item_index: int, duration: float = 0) -> None:
        pending = self.node2pending[node]
        pending.remove(item_index)
        if len(pending) < 2:
            self._give_unit(node)

    def mark_test_pending(self, item: str) -> None:
        raise NotImplementedError("RMB scheduling does not support --maxschedchunk-style re-queueing")

    def remove_pending_tests_from_node(self, node: Any, indices: Sequence[int]) -> None:
        raise NotImplementedError("RMB scheduling never steals work")

    def _hand_out(self) -> None:
        for node in self.nodes:
            if node in self.node2collection and len(self.node2pending[node]) < 2:
                self._give_unit(node)

    def _give_unit(self, node: Any) -> None:
        if node.shutting_down or node not in self.node2collection:
            return
        if self.queue:
            _, indices = self.queue.popitem(last=False)
            self.node2pending[node].extend(indices)
            node.send_runtest_some(indices)
        if not self.queue:
            # Nothing left to hand out: let every worker run its last tests and finish.
            for worker in self.nodes:
                if not worker.shutting_down and worker in self.node2collection:
                    worker.shutdown()
