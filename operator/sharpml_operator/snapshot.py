"""The operator's view of the cluster at one step: every SharpJob (for the queues), every stage pod, and
the SfM nodes (for the SfM queue's slots and each pod's node).

All come from kopf indexes, kept current by watches, so a step costs no API call to look around.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sharpml_operator.nodes import NodeView
from sharpml_operator.podstate import is_active
from sharpml_operator.slots import QueuedJob


@dataclass(frozen=True)
class Snapshot:
    jobs: list[QueuedJob] = field(default_factory=list)
    #: Pods by (stage, job uid): kopf's index of pods labelled with a stage.
    pods: Mapping[tuple[str, str], Iterable[dict[str, Any]]] = field(default_factory=dict)
    #: Nodes matching the SfM node selector, by name: kopf's index of Nodes.
    nodes: Mapping[str, Iterable[NodeView]] = field(default_factory=dict)

    def sfm_nodes(self) -> list[NodeView]:
        return [view for store in self.nodes.values() for view in store]

    def pod(self, stage: str, uid: str) -> dict[str, Any] | None:
        return next(iter(self.pods.get((stage, uid), [])), None)

    def active(self, stage: str) -> set[str]:
        """Job uids whose ``stage`` pod has not finished: they hold that stage's slot."""
        return {
            uid for (s, uid), store in self.pods.items() if s == stage and any(is_active(p) for p in store)
        }

    def without(self, uid: str) -> Snapshot:
        return Snapshot([j for j in self.jobs if j.uid != uid], self.pods, self.nodes)
