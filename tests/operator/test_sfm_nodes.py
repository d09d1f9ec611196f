"""Several SfM nodes share the SfM queue: SHARPML_SFM_CONCURRENCY slots on each Ready SfM node.

Two SfM nodes, each with its own node agent (a kubelet stand-in running pods with podman), one slot each:
jobs wait while no node matches, then four jobs run over both nodes, never two at once on one node, with
the operator SIGKILLed once two pods are placed (the restarted one counts them on their nodes).
"""

from __future__ import annotations

import itertools
import json

import pytest

from tests.operator.conftest import create, events_for, get_job, sfm_pods, sharpjob, wait_for, wait_phase

#: SfM pods held to half a core, as in the queue tests: a job still runs while the next ones are placed.
SLOW_POD = {"sfm_cpu_request": "500m", "sfm_cpu_limit": "500m"}
POOL_LABEL = "sharpml.com/pool"

pytestmark = [pytest.mark.cluster, pytest.mark.podman, pytest.mark.slow]


def _status(job):
    return job.get("status", {})


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of (start, end) intervals that overlap at one moment."""
    edges = sorted(
        [(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1])
    )
    running = peak = 0
    for _, step in edges:  # an end and a start at the same instant: the end first
        running += step
        peak = max(peak, running)
    return peak


def test_two_sfm_nodes_share_the_queue_one_pod_each_at_a_time(
    control_plane, namespace, data_volume, start_operator, add_sfm_node, scene_uploads
):
    cp, ns = control_plane, namespace
    # The operator's SfM nodes are this test's own pool: the session's SfM node stays out of it.
    selector = {"sharpml.com/role": "sfm", POOL_LABEL: ns}
    names = [f"job-{i}" for i in range(4)]
    for name in names:
        create(cp, ns, sharpjob(name, data_volume.new_job(scene_uploads, name), len(scene_uploads)))
    op = start_operator(sfm_concurrency="1", sfm_node_selector=json.dumps(selector), **SLOW_POD)

    # No node matches yet: every job waits, saying why, and none fails.
    for name in names:
        job = wait_for(
            cp,
            ns,
            name,
            lambda j: "no SfM node is ready" in _status(j).get("message", ""),
            what="the no-SfM-node message",
            operator=op,
        )
        assert _status(job)["phase"] == "Queued", _status(job)
    assert "sharpml_sfm_capacity 0.0" in op.metrics()
    assert not sfm_pods(cp, ns)

    # Two SfM nodes join the pool (one kubectl call labels both).
    agents = [add_sfm_node(f"{ns}-a"), add_sfm_node(f"{ns}-b")]
    cp.kubectl("label", "node", *(a.node_name for a in agents), f"{POOL_LABEL}={ns}")

    # Once two pods are placed (each node's one slot), SIGKILL the operator: the new one has no memory of
    # its choices and must count the pods on their nodes from the cluster.
    wait_for(
        cp,
        ns,
        names[1],
        lambda _: sum(_status(get_job(cp, ns, n)).get("phase") not in (None, "Queued") for n in names) >= 2,
        what="two jobs past Queued",
        operator=op,
    )
    op.kill()
    op.start()

    for name in names:
        job = wait_phase(cp, ns, name, "Complete", "Failed", timeout=300, operator=op)
        assert _status(job)["phase"] == "Complete", _status(job)
    metrics = op.metrics()
    assert "sharpml_sfm_capacity 2.0" in metrics and "sharpml_sfm_nodes_ready 2.0" in metrics

    # Each job's pod ran exactly once, on the node it was pinned to.
    uid_of = {n: get_job(cp, ns, n)["metadata"]["uid"] for n in names}
    pods = {p["metadata"]["name"]: p for p in sfm_pods(cp, ns)}
    assert sorted(pods) == sorted(f"sfm-{u}" for u in uid_of.values())
    runs = {a.node_name: [(s, e) for pod, s, e in a.history if pod.startswith(f"{ns}/")] for a in agents}
    ran_on = {
        pod.split("/")[1]: a.node_name for a in agents for pod, _, _ in a.history if pod.startswith(f"{ns}/")
    }
    assert sorted(ran_on) == sorted(pods), runs  # every pod ran, once, on one node
    for name, pod in pods.items():
        terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert terms["nodeSelectorTerms"][0]["matchFields"][0]["values"] == [ran_on[name]]
        assert pod["spec"]["nodeName"] == ran_on[name]
    for name in names:
        started = [e["message"] for e in events_for(cp, ns, name) if e["reason"] == "SfmStarted"]
        assert started and f"on node {ran_on['sfm-' + uid_of[name]]}" in started[0], started

    # Both nodes ran pods; neither ever ran more than its one slot at once; together never more than two.
    assert all(runs.values()), runs
    for node, intervals in runs.items():
        for (_, end), (start, _) in itertools.pairwise(sorted(intervals)):
            assert start >= end, f"two SfM pods at once on {node}: {sorted(intervals)}"
    assert most_at_once([i for intervals in runs.values() for i in intervals]) <= 2, runs
