"""The RunPod serverless worker: ``python -m sharpml.train.runpod_worker`` (the trainer image's command).

A job's ``input``::

    {
      "scene_url": "https://... presigned GET of a tar (optionally gzip) of the SfM scene:
                    images/ and sparse/0/ (what the SfM stage writes under colmap/scene)",
      "preview_url": "https://... presigned GET of preview.splat (optional: scored on the same views)",
      "upload": {"splat": "https://... presigned PUT", "ply": "...", "spz": "...", "result": "..."},
      "options": {"steps": 7000, "max_gaussians": 1000000, "max_image_size": 1600, "seed": 0},
      "claim": {"request_id": "...", "put": "https://... presigned PUT signed with If-None-Match: *",
                "get": "https://... presigned GET of the same object"}
    }

``claim`` makes a request run once. RunPod has no idempotency key: it may start a job twice, and the
operator submits a request again when it cannot know whether its first ``/run`` arrived. Before any
work the worker creates the claim object with a conditional write (``If-None-Match: *``, covered by
the URL's signature, so the holder can only create it); S3 lets exactly one writer succeed. A worker
that loses (412, or 409 for a concurrent write) does no work and returns
``{"duplicate": true, "request_id", "claimed_by"}``: the RunPod job id written in the claim, so the
operator can follow the run that does the work.

``upload.splat`` is required, ``ply``, ``spz`` and ``result`` are optional; ``options`` may name only
those four keys, bounded as the ``SHARPML_TRAIN_*`` settings are; what a request leaves out comes from those
settings in the worker's environment (the endpoint's), else their defaults. The handler downloads the
scene, trains (:func:`sharpml.train.trainer.train`), reports progress through
``runpod.serverless.progress_update`` (``{"stage", "fraction", "message"}``, at most every 2 s and at
every stage change), uploads the results with one PUT each, and returns the metrics record
(:class:`sharpml.contract.TrainResult`) with ``uploaded`` added. Anything wrong returns
``{"error": ...}``, which RunPod reports as a failed job.

Only ``https`` URLs are accepted (``http`` only when a test passes ``allow_http``); archive members
must be plain files and folders under ``images/`` or ``sparse/`` (no links, no absolute or ``..``
paths), and the download is capped at ``MAX_SCENE_BYTES``.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from sharpml.train.options import TrainOptions

#: Largest scene archive the worker downloads (100 photos of 12 MP as JPEG are ~0.5 GB).
MAX_SCENE_BYTES = 4 * 1024**3
MAX_PREVIEW_BYTES = 512 * 1024**2
HTTP_TIMEOUT_SECONDS = 60
PROGRESS_INTERVAL_SECONDS = 2.0
#: What a request may set; the rest (device, threads, holdout) is the worker's own business.
OPTION_KEYS = ("steps", "max_gaussians", "max_image_size", "seed")
UPLOAD_KEYS = ("splat", "ply", "spz", "result")
CLAIM_KEYS = ("request_id", "put", "get")
MAX_CLAIM_BYTES = 4096

ProgressSink = Callable[[dict[str, Any], Any], Any]


class InputError(ValueError):
    """The job's input is not one the worker accepts; the message says which field and why."""


def _url(value: Any, field: str, allow_http: bool) -> str:
    if not isinstance(value, str) or not value:
        raise InputError(f"{field}: must be a URL")
    parts = urlsplit(value)
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes or not parts.netloc:
        raise InputError(f"{field}: must be an {' or '.join(schemes)} URL")
    return value


def parse_claim(raw: Any, allow_http: bool) -> dict[str, str] | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or set(raw) != set(CLAIM_KEYS):
        raise InputError(f"claim: must be an object with exactly {', '.join(CLAIM_KEYS)}")
    request_id = raw["request_id"]
    if not isinstance(request_id, str) or not 0 < len(request_id) <= 128:
        raise InputError("claim.request_id: must be a string of 1-128 characters")
    return {
        "request_id": request_id,
        "put": _url(raw["put"], "claim.put", allow_http),
        "get": _url(raw["get"], "claim.get", allow_http),
    }


