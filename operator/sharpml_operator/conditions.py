"""Standard Kubernetes conditions (metav1.Condition) on the SharpJob status."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

FINISHED_PHASES = ("Complete", "Failed", "Cancelled")


def now_rfc3339() -> str:
    """UTC time as RFC 3339 with second precision, as Kubernetes writes timestamps."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type_: str,
    status: str,
    reason: str,
    message: str,
    generation: int | None,
) -> list[dict[str, Any]]:
    """A new list with ``type_`` set; lastTransitionTime moves only when the status changes."""
    out = [dict(c) for c in conditions or []]
    for cond in out:
        if cond.get("type") == type_:
            if cond.get("status") != status:
                cond["lastTransitionTime"] = now_rfc3339()
            cond.update(status=status, reason=reason, message=message[:32768])
            if generation is not None:
                cond["observedGeneration"] = generation
            return out
    new = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message[:32768],
        "lastTransitionTime": now_rfc3339(),
    }
    if generation is not None:
        new["observedGeneration"] = generation
    out.append(new)
    return out


def phase_conditions(
    current: list[dict[str, Any]] | None, phase: str, reason: str, message: str, generation: int | None
) -> list[dict[str, Any]]:
    """Conditions that follow from entering ``phase`` (Ready, Reconstructed, Failed)."""
    conds = set_condition(current, "Ready", "False", phase, message, generation)
    if phase in ("Queued", "Reconstructing"):
        conds = set_condition(conds, "Reconstructed", "False", phase, message, generation)
    elif phase == "Reconstructed":
        conds = set_condition(conds, "Reconstructed", "True", reason, message, generation)
    elif phase in ("Failed", "Cancelled"):
        if not any(c["type"] == "Reconstructed" and c["status"] == "True" for c in conds):
            conds = set_condition(conds, "Reconstructed", "False", reason, message, generation)
        if phase == "Failed":
            conds = set_condition(conds, "Failed", "True", reason, message, generation)
    return conds
