"""The SharpJob status, typed: read from a resource, changed through a patch.

The operator is the only writer (status subresource). It never rewrites the whole status: each step
builds a :class:`StatusPatch` of the fields it changes, and :func:`enter` derives everything that
follows from a phase change (conditions, ``finishedAt``, the queue position) so that no caller can
forget one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sharpml.contract.phases import TERMINAL, ConditionType, Phase

MAX_MESSAGE = 1024
MAX_CONDITION_MESSAGE = 32768
MAX_STAGE = 256

#: Per stage condition: the phases in which it is False (work ahead or under way) and the phase that
#: makes it True. Once True it stays True (a later failure does not undo a finished stage).
STAGE_CONDITIONS: dict[ConditionType, tuple[frozenset[Phase], Phase]] = {
    ConditionType.RECONSTRUCTED: (
        frozenset({Phase.PENDING, Phase.QUEUED, Phase.RECONSTRUCTING}),
        Phase.RECONSTRUCTED,
    ),
    ConditionType.TRAINED: (frozenset({Phase.TRAINING}), Phase.TRAINED),
    ConditionType.DELIVERED: (frozenset({Phase.DELIVERING}), Phase.COMPLETE),
}


def now_rfc3339() -> str:
    """UTC time as RFC 3339 with second precision, as Kubernetes writes timestamps."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def seconds_since(stamp: str | None, now: datetime | None = None) -> float | None:
    if not stamp:
        return None
    then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return ((now or datetime.now(UTC)) - then).total_seconds()


@dataclass(frozen=True)
class JobStatus:
    """``status`` of a SharpJob as read from the apiserver (absent fields: their zero values)."""

    phase: Phase = Phase.PENDING
    message: str = ""
    observed_generation: int | None = None
    conditions: tuple[dict[str, Any], ...] = ()
    queue_position: int | None = None
    queue_sequence: int | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    timestamps: dict[str, str] = field(default_factory=dict)
    sfm: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, status: Mapping[str, Any] | None) -> JobStatus:
        status = status or {}
        return cls(
            phase=Phase.of(status),
            message=status.get("message") or "",
            observed_generation=status.get("observedGeneration"),
            conditions=tuple(dict(c) for c in status.get("conditions") or ()),
            queue_position=status.get("queuePosition"),
            queue_sequence=status.get("queueSequence"),
            progress=dict(status.get("progress") or {}),
            timestamps=dict(status.get("timestamps") or {}),
            sfm=dict(status.get("sfm") or {}),
            training=dict(status.get("training") or {}),
            outputs=dict(status.get("outputs") or {}),
        )

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> JobStatus:
        """The status of a whole SharpJob object."""
        return cls.read(obj.get("status"))

    @property
    def finished(self) -> bool:
        return self.phase in TERMINAL

    def condition(self, type_: ConditionType) -> dict[str, Any] | None:
        return next((c for c in self.conditions if c.get("type") == type_), None)


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: str,
    reason: str,
    message: str,
    generation: int | None,
) -> list[dict[str, Any]]:
    """A new list with ``type_`` set; lastTransitionTime moves only when the status changes."""
    out = [dict(c) for c in conditions]
    cond = next((c for c in out if c.get("type") == type_), None)
    if cond is None:
        cond = {"type": type_}
        out.append(cond)
    if cond.get("status") != status:
        cond["lastTransitionTime"] = now_rfc3339()
    cond.update(status=status, reason=reason, message=message[:MAX_CONDITION_MESSAGE])
    if generation is not None:
        cond["observedGeneration"] = generation
    return out


def conditions_for(
    current: list[dict[str, Any]], phase: Phase, reason: str, message: str, generation: int | None
) -> list[dict[str, Any]]:
    """Conditions after entering ``phase``: Ready (True only when Complete), one per stage, Failed."""
    ready = "True" if phase is Phase.COMPLETE else "False"
    conds = set_condition(
        current, ConditionType.READY, ready, reason if ready == "True" else phase, message, generation
    )
    for type_, (pending, done) in STAGE_CONDITIONS.items():
        was_true = any(c.get("type") == type_ and c.get("status") == "True" for c in conds)
        if phase is done:
            conds = set_condition(conds, type_, "True", reason, message, generation)
        elif phase in pending:
            conds = set_condition(conds, type_, "False", phase, message, generation)
        elif phase in (Phase.FAILED, Phase.CANCELLED) and not was_true and _known(conds, type_):
            conds = set_condition(conds, type_, "False", reason, message, generation)
    if phase is Phase.FAILED:
        conds = set_condition(conds, ConditionType.FAILED, "True", reason, message, generation)
    return conds


def _known(conds: list[dict[str, Any]], type_: str) -> bool:
    """A stage that never started stays absent when the job ends; one that had begun says why it stopped."""
    return any(c.get("type") == type_ for c in conds) or type_ == ConditionType.RECONSTRUCTED


class StatusPatch(dict):
    """The status fields one step changes (a merge patch of ``status``), read-through to the current
    status for fields it has not set."""

    def __init__(self, current: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.current = dict(current or {})

    def view(self) -> dict[str, Any]:
        """The status as it will be once this patch is applied."""
        return {**self.current, **self}

    def stamp(self, key: str) -> str:
        """Set ``timestamps[key]`` to now unless it is set already (stamps are written once)."""
        ts = dict(self.get("timestamps") or self.current.get("timestamps") or {})
        ts.setdefault(key, now_rfc3339())
        self["timestamps"] = ts
        return ts[key]

    def progress(self, percent: int, stage: str) -> None:
        value = {"percent": max(0, min(100, int(percent))), "stage": stage[:MAX_STAGE]}
        if self.view().get("progress") != value:
            self["progress"] = value

    def message(self, text: str) -> None:
        if self.view().get("message") != text[:MAX_MESSAGE]:
            self["message"] = text[:MAX_MESSAGE]

    def enter(self, phase: Phase, reason: str, message: str, generation: int | None) -> None:
        """Everything that follows from entering ``phase``."""
        self["phase"] = str(phase)
        self["message"] = message[:MAX_MESSAGE]
        self["observedGeneration"] = generation
        self["conditions"] = conditions_for(
            list(self.view().get("conditions") or []), phase, reason, message, generation
        )
        if phase is not Phase.QUEUED:
            self["queuePosition"] = None
        if phase in TERMINAL:
            self.stamp("finishedAt")
