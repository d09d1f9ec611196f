"""What happens to a SharpJob next: admission, the stages in order, the queues, cancel and the end.

The lifecycle's legal moves are one table (:data:`sharpml.contract.TRANSITIONS`); the pipeline is
the ordered list of stages (:attr:`Pipeline.stages`). For a job in phase P, exactly one rule applies:

- a stage *runs in* P: that stage observes its work (progress, then done or failed);
- the first stage that *waits in* P and applies to the job: the job takes that stage's slot when it is
  its turn, else shows its place (``Reconstructed`` with ``training.backend: none``: delivery);
- P is a resting phase no applicable stage waits in: the pipeline ends here, the job is Complete (a
  pipeline without the Delivering stage, as in unit tests).

A stage whose ``done`` is ``Complete`` (delivery) ends the job itself. So a new stage (training,
delivery) is one new module added to that list, not new branches here.
"""

from __future__ import annotations

from sharpml.contract import PIPELINE, RESTING, Phase
from sharpml_operator import jobfiles
from sharpml_operator.job import Job
from sharpml_operator.settings import Settings
from sharpml_operator.slots import QueuedJob, decide, occupied
from sharpml_operator.snapshot import Snapshot
from sharpml_operator.stages import DeliveryStage, SfmStage, Stage, TrainingStage


class Pipeline:
    def __init__(self, settings: Settings, stages: list[Stage] | None = None) -> None:
        self.settings = settings
        self.stages: list[Stage] = (
            stages
            if stages is not None
            else [SfmStage(settings), TrainingStage(settings), DeliveryStage(settings)]
        )

    def running_in(self, phase: Phase) -> Stage | None:
        return next((s for s in self.stages if s.runs_in is phase), None)

    def waiting_in(self, phase: Phase, job: Job) -> Stage | None:
        """The first stage that waits in ``phase`` and applies to ``job``."""
        return next((s for s in self.stages if phase in s.waits_in and s.applies(job)), None)

    # --- a new job ---

    def admit(self, job: Job, snap: Snapshot, sequence: int) -> None:
        """Check a new job's source and queue it for the first stage (then try to start it at once)."""
        if job.spec.job_dir is None:
            job.fail(
                "UnsupportedSource",
                "only uploaded photos (spec.source.upload) can be processed by this release",
            )
            return
        try:
            directory = jobfiles.job_dir(self.settings.data_dir, job.spec.job_dir, job.name)
            jobfiles.check_ready(directory)
            jobfiles.check_image_count(directory, job.spec.image_count)
        except jobfiles.JobDirError as exc:
            job.fail(exc.reason, str(exc))
            return
        except OSError as exc:
            job.fail("JobDirMissing", str(exc))
            return
        job.patch.stamp("queuedAt")
        job.patch["queueSequence"] = sequence
        if job.spec.cancel:
            job.enter(Phase.CANCELLED, "Cancelled", "cancelled before it started")
            return
        job.enter(Phase.QUEUED, "Queued", f"waiting for {self.stages[0].waiting_for}")
        me = QueuedJob(
            job.uid, job.namespace, job.name, Phase.QUEUED, job.meta["creationTimestamp"], sequence
        )
        self.step(job, Snapshot([*snap.without(job.uid).jobs, me], snap.pods, snap.nodes))

    # --- every tick of an active job ---

    def step(self, job: Job, snap: Snapshot) -> None:
        """One level-triggered step. Cancellation is decided here too, so that only one task ever moves
        a job's phase (kopf runs timers concurrently with event handlers)."""
        if job.spec.cancel:
            self.cancel(job, snap)
            return
        phase = job.phase
        if (stage := self.running_in(phase)) is not None:
            stage.observe(job, snap)
        elif (stage := self.waiting_in(phase, job)) is not None:
            self._queue(stage, job, snap)
        elif phase in RESTING:
            self._complete(job)

    def _queue(self, stage: Stage, job: Job, snap: Snapshot) -> None:
        busy = occupied(snap.jobs, stage.holders(snap), stage.runs_in)
        decision = decide(job.uid, snap.jobs, busy, stage.free_slots(busy, snap), waits_in=stage.waits_in)
        if decision.admit or stage.started(job, snap):
            stage.start(job, snap)
        elif decision.position is not None:
            # The message is written whenever it changes (the SfM nodes' state is part of it), the rest only
            # when the position does.
            job.patch.message(stage.waiting_message(decision.position, snap))
            if job.status.queue_position != decision.position:
                job.patch["queuePosition"] = decision.position
                job.patch.progress(stage.share[0], f"queued (position {decision.position})")

    def _complete(self, job: Job) -> None:
        """The last stage's result is the deliverable: the job is done."""
        last = next(s for s in self.stages if s.done is job.phase)
        skipped = [s.title for s in self.stages if phase_after(s, last) and not s.applies(job)]
        why = f" ({', '.join(skipped)}: off for this job)" if skipped else ""
        job.patch.progress(100, "complete")
        job.enter(
            Phase.COMPLETE, "Complete", f"{last.title} finished; {last.result} is the job's result{why}"
        )

    # --- cancel and delete ---

    def cancel(self, job: Job, snap: Snapshot) -> None:
        stopped = [s.title for s in self.stages if s.stop(job, snap)]
        what = f"its {', '.join(stopped)} is being stopped" if stopped else "nothing was running"
        job.enter(Phase.CANCELLED, "Cancelled", f"cancelled (spec.cancel); {what}")

    def stopped(self, job: Job, snap: Snapshot) -> bool:
        """Whether nothing runs for the job any more (asks what still runs to stop)."""
        return all([s.stopped(job, snap) for s in self.stages])


def phase_after(stage: Stage, last: Stage) -> bool:
    """Whether ``stage`` comes after ``last`` in the lifecycle."""
    return PIPELINE.index(stage.runs_in) > PIPELINE.index(last.done)
