"""The SfM nodes: which can take SfM pods now, how many each runs, and where the next pod goes.

Several nodes may carry the SfM node selector (``SHARPML_SFM_NODE_SELECTOR``); each runs at most
``SHARPML_SFM_CONCURRENCY`` SfM pods at once. The SfM queue's capacity is the sum of that over the nodes
that can take a pod now: Ready, not cordoned, and with every NoSchedule/NoExecute taint tolerated by the
SfM pods (``SHARPML_SFM_TOLERATIONS``). With none, jobs wait (they never fail for it).

The scheduler alone would not keep to a per-node count (it knows CPU and memory requests, not our slots),
so the operator chooses each new pod's node itself, the least loaded one with a free slot, and pins the
pod there with a required node affinity on ``metadata.name`` (what the DaemonSet controller does) on top
of the node selector. A pod's node is read back from ``spec.nodeName`` once bound, else from that
affinity, so a restarted operator counts what already runs or waits on each node.

Pure functions over snapshots (:class:`NodeView` from a kopf index of Nodes, pods from the pod index);
the one piece of state, the stage's reservations of pods not yet seen by the index, lives in
:mod:`sharpml_operator.stages.sfm`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Taint effects that keep a pod off a node (PreferNoSchedule only steers the scheduler).
BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")


@dataclass(frozen=True)
class NodeView:
    """A Node matching the SfM node selector, as the placement sees it."""

    name: str
    ready: bool = True
    unschedulable: bool = False
    taints: tuple[Mapping[str, str], ...] = ()

    @classmethod
    def read(cls, name: str, spec: Mapping[str, Any], status: Mapping[str, Any]) -> NodeView:
        conditions = status.get("conditions") or []
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        taints = tuple(
            {k: str(t[k]) for k in ("key", "value", "effect") if t.get(k) is not None}
            for t in spec.get("taints") or []
        )
        return cls(name=name, ready=ready, unschedulable=bool(spec.get("unschedulable")), taints=taints)


def matches_selector(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def tolerates(toleration: Mapping[str, Any], taint: Mapping[str, str]) -> bool:
    """Kubernetes' rule (``v1.Toleration.ToleratesTaint``)."""
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    if toleration.get("key") and toleration["key"] != taint.get("key"):
        return False
    operator = toleration.get("operator") or "Equal"
    if operator == "Exists":
        return True  # an empty key with Exists tolerates every taint
    return bool(toleration.get("key")) and (toleration.get("value") or "") == (taint.get("value") or "")


def problem(node: NodeView, tolerations: Iterable[Mapping[str, Any]]) -> str | None:
    """Why ``node`` cannot take an SfM pod now, or None when it can."""
    if not node.ready:
        return "not Ready"
    if node.unschedulable:
        return "cordoned"
    tolerations = list(tolerations)
    for taint in node.taints:
        if taint.get("effect") in BLOCKING_EFFECTS and not any(tolerates(t, taint) for t in tolerations):
            value = f"={taint['value']}" if taint.get("value") else ""
            return f"taint {taint.get('key')}{value}:{taint.get('effect')} not tolerated"
    return None


def pod_node(pod: Mapping[str, Any]) -> str | None:
    """The node a pod runs on (``spec.nodeName``), else the one its required node affinity pins it to."""
    spec = pod.get("spec") or {}
    if spec.get("nodeName"):
        return spec["nodeName"]
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    for term in required.get("nodeSelectorTerms") or []:
        for field_ in term.get("matchFields") or []:
            values = field_.get("values") or []
            if field_.get("key") == "metadata.name" and field_.get("operator") == "In" and len(values) == 1:
                return values[0]
    return None


def pin_to(node: str) -> dict[str, Any]:
    """The pod affinity that binds a pod to exactly ``node`` (read back by :func:`pod_node`)."""
    term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}


@dataclass(frozen=True)
class Placement:
    """The SfM nodes at one step: their slots, what holds them, and where the next pod goes."""

    per_node: int
    #: Node name -> SfM pods (job uids) it holds, for every node that can take a pod now.
    load: Mapping[str, int]
    #: Node name -> why it cannot take a pod now (matching the selector, but not Ready, cordoned, ...).
    unavailable: Mapping[str, str] = field(default_factory=dict)
    #: Busy jobs whose node is unknown (a Reconstructing job whose pod is gone or not yet bound without
    #: affinity): each will need a slot, so it is taken off the free ones.
    unplaced: int = 0

    @property
    def capacity(self) -> int:
        return self.per_node * len(self.load)

    @property
    def free(self) -> int:
        return max(0, sum(max(0, self.per_node - n) for n in self.load.values()) - self.unplaced)

    def choose(self) -> str | None:
        """The least loaded node with a free slot (ties: by name, so the choice is deterministic); None
        when no slot is free (an unplaced busy job is owed one first)."""
        if self.free <= 0:
            return None
        candidates = [(n, name) for name, n in self.load.items() if n < self.per_node]
        return min(candidates)[1] if candidates else None

    def with_pod(self, node: str) -> Placement:
        load = dict(self.load)
        if node in load:
            load[node] += 1
        return Placement(self.per_node, load, self.unavailable, self.unplaced)

    def why_none(self, selector: Mapping[str, str]) -> str:
        """A user's explanation when no node can take a pod."""
        wanted = ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or "any node"
        if self.load:
            return f"all {len(self.load)} SfM node(s) busy"
        if not self.unavailable:
            return f"no SfM node is ready: no node matches {wanted}"
        reasons = "; ".join(f"{name} {why}" for name, why in sorted(self.unavailable.items()))
        return f"no SfM node is ready ({reasons})"


def placement(
    nodes: Iterable[NodeView],
    tolerations: Iterable[Mapping[str, Any]],
    per_node: int,
    busy: Iterable[str],
    node_of: Mapping[str, str | None],
) -> Placement:
    """Slots per node from the cluster's state.

    ``busy``: job uids holding an SfM slot (:func:`sharpml_operator.slots.occupied`); ``node_of``: the node
    of each job's pod (or reservation), None or absent when unknown. A busy job on a node that cannot take
    pods now (gone NotReady, cordoned) holds nothing there: that node has no slots to give.
    """
    tolerations = list(tolerations)
    load: dict[str, int] = {}
    unavailable: dict[str, str] = {}
    for node in nodes:
        why = problem(node, tolerations)
        if why is None:
            load[node.name] = 0
        else:
            unavailable[node.name] = why
    unplaced = 0
    for uid in set(busy):
        node = node_of.get(uid)
        if node is None:
            unplaced += 1
        elif node in load:
            load[node] += 1
    return Placement(per_node, load, unavailable, unplaced)
