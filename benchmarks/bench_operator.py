"""Operator benchmark (not a test): SharpJob creation -> SfM pod latency, and admitting 500 SharpJobs.

    cd benchmarks && ../.venv/bin/python bench_operator.py [--latency-jobs 100] [--queue-jobs 500]

Runs against the development control plane (started if needed) and a real `sharpml-operator` process.
Latency: jobs are created one at a time with room in the queue (concurrency above the job count), and
the time from the create call returning to the pod's ADDED event on a pod watch is measured. Admission:
N jobs are created as fast as one client can, with concurrency 1, and the time until every one is
Queued (one Reconstructing) with its queue position written is measured, with the operator's memory.
No kubelet runs here: the pods stay Pending, which is all these figures need.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import kubernetes
from common import save

from sharpml.config import IntakeLimits
from sharpml.intake import Upload, ingest
from sharpml.layout import DataDir
from sharpml.synthetic import write_dataset

REPO = Path(__file__).resolve().parent.parent
RESULTS_LOGS = REPO / "benchmarks" / "out"
sys.path.insert(0, str(REPO))
from tests.conftest import CRD_FILE, _load_devcluster  # noqa: E402


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def make_jobs(root: Path, n: int) -> list[str]:
    """n job directories (copies of one ingested 5-photo set, hard-linked: the operator only reads them)."""
    photos = root / "photos"
    write_dataset(photos, 5, 320, 240, formats=("jpg",))
    data = DataDir(root / "data").ensure()
    first = ingest([Upload(p.name, p) for p in sorted(photos.rglob("*.jpg"))], data, IntakeLimits())
    dirs = [str(first.job.root.relative_to(data.root))]
    for _ in range(n - 1):
        dst = data.jobs / str(uuid.uuid4())
        shutil.copytree(first.job.root, dst, copy_function=os.link)
        dirs.append(str(dst.relative_to(data.root)))
    return dirs


def sharpjob(job_dir: str) -> dict:
    """A SharpJob for ``jobs/<id>``, named by that id (a job owns only the directory named after it)."""
    return {
        "apiVersion": "sharpml.com/v1alpha1",
        "kind": "SharpJob",
        "metadata": {"name": job_dir.split("/")[1]},
        "spec": {"source": {"upload": {"jobDir": job_dir, "imageCount": 5}}, "owner": "bench"},
    }


def start_operator(kubeconfig: Path, ns: str, data: Path, concurrency: int, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "SHARPML_DATA_DIR": str(data),
        "SHARPML_SFM_CONCURRENCY": str(concurrency),
        "SHARPML_METRICS_PORT": "0",
    }
    exe = Path(sys.executable).parent / "sharpml-operator"
    return subprocess.Popen(
        [str(exe), "--namespace", ns], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


def stop(proc: subprocess.Popen, log: Path | None = None) -> None:
    if log is not None:
        keep = RESULTS_LOGS / log.name
        keep.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, keep)
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def new_namespace(core: kubernetes.client.CoreV1Api, prefix: str) -> str:
    ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": ns, "labels": {"sharpml.com/benchmark": "true"}}})
    return ns


def wait_operator_ready(log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while "Initial authentication has finished" not in log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"operator did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)
    time.sleep(1.0)  # watch streams open


def bench_latency(api, kubeconfig: Path, tmp: Path, n: int) -> dict:
    core, crd = kubernetes.client.CoreV1Api(api), kubernetes.client.CustomObjectsApi(api)
    ns = new_namespace(core, "bench-latency")
    dirs = make_jobs(tmp / "latency", n)
    log = tmp / "operator-latency.log"
    op = start_operator(kubeconfig, ns, tmp / "latency" / "data", n + 10, log)
    seen: dict[str, float] = {}
    stop_watch = threading.Event()

    def watch_pods() -> None:
        w = kubernetes.watch.Watch()
        for ev in w.stream(core.list_namespaced_pod, ns, timeout_seconds=600):
            if ev["type"] == "ADDED":
                seen.setdefault(ev["object"].metadata.name, time.monotonic())
            if stop_watch.is_set():
                w.stop()

    try:
        wait_operator_ready(log)
        t = threading.Thread(target=watch_pods, daemon=True)
        t.start()
        time.sleep(1.0)
        latencies = []
        for d in dirs:
            obj = crd.create_namespaced_custom_object("sharpml.com", "v1alpha1", ns, "sharpjobs", sharpjob(d))
            t0 = time.monotonic()
            pod = f"sfm-{obj['metadata']['uid']}"
            deadline = t0 + 60
            while pod not in seen and time.monotonic() < deadline:
                time.sleep(0.002)
            latencies.append(seen[pod] - t0)
        stop_watch.set()
        latencies.sort()
        return {
            "jobs": n,
            "p50_s": round(statistics.median(latencies), 3),
            "p99_s": round(latencies[math.ceil(0.99 * len(latencies)) - 1], 3),  # nearest rank
            "max_s": round(latencies[-1], 3),
            "mean_s": round(statistics.fmean(latencies), 3),
        }
    finally:
        stop(op, log)
        core.delete_namespace(ns)


def bench_admission(api, kubeconfig: Path, tmp: Path, n: int) -> dict:
    core, crd = kubernetes.client.CoreV1Api(api), kubernetes.client.CustomObjectsApi(api)
    ns = new_namespace(core, "bench-queue")
    dirs = make_jobs(tmp / "queue", n)
    log = tmp / "operator-queue.log"
    op = start_operator(kubeconfig, ns, tmp / "queue" / "data", 1, log)
    try:
        wait_operator_ready(log)
        rss_idle = rss_mb(op.pid)[0]
        t0 = time.monotonic()
        for d in dirs:
            crd.create_namespaced_custom_object("sharpml.com", "v1alpha1", ns, "sharpjobs", sharpjob(d))
        created_s = time.monotonic() - t0
        queued_s = positions_s = None
        peak = rss_idle
        while time.monotonic() - t0 < 900:
            items = crd.list_namespaced_custom_object("sharpml.com", "v1alpha1", ns, "sharpjobs")["items"]
            st = [i.get("status", {}) for i in items]
            peak = max(peak, rss_mb(op.pid)[0])
            admitted = sum(s.get("phase") in ("Queued", "Reconstructing") for s in st)
            if queued_s is None and admitted == n:
                queued_s = time.monotonic() - t0
            positions = sorted(
                s["queuePosition"] for s in st if s.get("phase") == "Queued" and "queuePosition" in s
            )
            if queued_s is not None and positions == list(range(n - 1)):
                positions_s = time.monotonic() - t0
                break
            time.sleep(0.5)
        # Order check: positions follow creation order.
        items = crd.list_namespaced_custom_object("sharpml.com", "v1alpha1", ns, "sharpjobs")["items"]
        by_name = sorted((i["metadata"]["name"], i["status"].get("queuePosition", -1)) for i in items)
        in_order = [p for _, p in by_name] == [-1, *range(n - 1)]
        current, hwm = rss_mb(op.pid)
        return {
            "jobs": n,
            "create_calls_s": round(created_s, 2),
            "all_queued_s": round(queued_s, 2) if queued_s else None,
            "all_positions_written_s": round(positions_s, 2) if positions_s else None,
            "positions_in_creation_order": in_order,
            "operator_rss_idle_mb": round(rss_idle, 1),
            "operator_rss_after_mb": round(current, 1),
            "operator_rss_peak_mb": round(max(peak, hwm), 1),
        }
    finally:
        stop(op, log)
        core.delete_namespace(ns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency-jobs", type=int, default=100)
    parser.add_argument("--queue-jobs", type=int, default=500)
    args = parser.parse_args()
    dc = _load_devcluster()
    layout = dc.default_layout()
    started = dc.up(layout)
    subprocess.run(
        [str(layout.kubectl), "apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE)], check=True,
        env={**os.environ, "KUBECONFIG": str(layout.kubeconfig)}, capture_output=True,
    )  # fmt: skip
    api = kubernetes.config.new_client_from_config(config_file=str(layout.kubeconfig))
    try:
        with tempfile.TemporaryDirectory(prefix="sharpml-bench-op-") as tmp:
            latency = bench_latency(api, layout.kubeconfig, Path(tmp), args.latency_jobs)
            print("creation -> pod:", json.dumps(latency))
            admission = bench_admission(api, layout.kubeconfig, Path(tmp), args.queue_jobs)
            print("admission:", json.dumps(admission))
    finally:
        if started and not os.environ.get("SHARPML_KEEP_CLUSTER"):
            dc.down(layout, wipe=True)
    save("operator", {"creation_to_pod": latency, "admission": admission})


if __name__ == "__main__":
    main()
