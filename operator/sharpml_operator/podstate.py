"""What a pod's status means for its job: still starting, running, succeeded, or failed and why.

Reasons are the kubelet's and scheduler's own (DeadlineExceeded, OOMKilled, Unschedulable,
ImagePullBackOff, ...) turned into the job's failure reasons, so a user reads "timed out" or
"out of memory", never "pod failed".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sharpml.contract import EXIT_QUALITY_GATE, EXIT_TRAINING_FAILED

#: Waiting reasons that will not fix themselves: fail the job at once.
FATAL_WAITING = {"InvalidImageName", "ErrImageNeverPull"}
#: Waiting reasons a kubelet retries: fail the job when they last longer than the start timeout.
RETRIED_WAITING = {
    "ErrImagePull": "ImagePullFailed",
    "ImagePullBackOff": "ImagePullFailed",
    "CreateContainerConfigError": "ContainerCreateFailed",
    "CreateContainerError": "ContainerCreateFailed",
    "RunContainerError": "ContainerCreateFailed",
}


@dataclass(frozen=True)
class PodKind:
    """What a stage's pod is called in messages, and what its exit codes mean."""

    title: str  # "structure from motion"
    node: str  # "the SfM node"
    failed: str  # the reason of an unexplained failure
    timeout_setting: str
    memory_setting: str
    #: Exit codes with a meaning of their own: code -> (reason, message).
    exits: Mapping[int, tuple[str, str]] = field(default_factory=dict)


SFM_POD = PodKind(
    "structure from motion",
    "the SfM node",
    "SfmFailed",
    "SHARPML_JOB_TIMEOUT_MS",
    "SHARPML_SFM_MEMORY_LIMIT",
    {EXIT_QUALITY_GATE: ("QualityGate", "the reconstruction failed the quality gate")},
)
TRAINING_POD = PodKind(
    "training",
    "the training node",
    "TrainingFailed",
    "SHARPML_TRAINING_TIMEOUT_SECONDS",
    "SHARPML_TRAINING_MEMORY_LIMIT",
    {EXIT_TRAINING_FAILED: ("TrainingFailed", "the scene could not be trained on, or training diverged")},
)


@dataclass(frozen=True)
class PodState:
    """``state`` is one of starting, running, succeeded, failed; ``reason`` is CamelCase."""

    state: str
    reason: str
    message: str
    exit_code: int | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("succeeded", "failed")


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _age_seconds(pod: dict[str, Any], now: datetime) -> float:
    created = _parse_time(pod.get("metadata", {}).get("creationTimestamp"))
    return (now - created).total_seconds() if created else 0.0


def container_status(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return statuses[0] if statuses else {}


def classify(
    pod: dict[str, Any], *, start_timeout: float, now: datetime | None = None, kind: PodKind = SFM_POD
) -> PodState:
    """Interpret ``pod`` (a Pod as JSON). Pure: the caller decides what to do with the answer."""
    now = now or datetime.now(UTC)
    status = pod.get("status") or {}
    phase = status.get("phase", "Pending")
    cs = container_status(pod)
    terminated = (cs.get("state") or {}).get("terminated") or {}
    waiting = (cs.get("state") or {}).get("waiting") or {}
    deadline = pod.get("spec", {}).get("activeDeadlineSeconds")

    if phase == "Succeeded":
        return PodState("succeeded", "Succeeded", f"{kind.title} finished", terminated.get("exitCode", 0))
    if phase == "Failed":
        if status.get("reason") == "DeadlineExceeded":
            return PodState(
                "failed",
                "Timeout",
                f"{kind.title} exceeded its timeout of {deadline} s ({kind.timeout_setting})",
                terminated.get("exitCode"),
            )
        if terminated.get("reason") == "OOMKilled":
            limit = next(
                (c.get("resources", {}).get("limits", {}).get("memory") for c in pod["spec"]["containers"]),
                None,
            )
            return PodState(
                "failed",
                "OutOfMemory",
                f"{kind.title} ran out of memory (OOMKilled at the {limit} limit); "
                f"use fewer or smaller photos, or raise {kind.memory_setting}",
                terminated.get("exitCode"),
            )
        if status.get("reason") == "Evicted":
            return PodState(
                "failed", "Evicted", f"the {kind.title} pod was evicted: {status.get('message', '')}"
            )
        code = terminated.get("exitCode")
        if code in kind.exits:
            reason, message = kind.exits[code]
            return PodState("failed", reason, message, code)
        detail = (terminated.get("message") or "").strip().splitlines()[-1:] or [terminated.get("reason", "")]
        return PodState(
            "failed",
            kind.failed,
            f"{kind.title} failed (exit code {code}): {detail[0]}".strip(),
            code,
        )
    if phase == "Running":
        return PodState("running", "Running", f"{kind.title} running")

    # Pending: not scheduled yet, or the container is not running yet.
    age = _age_seconds(pod, now)
    reason = waiting.get("reason", "")
    if reason in FATAL_WAITING:
        return PodState("failed", "ImagePullFailed", f"{reason}: {waiting.get('message', '')}".strip())
    if reason in RETRIED_WAITING:
        msg = f"{reason}: {waiting.get('message', '')}".strip()
        if age > start_timeout:
            return PodState("failed", RETRIED_WAITING[reason], f"{msg} (for more than {start_timeout:.0f} s)")
        return PodState("starting", reason, msg)
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            msg = f"waiting for {kind.node}: {cond.get('message', cond.get('reason', ''))}"
            if age > start_timeout:
                return PodState("failed", "Unschedulable", f"{msg} (for more than {start_timeout:.0f} s)")
            return PodState("starting", "Unschedulable", msg)
    if pod.get("spec", {}).get("nodeName"):
        return PodState("starting", reason or "ContainerCreating", f"starting on {kind.node}")
    return PodState("starting", "Scheduling", "waiting for the scheduler")


def is_active(pod: dict[str, Any]) -> bool:
    """Whether the pod occupies its stage's slot (exists and has not finished)."""
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
