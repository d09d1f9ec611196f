"""The SharpJob spec as code: its defaults (the CRD's ``default:`` values come from here, checked by a
test) and a typed reading of a resource's spec."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sharpml.settings import REGISTRY

MATCHERS = ("auto", "exhaustive", "sequential", "retrieval")
MAPPERS = ("auto", "incremental", "global")
#: ``spec.training.backend``: a rented GPU through RunPod serverless, a training pod in the cluster, or
#: no training (the preview splat is the result). Omitted: the operator's SHARPML_TRAINING_BACKEND.
TRAINING_BACKENDS = ("runpod", "cluster", "none")
STRATEGIES = ("mcmc",)

#: ``spec.processing`` defaults. ``maxImageSize`` 1600 is the measured choice: the same pose accuracy as
#: 3200 on 12 MP photos, 1.6x faster and with a third of the memory (benchmarks/bench_sfm.py).
PROCESSING_DEFAULTS: dict[str, Any] = {
    "matcher": "auto",
    "mapper": "auto",
    "maxImageSize": 1600,
}
#: ``spec.training`` defaults: the trainer's own (the SHARPML_TRAIN_* settings), so a SharpJob that says
#: nothing trains exactly as ``sharpml process --train`` does. ``backend`` has no default here.
TRAINING_DEFAULTS: dict[str, Any] = {
    "steps": REGISTRY["SHARPML_TRAIN_STEPS"].default,
    "strategy": "mcmc",
    "maxGaussians": REGISTRY["SHARPML_TRAIN_MAX_GAUSSIANS"].default,
    "maxImageSize": REGISTRY["SHARPML_TRAIN_MAX_IMAGE_SIZE"].default,
}
#: ``spec.ttlSecondsAfterFinished``: a finished job and its files are kept one day.
TTL_SECONDS_AFTER_FINISHED = 86400


@dataclass(frozen=True)
class JobSpec:
    """What a SharpJob asks for, with the CRD's defaults filled in (the apiserver applies them too,
    but an object read from an older CRD version, or built by hand in a test, may lack them)."""

    owner: str
    job_dir: str | None  # spec.source.upload.jobDir; None for other sources
    image_count: int | None
    matcher: str
    mapper: str
    max_image_size: int
    training_backend: str | None  # None: the operator's default
    training_steps: int
    training_strategy: str
    max_gaussians: int
    train_image_size: int  # spec.training.maxImageSize
    cancel: bool
    ttl_seconds_after_finished: int
    webhook_url: str | None
    email: str | None

    @classmethod
    def read(cls, spec: Mapping[str, Any]) -> JobSpec:
        upload = (spec.get("source") or {}).get("upload") or {}
        proc = {**PROCESSING_DEFAULTS, **(spec.get("processing") or {})}
        training = {**TRAINING_DEFAULTS, **(spec.get("training") or {})}
        notify = spec.get("notify") or {}
        return cls(
            owner=str(spec.get("owner", "")),
            job_dir=upload.get("jobDir"),
            image_count=upload.get("imageCount"),
            matcher=str(proc["matcher"]),
            mapper=str(proc["mapper"]),
            max_image_size=int(proc["maxImageSize"]),
            training_backend=training.get("backend"),
            training_steps=int(training["steps"]),
            training_strategy=str(training["strategy"]),
            max_gaussians=int(training["maxGaussians"]),
            train_image_size=int(training["maxImageSize"]),
            cancel=bool(spec.get("cancel", False)),
            ttl_seconds_after_finished=int(spec.get("ttlSecondsAfterFinished", TTL_SECONDS_AFTER_FINISHED)),
            webhook_url=notify.get("webhookURL"),
            email=notify.get("email"),
        )
