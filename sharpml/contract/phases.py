"""The phases of a SharpJob's life and the conditions that summarise them.

A successful job goes ``Pending → Queued → Reconstructing → Reconstructed → Training → Trained →
Delivering → Complete``. ``Reconstructed`` and ``Trained`` are resting phases: a stage's result is
ready and the job waits there for the next stage (and its resource) to pick it up. ``Complete``,
``Failed`` and ``Cancelled`` are terminal: the job gets ``finishedAt``, its event stream closes and
retention deletes it after ``spec.ttlSecondsAfterFinished``.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any


class Phase(StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"
    RECONSTRUCTING = "Reconstructing"
    RECONSTRUCTED = "Reconstructed"
    TRAINING = "Training"
    TRAINED = "Trained"
    DELIVERING = "Delivering"
    COMPLETE = "Complete"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @classmethod
    def of(cls, status: Mapping[str, Any] | None) -> Phase:
        """The phase in a status mapping (absent or unknown: ``Pending``, as for a job not yet seen)."""
        raw = (status or {}).get("phase")
        try:
            return cls(raw or cls.PENDING)
        except ValueError:
            return cls.PENDING


#: The order a successful job follows; the CRD's phase enum lists exactly these plus the failures.
PIPELINE: tuple[Phase, ...] = (
    Phase.PENDING,
    Phase.QUEUED,
    Phase.RECONSTRUCTING,
    Phase.RECONSTRUCTED,
    Phase.TRAINING,
    Phase.TRAINED,
    Phase.DELIVERING,
    Phase.COMPLETE,
)
TERMINAL: frozenset[Phase] = frozenset({Phase.COMPLETE, Phase.FAILED, Phase.CANCELLED})
#: A stage's result is ready; the next stage picks the job up from here.
RESTING: frozenset[Phase] = frozenset({Phase.RECONSTRUCTED, Phase.TRAINED})
#: Phases the operator still works on (everything that is not terminal).
ACTIVE: frozenset[Phase] = frozenset(p for p in Phase if p not in TERMINAL)


class ConditionType(StrEnum):
    """metav1.Condition types on the status (kubebuilder style: one per aspect, True/False/Unknown)."""

    READY = "Ready"  # True once Complete: the deliverable is there
    RECONSTRUCTED = "Reconstructed"
    TRAINED = "Trained"
    DELIVERED = "Delivered"
    FAILED = "Failed"


_ENDS = frozenset({Phase.FAILED, Phase.CANCELLED})
#: Every move a job may make: the lifecycle in one table. Any active phase can fail or be cancelled;
#: a resting phase moves on to the next stage, or straight to delivery when that stage does not apply
#: (``Reconstructed → Delivering``), or ends the job when the pipeline has no further stage.
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.PENDING: frozenset({Phase.QUEUED}) | _ENDS,
    Phase.QUEUED: frozenset({Phase.RECONSTRUCTING}) | _ENDS,
    Phase.RECONSTRUCTING: frozenset({Phase.RECONSTRUCTED}) | _ENDS,
    Phase.RECONSTRUCTED: frozenset({Phase.TRAINING, Phase.DELIVERING, Phase.COMPLETE}) | _ENDS,
    Phase.TRAINING: frozenset({Phase.TRAINED}) | _ENDS,
    Phase.TRAINED: frozenset({Phase.DELIVERING, Phase.COMPLETE}) | _ENDS,
    Phase.DELIVERING: frozenset({Phase.COMPLETE}) | _ENDS,
    Phase.COMPLETE: frozenset(),
    Phase.FAILED: frozenset(),
    Phase.CANCELLED: frozenset(),
}


def may_move(old: Phase, new: Phase) -> bool:
    """Whether ``old → new`` is in the lifecycle (re-entering the same phase is always allowed)."""
    return new is old or new in TRANSITIONS[old]
