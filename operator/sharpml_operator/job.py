"""One SharpJob as a handler sees it: typed spec and status, the status patch being built, and the
one way to move its phase (:meth:`Job.enter`), which also records the event, the metric and the log."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from sharpml.contract import TERMINAL, JobSpec, JobStatus, Phase, StatusPatch, may_move
from sharpml_operator import metrics

log = logging.getLogger("sharpml.operator")


class IllegalTransition(RuntimeError):
    """A move the lifecycle table (sharpml.contract.TRANSITIONS) does not allow: a bug, never input."""


@dataclass
class Job:
    body: Any  # the kopf body: where events are attached
    meta: Mapping[str, Any]
    spec: JobSpec
    status: JobStatus  # as read at the start of this step
    patch: StatusPatch  # what this step changes

    @classmethod
    def from_kopf(cls, body: Any, spec: Mapping[str, Any], status: Mapping[str, Any], meta: Any) -> Job:
        return cls(body, meta, JobSpec.read(spec), JobStatus.read(status), StatusPatch(status))

    @property
    def uid(self) -> str:
        return self.meta["uid"]

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def namespace(self) -> str:
        return self.meta["namespace"]

    @property
    def phase(self) -> Phase:
        """The phase as it will be once this step's patch is applied."""
        return Phase.of(self.patch.view())

    @property
    def timestamps(self) -> dict[str, str]:
        return dict(self.patch.view().get("timestamps") or {})

    def enter(self, phase: Phase, reason: str, message: str, *, warning: bool = False) -> None:
        """Move to ``phase``: status (conditions, finishedAt, ...), a Kubernetes event, the phase gauge."""
        if not may_move(self.phase, phase):
            raise IllegalTransition(f"{self.namespace}/{self.name}: {self.phase} -> {phase} ({reason})")
        self.patch.enter(phase, reason, message, self.meta.get("generation"))
        self.event(reason, message, warning=warning)
        metrics.JOBS_BY_PHASE.observe(self.uid, phase)
        if phase in TERMINAL:
            metrics.FINISHED.labels(phase=str(phase)).inc()
        log.info("%s/%s: %s (%s) %s", self.namespace, self.name, phase, reason, message)

    def fail(self, reason: str, message: str) -> None:
        self.enter(Phase.FAILED, reason, message, warning=True)
        metrics.FAILURES.labels(reason=reason).inc()

    def event(self, reason: str, message: str, *, warning: bool = False) -> None:
        kopf.event(self.body, type="Warning" if warning else "Normal", reason=reason, message=message[:1024])
