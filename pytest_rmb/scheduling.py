"""pytest-xdist's ``loadgroup`` scheduling, surviving a crashed worker.

pytest-xdist 3.8.0 hangs when a worker dies under ``--dist loadgroup`` and is replaced: the dead
worker's whole workload, finished groups included, goes back on the queue, and a replacement worker
handed one pending test waits forever for a second (pytest-xdist issues #1323, #1327 and #1378,
fixed upstream after that release by #1324, #1328 and #1371). This subclass does what those fixes
do: only groups with tests left are queued again, the test the worker died on is counted as done
(xdist has already reported it as failed), and a worker is told to finish once the queue is empty.
"""

from __future__ import annotations

from xdist.scheduler import LoadGroupScheduling


class CrashSafeLoadGroupScheduling(LoadGroupScheduling):
    def remove_node(self, node):
        workload = self.assigned_work.pop(node)
        unfinished = {scope: unit for scope, unit in workload.items() if not all(unit.values())}
        if not unfinished:
            return None
        crash_item = next(nodeid for unit in unfinished.values() for nodeid, done in unit.items() if not done)
        for scope, unit in unfinished.items():
            if crash_item in unit:
                unit[crash_item] = True
            if not all(unit.values()):
                self.workqueue[scope] = unit
        for survivor in self.assigned_work:
            self._reschedule(survivor)
        return crash_item

    def _assign_work_unit(self, node) -> None:
        super()._assign_work_unit(node)
        if not self.workqueue and not node.shutting_down:
            node.shutdown()
