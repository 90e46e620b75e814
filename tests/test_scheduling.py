"""The xdist scheduler, unit-tested with fake workers the way pytest-xdist tests its own."""

from __future__ import annotations

from types import SimpleNamespace

from pytest_rmb.scheduling import ScenarioScheduling, unit_of, worker_count


class FakeWorker:
    def __init__(self, name: str):
        self.gateway = name
        self.sent: list[int] = []
        self.shutting_down = False

    def send_runtest_some(self, indices):
        self.sent.extend(indices)

    def shutdown(self):
        self.shutting_down = True


def config(workers: int):
    return SimpleNamespace(getvalue=lambda name: [f"{workers}*popen"] if name == "tx" else None)


COLLECTION = [
    "rmb/chat/discussion::test_pairwise[1]",
    "rmb/chat/discussion::test_pairwise[2]",
    "rmb/chat/discussion::test_bon[1]",
    "rmb/code/data_management::test_pairwise[7]",
    "tests/test_a.py::test_one@shared",
    "tests/test_b.py::test_two@shared",
    "tests/test_b.py::test_three",
    "tests/test_c.py::test_four",
]


def run_all(workers: int) -> dict[str, str]:
    """Schedule the collection on fake workers, finishing each test as soon as it is sent; which
    worker ran each node id."""
    scheduler = ScenarioScheduling(config(workers))
    nodes = [FakeWorker(f"gw{i}") for i in range(workers)]
    for node in nodes:
        scheduler.add_node(node)
    for node in nodes:
        scheduler.add_node_collection(node, COLLECTION)
    scheduler.schedule()
    ran: dict[str, str] = {}
    progress = True
    while progress:
        progress = False
        for node in nodes:
            for index in list(node.sent):
                if COLLECTION[index] in ran:
                    continue
                ran[COLLECTION[index]] = node.gateway
                scheduler.mark_test_complete(node, index)
                progress = True
    assert scheduler.tests_finished
    return ran


def test_units_are_scenarios_xdist_groups_and_modules():
    assert unit_of("rmb/chat/discussion::test_bon[3]") == unit_of("rmb/chat/discussion::test_pairwise[9]")
    assert unit_of("sub/rmb/chat/discussion::test_bon[3]") == "rmb scenario chat/discussion"
    assert unit_of("tests/test_a.py::test_one@shared") == unit_of("tests/test_b.py::test_two@shared")
    assert unit_of("tests/test_b.py::test_three") == "tests/test_b.py" != unit_of("tests/test_b.py::test_two@shared")
    assert worker_count(config(3)) == 3


def test_every_test_runs_once_and_each_unit_on_one_worker():
    for workers in (1, 2, 3):
        ran = run_all(workers)
        assert sorted(ran) == sorted(COLLECTION)
        assert len({ran[n] for n in COLLECTION[:3]}) == 1  # one scenario, both kinds
        # A user's xdist_group spanning two modules stays on one worker beside the benchmark.
        assert ran["tests/test_a.py::test_one@shared"] == ran["tests/test_b.py::test_two@shared"]


def test_the_tests_of_a_worker_that_dies_go_to_another():
    scheduler = ScenarioScheduling(config(2))
    first, second = FakeWorker("gw0"), FakeWorker("gw1")
    for node in (first, second):
        scheduler.add_node(node)
        scheduler.add_node_collection(node, COLLECTION)
    scheduler.schedule()
    pending = list(first.sent)
    assert len(pending) >= 2
    crashed = scheduler.remove_node(first)
    assert crashed == COLLECTION[pending[0]]
    # The rest of the dead worker's tests are handed out again, to the survivor.
    assert set(pending[1:]) <= set(second.sent)
