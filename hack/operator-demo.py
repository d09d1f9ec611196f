#!/usr/bin/env python3
"""The operator end to end on the development control plane, with the test node agent as the SfM node.

    SHARPML_CLUSTER_PORT_BASE=16400 .venv/bin/python hack/operator-demo.py [--photos 10] [--keep]

Starts (or reuses) the control plane, applies the CRD, registers the SfM node and runs the node agent
for it (podman, the project's SfM image), makes a namespace `sharpml-demo` with a local data volume,
ingests synthetic photos as the API would, starts `sharpml-operator`, creates a SharpJob and follows
it through Reconstructed to Complete. Prints `kubectl describe sj` at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sharpml.config import IntakeLimits  # noqa: E402
from sharpml.intake import Upload, ingest  # noqa: E402
from sharpml.layout import DataDir  # noqa: E402
from sharpml.synthetic import write_dataset  # noqa: E402
from tests.conftest import (  # noqa: E402
    CRD_FILE,
    SFM_NODE_LABELS,
    SFM_NODE_NAME,
    SFM_TAINT,
    ControlPlane,
    _ensure_node,
    _load_devcluster,
)
from tests.operator.node_agent import NodeAgent  # noqa: E402

NS = "sharpml-demo"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=10)
    parser.add_argument("--keep", action="store_true", help="leave the namespace and its files")
    args = parser.parse_args()
    dc = _load_devcluster()
    layout = dc.default_layout()
    dc.up(layout)
    cp = ControlPlane(layout.server, layout.kubeconfig, layout.kubectl)
    cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    cp.kubectl("wait", "--for=condition=Established", "crd/sharpjobs.sharpml.com")
    _ensure_node(cp, SFM_NODE_NAME, SFM_NODE_LABELS, [SFM_TAINT])
    image = subprocess.run(
        ["bash", str(REPO / "hack" / "build-images.sh")], check=True, capture_output=True, text=True
    ).stdout.split()[-1]

    work = Path(tempfile.mkdtemp(prefix="sharpml-demo-"))
    data = DataDir(work / "data").ensure()
    cp.kubectl("delete", "namespace", NS, "--ignore-not-found", "--timeout=120s", check=False)
    cp.kubectl("delete", "pv", f"{NS}-data", "--ignore-not-found", check=False)
    cp.kubectl("create", "namespace", NS)
    cp.kubectl("label", "namespace", NS, "pod-security.kubernetes.io/enforce=restricted")
    volume = [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{NS}-data"},
            "spec": {
                "capacity": {"storage": "10Gi"},
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "persistentVolumeReclaimPolicy": "Retain",
                "local": {"path": str(data.root)},
                "claimRef": {"namespace": NS, "name": "sharpml-data"},
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {
                                        "key": "kubernetes.io/hostname",
                                        "operator": "In",
                                        "values": [SFM_NODE_NAME],
                                    }
                                ]
                            }
                        ]
                    }
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "sharpml-data", "namespace": NS},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "volumeName": f"{NS}-data",
                "resources": {"requests": {"storage": "10Gi"}},
            },
        },
    ]
    for m in volume:
        cp.kubectl("create", "-f", "-", input=json.dumps(m))

    photos = work / "photos"
    write_dataset(photos, args.photos, 640, 480, formats=("jpg",))
    job = ingest([Upload(p.name, p) for p in sorted(photos.rglob("*.jpg"))], data, IntakeLimits()).job
    job.root.rename(data.jobs / "demo")  # a SharpJob owns only jobs/<its name>
    job_dir = "jobs/demo"
    print(f"job directory: {job.root}")

    agent = NodeAgent(layout.kubeconfig, SFM_NODE_NAME, work / "node-agent").start()
    env = {
        **cp.env(),
        "SHARPML_DATA_DIR": str(data.root),
        "SHARPML_SFM_IMAGE": image,
        "SHARPML_SFM_IMAGE_PULL_POLICY": "Never",
        "SHARPML_SFM_MEMORY_LIMIT": "2Gi",
        "SHARPML_METRICS_PORT": "0",
    }
    operator = subprocess.Popen(
        [str(Path(sys.executable).parent / "sharpml-operator"), "--namespace", NS],
        env=env,
        start_new_session=True,
    )
    try:
        manifest = {
            "apiVersion": "sharpml.com/v1alpha1",
            "kind": "SharpJob",
            "metadata": {"name": "demo"},
            "spec": {
                "owner": "acct-demo",
                "source": {"upload": {"jobDir": job_dir, "imageCount": args.photos}},
            },
        }
        cp.kubectl("create", "-n", NS, "-f", "-", input=json.dumps(manifest))
        last = None
        for _ in range(600):
            st = cp.get_json("sj", "demo", "-n", NS).get("status", {})
            line = (st.get("phase"), st.get("progress", {}).get("percent"), st.get("message"))
            if line != last:
                print(f"  {line[0]!s:15} {line[1]!s:>3}%  {line[2]}")
                last = line
            if st.get("phase") in ("Complete", "Failed"):
                break
            time.sleep(0.5)
        print(cp.kubectl("describe", "sj", "demo", "-n", NS).stdout)
        return 0 if last and last[0] == "Complete" else 1
    finally:
        os.killpg(operator.pid, signal.SIGTERM)
        operator.wait(timeout=30)
        if not args.keep:
            cp.kubectl(
                "patch",
                "sj",
                "demo",
                "-n",
                NS,
                "--type=merge",
                "-p",
                '{"metadata":{"finalizers":null}}',
                check=False,
            )
            cp.kubectl("delete", "namespace", NS, "--wait=false", check=False)
            cp.kubectl("delete", "pv", f"{NS}-data", "--wait=false", check=False)
        agent.stop()


if __name__ == "__main__":
    sys.exit(main())
