"""How requests are grouped into batches: a leaf that the engine and the backends both import.

A backend that plans its own batches (``hf:`` with prefix sharing) packs the rest the way the
engine does; importing this module instead of the engine keeps the arrows pointing down.
"""

from __future__ import annotations

from collections.abc import Sequence

# A budget that never binds: for models that do not count tokens.
UNLIMITED = 1 << 62
DEFAULT_BATCH_SIZE = 64


def pack_batches(
    costs: Sequence[int], max_batch_size: int, max_batch_cost: int
) -> list[list[int]]:
    """Indices grouped into batches, longest first, so that padding is small and an OOM shows early.

    A batch holds at most ``max_batch_size`` requests and at most ``max_batch_cost`` padded units
    (its size times its longest cost); a single request longer than the budget gets a batch alone.
    """
    order = sorted(range(len(costs)), key=costs.__getitem__, reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        longest_if_added = max(longest, costs[index], 1)
        if current and (
            len(current) >= max_batch_size or longest_if_added * (len(current) + 1) > max_batch_cost
        ):
            batches.append(current)
            current, longest_if_added = [], max(costs[index], 1)
        current.append(index)
        longest = longest_if_added
    if current:
        batches.append(current)
    return batches
