"""A RunPod worker that answers like the trainer but uploads results a trainer never would: the
operator must read them as untrusted. ``SHARPML_HOSTILE=truncated`` uploads a ``.splat`` that is not
whole records; ``oversized`` one larger than the job's gaussian cap allows. Run under the real SDK
loop by tests/operator/test_training.py."""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any

import runpod

from sharpml.contract import TrainResult
from sharpml.train.runpod_worker import claim, parse_claim


def _put(url: str, body: bytes) -> None:
    request = urllib.request.Request(url, data=body, method="PUT", headers={"Content-Length": str(len(body))})
    with urllib.request.urlopen(request, timeout=30):
        pass


def handler(job: dict[str, Any]) -> dict[str, Any]:
    job_input = job["input"]
    claim_urls = parse_claim(job_input["claim"], allow_http=False)
    assert claim_urls is not None
    if claim(claim_urls, job["id"]) is not None:
        return {"duplicate": True}
    cap = job_input["options"]["max_gaussians"]
    gaussians = cap + 1 if os.environ["SHARPML_HOSTILE"] == "oversized" else 10
    splat = bytes(32 * gaussians) + (b"x" if os.environ["SHARPML_HOSTILE"] == "truncated" else b"")
    record = TrainResult(ok=True, reason=None, steps=1, gaussians=gaussians)
    _put(job_input["upload"]["splat"], splat)
    _put(job_input["upload"]["ply"], b"ply\nformat binary_little_endian 1.0\nend_header\n")
    _put(job_input["upload"]["spz"], b"\x1f\x8b not checked before delivery")
    _put(job_input["upload"]["result"], json.dumps(record.to_json()).encode())
    return record.to_json()


if __name__ == "__main__":
    runpod.serverless.start({"handler": handler})