def parse_input(
    job_input: Any, *, allow_http: bool = False
) -> tuple[str, str | None, dict[str, str], TrainOptions]:
    """Validate a job's input: (scene URL, preview URL or None, upload URLs by kind, options)."""
    if not isinstance(job_input, Mapping):
        raise InputError("input: must be a JSON object")
    unknown = set(job_input) - {"scene_url", "preview_url", "upload", "options", "claim"}
    if unknown:
        raise InputError(f"input: unknown field(s) {', '.join(sorted(unknown))}")
    scene_url = _url(job_input.get("scene_url"), "scene_url", allow_http)
    preview = job_input.get("preview_url")
    preview_url = None if preview is None else _url(preview, "preview_url", allow_http)
    upload = job_input.get("upload")
    if not isinstance(upload, Mapping) or "splat" not in upload:
        raise InputError("upload: must be an object with at least a 'splat' URL")
    bad = set(upload) - set(UPLOAD_KEYS)
    if bad:
        raise InputError(
            f"upload: unknown kind(s) {', '.join(sorted(bad))}; accepted: {', '.join(UPLOAD_KEYS)}"
        )
    uploads = {kind: _url(url, f"upload.{kind}", allow_http) for kind, url in upload.items()}
    raw = job_input.get("options", {})
    if not isinstance(raw, Mapping):
        raise InputError("options: must be an object")
    bad = set(raw) - set(OPTION_KEYS)
    if bad:
        raise InputError(
            f"options: unknown option(s) {', '.join(sorted(bad))}; accepted: {', '.join(OPTION_KEYS)}"
        )
    for key, value in raw.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise InputError(f"options.{key}: must be a whole number")
    try:
        options = TrainOptions.from_env(
            None, **dict(raw)
        )  # SHARPML_TRAIN_* of the endpoint, then the request
    except ValueError as exc:
        raise InputError(f"options.{exc}") from None
    return scene_url, preview_url, uploads, options


def _download(url: str, dest: Path, limit: int) -> int:
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_SECONDS) as response, dest.open("wb") as out:
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise InputError(f"{dest.name}: {declared} bytes exceeds the {limit}-byte limit")
        size = 0
        while chunk := response.read(1024 * 1024):
            size += len(chunk)
            if size > limit:
                raise InputError(f"{dest.name}: larger than the {limit}-byte limit")
            out.write(chunk)
    return size


def claim(claim: dict[str, str], job_id: str) -> str | None:
    """Create the claim object; None when this run won it, else the RunPod job id that holds it."""
    body = json.dumps(
        {"request_id": claim["request_id"], "runpod_job_id": job_id, "claimed_at": time.time()}
    ).encode()
    request = urllib.request.Request(
        claim["put"],
        data=body,
        method="PUT",
        headers={"If-None-Match": "*", "Content-Type": "application/json", "Content-Length": str(len(body))},
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS):
            return None
    except urllib.error.HTTPError as exc:
        if exc.code not in (409, 412):
            raise
    with urllib.request.urlopen(claim["get"], timeout=HTTP_TIMEOUT_SECONDS) as response:
        holder = json.loads(response.read(MAX_CLAIM_BYTES))
    held_by = holder.get("runpod_job_id") if isinstance(holder, dict) else None
    return held_by if isinstance(held_by, str) else "unknown"


def _upload(url: str, path: Path) -> None:
    size = path.stat().st_size
    with path.open("rb") as body:
        request = urllib.request.Request(
            url,
            data=body,
            method="PUT",
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS) as response:
            if not 200 <= response.status < 300:
                raise OSError(f"upload of {path.name} answered HTTP {response.status}")


def extract_scene(archive: Path, dest: Path) -> Path:
    """Unpack a scene archive safely; returns the scene folder (the one holding ``sparse/0``)."""
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                path = PurePosixPath(member.name)
                if not (member.isfile() or member.isdir()):
                    raise InputError(f"scene archive: {member.name} is not a plain file or folder")
                if path.is_absolute() or ".." in path.parts:
                    raise InputError(f"scene archive: {member.name} points outside the scene")
                parts = [p for p in path.parts if p != "."]
                if parts and parts[0] not in ("images", "sparse"):
                    raise InputError(f"scene archive: unexpected {member.name} (only images/ and sparse/)")
            tar.extractall(dest, members=members, filter="data")
    except tarfile.TarError as exc:
        raise InputError(f"scene archive: not a readable tar file ({exc})") from None
    return dest


