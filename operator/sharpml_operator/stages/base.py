"""What a stage is to the pipeline: where it waits and runs in the lifecycle, which resource it
queues for, its share of the job's progress, and how it starts, is observed, and is stopped.

The pipeline (:mod:`sharpml_operator.pipeline`) owns the order and the queue; a stage owns only its
own work. Every method is idempotent and level-triggered: it may run again after an operator restart
at any point, and decides from what the cluster and the data volume hold now.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection

from sharpml.contract import Phase
from sharpml_operator.job import Job
from sharpml_operator.snapshot import Snapshot


class Stage(ABC):
    #: Short name: the pods' ``sharpml.com/stage`` label and the metrics' ``stage`` label.
    name: str
    #: What a user reads ("structure from motion").
    title: str
    #: What a queued job waits for ("the SfM node").
    waiting_for: str
    #: What it leaves for the user when it is the last stage ("the preview splat").
    result: str
    #: The kind of resource it queues for (``settings.SFM_NODE``, ``settings.GPU``).
    slot: str
    #: Phases that wait for this stage's slot, in the queue's order; the first is the one admission sets.
    waits_in: Collection[Phase]
    runs_in: Phase
    done: Phase
    #: Where this stage sits in the job's overall progress, in percent (start, end).
    share: tuple[int, int]
    #: status.timestamps keys written when it starts and when it has finished.
    started_stamp: str
    done_stamp: str

    def applies(self, job: Job) -> bool:
        """Whether the job goes through this stage at all (training: not for ``backend: none``)."""
        return True

    def percent(self, fraction: float) -> int:
        """The job's overall progress for ``fraction`` of this stage (never its end until it is done)."""
        lo, hi = self.share
        return min(hi - 1, lo + round((hi - lo) * max(0.0, min(1.0, fraction))))

    @abstractmethod
    def holders(self, snap: Snapshot) -> set[str]:
        """Job uids whose work for this stage still occupies the resource (a pod not finished)."""

    @abstractmethod
    def free_slots(self, busy: set[str], snap: Snapshot) -> int:
        """How many jobs may take this stage's resource now, given the jobs ``busy`` holding it."""

    @abstractmethod
    def start(self, job: Job, snap: Snapshot) -> None:
        """Start (or adopt) the work and enter :attr:`runs_in`; or fail the job with a reason."""

    @abstractmethod
    def observe(self, job: Job, snap: Snapshot) -> None:
        """Report progress while it runs; when it has ended, enter :attr:`done` or fail the job."""

    @abstractmethod
    def stop(self, job: Job, snap: Snapshot) -> bool:
        """Stop whatever runs for the job; True when something was asked to stop."""

    @abstractmethod
    def stopped(self, job: Job, snap: Snapshot) -> bool:
        """Nothing of the job's runs any more for this stage (what the finalizer waits for)."""

    def waiting_message(self, position: int, snap: Snapshot) -> str:
        return f"waiting for {self.waiting_for}: position {position} in the queue"

    def started(self, job: Job, snap: Snapshot) -> bool:
        """Whether work of this job exists already (a crash after starting it): adopt it, skip the queue."""
        return False
