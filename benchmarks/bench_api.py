"""Upload throughput and memory of the REST API: concurrent 30-photo uploads of 12 MP phone JPEGs
through a real ``sharpml-api`` process (uvicorn) into the development control plane, against the
intake floor (a bare Pillow decode + encode of the same photos, one core).

Reports images/s end to end (multipart streaming, intake, SharpJob creation) and the API process's
peak RSS, sampled from /proc while the uploads run.

Run: SHARPML_CLUSTER_PORT_BASE=... .venv/bin/python benchmarks/bench_api.py [--concurrency 1 4] [--large]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import httpx
import jwt
import numpy as np
from bench_intake import floor_rate, make_photos
from common import save

from sharpml.config import MB
from sharpml.intake import Upload, ingest
from sharpml.layout import DataDir

REPO = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
ISSUER = "https://auth.bench/"
PHOTOS_PER_UPLOAD = 30


def _devcluster():
    spec = importlib.util.spec_from_file_location("devcluster", REPO / "hack" / "devcluster.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["devcluster"] = mod
    spec.loader.exec_module(mod)
    return mod


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, _rss_mb(self.pid))
            time.sleep(0.05)


def _token(account: str) -> str:
    claims = {"sub": account, "iss": ISSUER, "aud": "sharpml-api", "exp": int(time.time()) + 3600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def _upload(client: httpx.AsyncClient, url: str, photos: list[Path], n: int, account: str) -> float:
    with ExitStack() as stack:
        files = [
            (
                "files",
                (f"IMG_{i:04d}.jpg", stack.enter_context(photos[i % len(photos)].open("rb")), "image/jpeg"),
            )
            for i in range(n)
        ]
        t0 = time.perf_counter()
        resp = await client.post(
            f"{url}/v1/jobs", files=files, headers={"Authorization": f"Bearer {_token(account)}"}
        )
        elapsed = time.perf_counter() - t0
    if resp.status_code != 201:
        raise RuntimeError(f"upload failed: {resp.status_code} {resp.text[:500]}")
    return elapsed


async def _round(url: str, photos: list[Path], concurrency: int, n: int) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=600) as client:
        t0 = time.perf_counter()
        each = await asyncio.gather(
            *(_upload(client, url, photos, n, f"bench-{i}") for i in range(concurrency))
        )
        wall = time.perf_counter() - t0
    return {
        "concurrent_uploads": concurrency,
        "photos_per_upload": n,
        "wall_s": round(wall, 1),
        "images_per_s": round(concurrency * n / wall, 2),
        "upload_latency_s_mean": round(float(np.mean(each)), 1),
        "upload_latency_s_max": round(max(each), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--distinct-photos", type=int, default=10)
    parser.add_argument("--large", action="store_true", help="also one ~500 MB upload (noisier 5 MB photos)")
    args = parser.parse_args()

    dc = _devcluster()
    layout = dc.default_layout()
    started = dc.up(layout)
    env_k = {**os.environ, "KUBECONFIG": str(layout.kubeconfig)}

    def kubectl(*args: str, check: bool = True) -> None:
        subprocess.run([str(layout.kubectl), *args], env=env_k, check=check, capture_output=True)

    kubectl("apply", "--server-side", "-f", str(REPO / "crds" / "sharpjobs.sharpml.com.yaml"))
    kubectl("wait", "--for=condition=Established", "crd/sharpjobs.sharpml.com")
    namespace = f"bench-api-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    results: dict[str, object] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            photos = make_photos(Path(tmp) / "photos", args.distinct_photos, noise=6.0)
            sizes = [p.stat().st_size for p in photos]
            results["photo"] = {
                "width": 4032,
                "height": 3024,
                "mean_mb": round(float(np.mean(sizes)) / MB, 2),
            }
            floor = floor_rate(photos)
            results["floor_pillow_decode_encode_per_s_1_core"] = round(floor, 2)
            direct = _intake_rate(photos, PHOTOS_PER_UPLOAD, Path(tmp) / "direct")
            results["core_intake_2_workers_per_s"] = round(direct, 2)
            print("floor", floor, "core intake", direct)

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            env = {
                **os.environ,
                "SHARPML_DATA_DIR": str(Path(tmp) / "data"),
                "SHARPML_NAMESPACE": namespace,
                "SHARPML_KUBECONFIG": str(layout.kubeconfig),
                "SHARPML_JWT_SECRET": SECRET,
                "SHARPML_JWT_ISSUER": ISSUER,
                "SHARPML_RATE_LIMIT_IP_PER_HOUR": "0",
                "SHARPML_RATE_LIMIT_ACCOUNT_PER_DAY": "0",
                "SHARPML_API_PORT": str(port),
                "SHARPML_LOG_LEVEL": "warning",
            }
            exe = Path(sys.executable).parent / "sharpml-api"
            api = subprocess.Popen([str(exe)], env=env)
            url = f"http://127.0.0.1:{port}"
            try:
                for _ in range(300):
                    try:
                        if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.1)
                results["api_settings"] = {"intake_concurrency": 2, "intake_workers_per_upload": 2}
                results["load_average_before_uploads"] = os.getloadavg()
                results["idle_rss_mb"] = round(_rss_mb(api.pid), 1)
                rounds = []
                sampler = RssSampler(api.pid)
                sampler.start()
                for c in args.concurrency:
                    r = _round_with_rss(url, photos, c, PHOTOS_PER_UPLOAD, api.pid)
                    r["images_per_s_vs_floor"] = round(r["images_per_s"] / floor, 3)
                    r["images_per_s_vs_core_intake"] = round(r["images_per_s"] / direct, 3)
                    print(r)
                    rounds.append(r)
                if args.large:
                    big = make_photos(Path(tmp) / "big", args.distinct_photos, noise=12.0)
                    big_sizes = [p.stat().st_size for p in big]
                    count = min(100, int(0.98 * 500 * MB / max(big_sizes)))
                    r = _round_with_rss(url, big, 1, count, api.pid)
                    r["set_mb"] = round(sum(big_sizes[i % len(big)] for i in range(count)) / MB, 1)
                    print(r)
                    results["large_upload"] = r
                sampler.stop.set()
                results["rounds"] = rounds
                results["peak_rss_mb"] = round(_rss_mb(api.pid, "VmHWM"), 1)
            finally:
                api.terminate()
                api.wait(10)
    finally:
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        if started:
            dc.down(layout, wipe=True)
    print(json.dumps(results, indent=1))
    save("api", results)


def _intake_rate(photos: list[Path], n: int, root: Path) -> float:
    """The core intake alone on the same set, with the API's default two workers (no HTTP, no cluster)."""
    uploads = [Upload(f"IMG_{i:04d}.jpg", photos[i % len(photos)]) for i in range(n)]
    t0 = time.perf_counter()
    ingest(uploads, DataDir(root), workers=2)
    return n / (time.perf_counter() - t0)


def _round_with_rss(url: str, photos: list[Path], concurrency: int, n: int, pid: int) -> dict[str, float]:
    sampler = RssSampler(pid)
    sampler.start()
    result = asyncio.run(_round(url, photos, concurrency, n))
    sampler.stop.set()
    sampler.join()
    result["peak_rss_mb"] = round(sampler.peak, 1)
    return result


if __name__ == "__main__":
    main()
