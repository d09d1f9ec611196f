"""Shared plumbing for benchmarks: where results go and what context they are recorded with."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import pycolmap

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, object]:
    """The context a figure needs to be read: cores, memory, versions, load."""
    with open("/proc/meminfo") as fh:
        mem_kb = int(fh.readline().split()[1])
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "pycolmap": pycolmap.__version__,
        "load_average_at_start": os.getloadavg(),
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process image so far (VmHWM).

    Not ``getrusage``: its ru_maxrss survives fork and exec, so a child started by a big parent
    reports the parent's peak.
    """
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def save(name: str, results: object) -> Path:
    """Write ``benchmarks/results/{name}.json`` with the command line and machine context."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    record = {
        "benchmark": name,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "results": results,
    }
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"results -> {path}")
    return path


def pose_error(job: object, truth: Path | None, registered: int) -> dict[str, float]:
    """The pose-error columns of an SfM row against a rendered set's true cameras (none without them)."""
    if truth is None or not Path(truth).is_file() or registered < 3:
        return {}
    from sharpml.evaluation import evaluate_job

    acc = evaluate_job(job, truth)  # type: ignore[arg-type]
    return {
        "centre_error_mean_pct": round(acc.mean_error * 100, 3),
        "rotation_error_deg": round(acc.mean_rotation_error_deg, 3),
    }
