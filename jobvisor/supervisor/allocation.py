"""How many workers each job type gets on this node."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TypeDemand:
    """Demand of one job type on the node at the moment of planning."""

    name: str
    # This type's concurrency limit.
    limit: int
    # Due pending jobs plus jobs this node's workers of the type are running.
    wanted: int
    # Claim score of the type's best due job, or its base priority when none is due.
    score: float
    # Live workers of the type that are not retiring.
    current: int


def plan_workers(demands: list[TypeDemand], capacity: int) -> dict[str, int]:
    """Return the number of workers each type should have; their sum never exceeds capacity.

    Slots go first to work that is waiting, one at a time in turn from the type with the best
    job, so no type with waiting jobs is starved by another's backlog. Slots left over keep
    idle workers where they are, then give one idle worker to types that have none, so that
    a new job starts without a fork.
    """
    target = {demand.name: 0 for demand in demands}
    ordered = sorted(demands, key=lambda demand: (-demand.score, demand.name))
    free = capacity

    def wanted(demand: TypeDemand) -> int:
        return min(demand.limit, demand.wanted)

    while free > 0:
        granted = False
        for demand in ordered:
            if free > 0 and target[demand.name] < wanted(demand):
                target[demand.name] += 1
                free -= 1
                granted = True
        if not granted:
            break

    for demand in ordered:
        keep = min(demand.current, demand.limit) - target[demand.name]
        if keep > 0 and free > 0:
            extra = min(keep, free)
            target[demand.name] += extra
            free -= extra

    for demand in ordered:
        if free > 0 and target[demand.name] == 0:
            target[demand.name] = 1
            free -= 1
    return target