class ThrottledProgress:
    """A :class:`sharpml.progress.ProgressHook` that forwards to RunPod at most every ``interval``
    seconds, and at every stage change and completion."""

    def __init__(self, job: dict[str, Any], sink: ProgressSink, interval: float = PROGRESS_INTERVAL_SECONDS):
        self.job, self.sink, self.interval = job, sink, interval
        self._stage, self._last = "", 0.0

    def __call__(self, stage: str, fraction: float, message: str = "") -> None:
        now = time.monotonic()
        if stage == self._stage and fraction < 1.0 and now - self._last < self.interval:
            return
        self._stage, self._last = stage, now
        self.sink(self.job, {"stage": stage, "fraction": round(fraction, 4), "message": message})


def handle(
    job: dict[str, Any], *, progress_sink: ProgressSink | None = None, allow_http: bool = False
) -> dict:
    """Run one RunPod job (see the module's docstring). Never raises for a bad job: returns
    ``{"error": ...}``."""
    try:
        scene_url, preview_url, uploads, options = parse_input(job.get("input"), allow_http=allow_http)
        claim_urls = parse_claim(job["input"].get("claim"), allow_http)
    except InputError as exc:
        return {"error": f"invalid input: {exc}"}
    if claim_urls is not None:
        try:
            held_by = claim(claim_urls, str(job.get("id", "")))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return {"error": f"could not claim request {claim_urls['request_id']}: {exc}"}
        if held_by is not None:
            return {"duplicate": True, "request_id": claim_urls["request_id"], "claimed_by": held_by}
    if progress_sink is None:
        import runpod

        progress_sink = runpod.serverless.progress_update
    progress = ThrottledProgress(job, progress_sink)

    # torch is imported only for a valid job.
    from sharpml.train.scene import SceneError
    from sharpml.train.trainer import PLY_NAME, RESULT_NAME, SPLAT_NAME, SPZ_NAME, TrainingError, train

    work = Path(tempfile.mkdtemp(prefix="sharpml-train-"))
    try:
        progress("download", 0.0, "downloading the scene")
        size = _download(scene_url, work / "scene.tar", MAX_SCENE_BYTES)
        scene = extract_scene(work / "scene.tar", work / "scene")
        (work / "scene.tar").unlink()
        preview = None
        if preview_url is not None:
            preview = work / "preview.splat"
            _download(preview_url, preview, MAX_PREVIEW_BYTES)
        progress("download", 1.0, f"scene of {size / 1024**2:.1f} MB")
        result = train(scene, work / "out", options, preview_splat=preview, progress=progress)
        files = {"splat": SPLAT_NAME, "ply": PLY_NAME, "spz": SPZ_NAME, "result": RESULT_NAME}
        progress("upload", 0.0, f"uploading {', '.join(sorted(uploads))}")
        for kind in UPLOAD_KEYS:
            if kind in uploads:
                _upload(uploads[kind], work / "out" / files[kind])
        progress("upload", 1.0, "uploaded")
        return {**result.to_json(), "uploaded": sorted(uploads)}
    except (InputError, SceneError, TrainingError) as exc:
        return {"error": str(exc)}
    except urllib.error.HTTPError as exc:
        return {"error": f"HTTP {exc.code} from {urlsplit(exc.url).netloc}: {exc.reason}"}
    except (urllib.error.URLError, OSError) as exc:
        return {"error": f"transfer failed: {exc}"}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def handler(job: dict[str, Any]) -> dict:
    """The function given to ``runpod.serverless.start``."""
    return handle(job)


def main() -> None:
    import runpod

    runpod.serverless.start({"handler": handler})


if __name__ == "__main__":
    main()
