"""The SfM queue: at most N pods at once, first come first served. Pure functions over snapshots.

Level-triggered on purpose: every decision is recomputed from the cluster's state (SharpJobs and SfM
pods, kept by kopf indexes), so a restarted operator resumes the queue exactly where it was and two
handlers looking at the same snapshot never both take the last free slot.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class QueuedJob:
    """A SharpJob as the queue sees it."""

    uid: str
    namespace: str
    name: str
    phase: str
    created: str  # metadata.creationTimestamp (RFC 3339, second precision)
    sequence: int  # status.queueSequence: the etcd revision that created the job (see handlers)

    @property
    def order_key(self) -> tuple[str, int, str, str]:
        # Creation time first (what "first come" means to a user, stable across operator restarts), then
        # the creation revision, which orders jobs created within the same second.
        return (self.created, self.sequence, self.namespace, self.name)


#: Phases that wait for the SfM node. A job without a phase has not been looked at yet (just created, or
#: the operator is starting): it counts as waiting, so a burst of new jobs cannot all see a free slot.
WAITING_PHASES = ("Queued", "Pending", "")


def waiting(jobs: Iterable[QueuedJob], admitted: set[str]) -> list[QueuedJob]:
    """Jobs waiting for a slot (no pod yet), in service order."""
    line = (j for j in jobs if j.phase in WAITING_PHASES and j.uid not in admitted)
    return sorted(line, key=lambda j: j.order_key)


def occupied(jobs: Iterable[QueuedJob], active_pod_uids: set[str]) -> set[str]:
    """Job uids holding a slot: a running job, or any job whose SfM pod has not finished yet.

    Counting pods (and not only phases) keeps a slot taken while a cancelled pod is still stopping,
    and after a crash between creating a pod and recording it in the job's status.
    """
    return {j.uid for j in jobs if j.phase == "Reconstructing"} | set(active_pod_uids)


@dataclass(frozen=True)
class Decision:
    admit: bool
    position: int | None  # 0 = next; None when admitted
    free_slots: int
    depth: int


def decide(uid: str, jobs: list[QueuedJob], active_pod_uids: set[str], concurrency: int) -> Decision:
    """Whether job ``uid`` may start its SfM pod now, else its position in the queue."""
    busy = occupied(jobs, active_pod_uids)
    line = waiting(jobs, busy)
    free = max(0, concurrency - len(busy))
    for pos, job in enumerate(line):
        if job.uid == uid:
            return Decision(
                admit=pos < free,
                position=None if pos < free else pos - free,
                free_slots=free,
                depth=len(line),
            )
    return Decision(admit=False, position=None, free_slots=free, depth=len(line))
