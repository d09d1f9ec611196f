"""Queue slots per kind of resource: at most N jobs use one at a time, first come first served.

Pure functions over snapshots. Level-triggered on purpose: every decision is recomputed from the
cluster's state (SharpJobs and stage pods, kept by kopf indexes), so a restarted operator resumes the
queue exactly where it was and two handlers looking at the same snapshot never both take the last
free slot. Each stage says which phases wait for its resource and which phase holds it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from sharpml.contract import Phase


@dataclass(frozen=True)
class QueuedJob:
    """A SharpJob as the queue sees it."""

    uid: str
    namespace: str
    name: str
    phase: Phase
    created: str  # metadata.creationTimestamp (RFC 3339, second precision)
    sequence: int  # status.queueSequence: the etcd revision that created the job (see handlers)

    @property
    def order_key(self) -> tuple[str, int, str, str]:
        # Creation time first (what "first come" means to a user, stable across operator restarts), then
        # the creation revision, which orders jobs created within the same second.
        return (self.created, self.sequence, self.namespace, self.name)


def waiting(jobs: Iterable[QueuedJob], admitted: set[str], phases: Collection[Phase]) -> list[QueuedJob]:
    """Jobs waiting for a slot, in service order."""
    line = (j for j in jobs if j.phase in phases and j.uid not in admitted)
    return sorted(line, key=lambda j: j.order_key)


def occupied(jobs: Iterable[QueuedJob], holders: set[str], running: Phase) -> set[str]:
    """Job uids holding a slot: a job in the running phase, or any job whose pod has not finished.

    Counting pods (and not only phases) keeps a slot taken while a cancelled pod is still stopping,
    and after a crash between creating a pod and recording it in the job's status.
    """
    return {j.uid for j in jobs if j.phase == running} | set(holders)


@dataclass(frozen=True)
class Decision:
    admit: bool
    position: int | None  # 0 = next; None when admitted or not waiting
    free_slots: int
    depth: int


def decide(
    uid: str, jobs: list[QueuedJob], busy: set[str], free: int, *, waits_in: Collection[Phase]
) -> Decision:
    """Whether job ``uid`` may take a slot now, else its position in the queue.

    ``busy``: the jobs holding a slot (:func:`occupied`); ``free``: how many slots are free now (a fixed
    capacity less ``busy`` for the GPU queue; the SfM nodes' free slots for SfM: see ``nodes.py``).
    """
    line = waiting(jobs, busy, waits_in)
    for pos, job in enumerate(line):
        if job.uid == uid:
            return Decision(
                admit=pos < free,
                position=None if pos < free else pos - free,
                free_slots=free,
                depth=len(line),
            )
    return Decision(admit=False, position=None, free_slots=free, depth=len(line))
