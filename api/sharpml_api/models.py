"""Request options and response bodies, and how they map to and from the SharpJob resource.

The processing options mirror the CRD's ``spec.processing``/``notify``/``ttlSecondsAfterFinished``
bounds (tests/api/test_config.py holds them equal to crds/sharpjobs.sharpml.com.yaml), so a bad
option is refused in milliseconds, before intake spends CPU on the photos; the apiserver's own
validation of the CRD remains the final word.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, ValidationError, field_validator

from sharpml import contract, links
from sharpml.contract import TERMINAL, Phase
from sharpml.contract.delivery import ARTIFACTS, VIEW_SCOPE
from sharpml.links import LinkSettings
from sharpml_api.problems import ApiProblem, ProblemItem, field_problem

_TERMINAL_NAMES = [p.value for p in Phase if p in TERMINAL]
_TERMINAL_TEXT = f"{', '.join(_TERMINAL_NAMES[:-1])} or {_TERMINAL_NAMES[-1]}"
#: Matched with fullmatch: ``$`` would also match before a trailing newline.
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


class JobOptions(BaseModel):
    """Form fields of an upload besides the photos. Omitted fields take the CRD's defaults."""

    model_config = {"extra": "forbid"}

    matcher: Literal["exhaustive", "sequential", "retrieval", "auto"] | None = Field(
        None,
        description="Feature matching: exhaustive, sequential (capture order), retrieval (similar photos) "
        "or auto.",
    )
    mapper: Literal["incremental", "global", "auto"] | None = Field(
        None, description="Sparse reconstruction: incremental, global or auto."
    )
    max_image_size: int | None = Field(
        None, ge=640, le=8192, description="Longest side, in pixels, used for feature extraction."
    )
    training: Literal["runpod", "cluster", "none"] | None = Field(
        None,
        description="Where the splat is trained: runpod (a rented GPU, the product path), cluster (a "
        "training pod of this deployment) or none (the preview splat is the result). Omitted: the "
        "deployment's default.",
    )
    training_steps: int | None = Field(None, ge=1, le=100000, description="Training steps (default 7000).")
    max_gaussians: int | None = Field(
        None, ge=100, le=10_000_000, description="Cap on the gaussians of the trained splat."
    )
    train_image_size: int | None = Field(
        None, ge=32, le=8000, description="Longest photo side used for training (default 1600)."
    )
    webhook_url: str | None = Field(
        None, max_length=2048, description="http(s) URL that receives a POST when the job finishes."
    )
    email: str | None = Field(None, max_length=254, description="Address told when the job finishes.")
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, le=2592000, description="Seconds the job is kept after it finishes (default one day)."
    )

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be an absolute http:// or https:// URL")
        return value

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is not None and not _EMAIL.fullmatch(value):
            raise ValueError("must be an e-mail address")
        return value

    @classmethod
    def from_form(cls, fields: dict[str, str]) -> JobOptions:
        """Options from form fields: unknown fields are 400, bad values 422, each naming the field."""
        known = set(cls.model_fields)
        for name in fields:
            if name not in known:
                raise field_problem(
                    400,
                    "malformed-upload",
                    "Malformed upload",
                    name,
                    "unknown-field",
                    f"unknown form field {name!r}; known: files, {', '.join(sorted(known))}",
                )
        try:
            return cls.model_validate({k: v for k, v in fields.items() if v != ""})
        except ValidationError as exc:
            items = [
                ProblemItem(
                    field=".".join(str(p) for p in err["loc"]) or None,
                    rule=err["type"],
                    message=f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}",
                )
                for err in exc.errors()
            ]
            raise ApiProblem(
                422, "invalid-options", "Invalid options", "; ".join(i.message for i in items), items
            ) from None

    def spec(self) -> dict[str, Any]:
        """The SharpJob spec fields these options set (only those given)."""
        processing = {
            "matcher": self.matcher,
            "mapper": self.mapper,
            "maxImageSize": self.max_image_size,
        }
        training = {
            "backend": self.training,
            "steps": self.training_steps,
            "maxGaussians": self.max_gaussians,
            "maxImageSize": self.train_image_size,
        }
        notify = {"webhookURL": self.webhook_url, "email": self.email}
        spec: dict[str, Any] = {
            "processing": {k: v for k, v in processing.items() if v is not None},
            "training": {k: v for k, v in training.items() if v is not None},
        }
        if any(v is not None for v in notify.values()):
            spec["notify"] = {k: v for k, v in notify.items() if v is not None}
        if self.ttl_seconds_after_finished is not None:
            spec["ttlSecondsAfterFinished"] = self.ttl_seconds_after_finished
        return spec


class ArtifactLink(BaseModel):
    """One delivered format behind a signed download link."""

    url: str = Field(description="Signed download URL (works without other credentials until expires_at).")
    bytes: int | None = Field(None, description="Size of the file.")
    sha256: str | None = Field(None, description="SHA-256 of the file (hex); also its ETag.")
    media_type: str = Field(description="The Content-Type it is served with.")


class Links(BaseModel):
    """Where the job can be read, and, when the server has link keys (SHARPML_LINK_KEYS), signed links:
    a share link of the viewer page and, once Complete, one download link per format. Signed afresh on
    every answer; absent (null) when the server has no link keys."""

    status: str = Field(description="URL of this job's status.")
    events: str = Field(description="URL of this job's server-sent events.")
    view: str | None = Field(
        None,
        description="Signed share link of the viewer page (live progress, then the splat): whoever holds it "
        "may read this job's status and events until expires_at, with no account.",
    )
    artifacts: dict[str, ArtifactLink] | None = Field(
        None, description="Once Complete: signed download links by format (splat, ply, spz)."
    )
    expires_at: str | None = Field(
        None, description="When the signed links stop working (RFC 3339); never after the artifacts' expiry."
    )

    @classmethod
    def of(cls, base_url: str, job_id: str) -> Links:
        return cls(status=f"{base_url}/v1/jobs/{job_id}", events=f"{base_url}/v1/jobs/{job_id}/events")

    @classmethod
    def for_job(
        cls, base_url: str, obj: dict[str, Any], keys: LinkSettings, not_after: int | None = None
    ) -> Links:
        """The links of job ``obj``, signed now; none outlives ``not_after`` (the expiry of the link the
        caller came with: a share link is never extended) nor the artifacts' ``expiresAt``."""
        job_id = obj["metadata"]["name"]
        plain = cls.of(base_url, job_id)
        if not keys.enabled:
            return plain
        status = contract.JobStatus.of(obj)
        limits = [t for t in (not_after, epoch_of(status.outputs.get("expiresAt"))) if t is not None]
        exp = keys.expiry(not_after=min(limits) if limits else None)
        if exp <= time.time():
            return plain
        artifacts = None
        if status.phase == Phase.COMPLETE:
            artifacts = {
                entry["format"]: ArtifactLink(
                    url=links.url(base_url, job_id, ARTIFACTS[entry["format"]].filename, keys.keys, exp),
                    bytes=entry.get("bytes"),
                    sha256=entry.get("sha256"),
                    media_type=ARTIFACTS[entry["format"]].media_type,
                )
                for entry in status.outputs.get("artifacts") or []
                if isinstance(entry, dict) and entry.get("format") in ARTIFACTS
            }
        return plain.model_copy(
            update={
                "view": links.url(base_url, job_id, VIEW_SCOPE, keys.keys, exp),
                "artifacts": artifacts,
                "expires_at": _rfc3339(exp),
            }
        )


def epoch_of(value: Any) -> int | None:
    """Unix seconds of an RFC 3339 time from the status (None when absent or unreadable)."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


def _rfc3339(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Progress(BaseModel):
    percent: int = Field(0, description="Overall progress, 0-100.")
    stage: str | None = Field(None, description="What is running now.")


class Processing(BaseModel):
    matcher: str | None = None
    mapper: str | None = None
    max_image_size: int | None = None


class Training(BaseModel):
    """What training was asked for and, once it ran, what it cost and achieved."""

    backend: str | None = Field(None, description="runpod, cluster or none (null: the deployment's default).")
    steps: int
    strategy: str
    max_gaussians: int
    max_image_size: int = Field(description="Longest photo side used for training.")
    gpu_seconds: float | None = Field(None, description="GPU time billed, in seconds.")
    cost_usd: str | None = Field(None, description="Training cost in US dollars (decimal string).")
    psnr: float | None = Field(None, description="Held-out PSNR of the trained splat, dB.")
    preview_psnr: float | None = Field(None, description="Held-out PSNR of the untrained preview, dB.")
    gaussians: int | None = None


class SfmSummary(BaseModel):
    registered_images: int | None = None
    total_images: int | None = None
    points: int | None = None
    mean_reprojection_error: float | None = None


class Delivery(BaseModel):
    """What a Complete job delivered (the download links are in ``links.artifacts``)."""

    source: str | None = Field(None, description="trained, or preview (the SfM preview splat).")
    gaussians: int | None = None
    delivered_at: str | None = Field(None, description="When it was delivered (RFC 3339).")
    expires_at: str | None = Field(None, description="When the artifacts are deleted (RFC 3339).")


class JobStatus(BaseModel):
    """A job as its owner sees it."""

    id: str
    phase: Phase
    finished: bool = Field(description=f"True once the phase is {_TERMINAL_TEXT}.")
    message: str | None = None
    progress: Progress
    queue_position: int | None = None
    image_count: int | None = None
    created: str | None = Field(None, description="When the job was created (RFC 3339).")
    timestamps: dict[str, str] = Field(default_factory=dict, description="When each stage started or ended.")
    processing: Processing
    training: Training
    sfm: SfmSummary | None = None
    outputs: Delivery | None = None
    deleting: bool = Field(False, description="True while the job is being deleted.")
    links: Links

    @classmethod
    def from_resource(cls, obj: dict[str, Any], links: Links) -> JobStatus:
        meta = obj.get("metadata", {})
        status = contract.JobStatus.of(obj)
        spec = contract.JobSpec.read(obj.get("spec") or {})
        sfm, outputs = status.sfm, status.outputs
        return cls(
            id=meta["name"],
            phase=status.phase,
            finished=status.finished,
            message=status.message or None,
            progress=Progress(**status.progress),
            queue_position=status.queue_position,
            image_count=spec.image_count,
            created=meta.get("creationTimestamp"),
            timestamps=status.timestamps,
            processing=Processing(
                matcher=spec.matcher,
                mapper=spec.mapper,
                max_image_size=spec.max_image_size,
            ),
            training=Training(
                backend=status.training.get("backend") or spec.training_backend,
                steps=spec.training_steps,
                strategy=spec.training_strategy,
                max_gaussians=spec.max_gaussians,
                max_image_size=spec.train_image_size,
                gpu_seconds=status.training.get("gpuSeconds"),
                cost_usd=status.training.get("costUSD"),
                psnr=status.training.get("psnr"),
                preview_psnr=status.training.get("previewPsnr"),
                gaussians=status.training.get("gaussians"),
            ),
            sfm=SfmSummary(
                registered_images=sfm.get("registeredImages"),
                total_images=sfm.get("totalImages"),
                points=sfm.get("points"),
                mean_reprojection_error=sfm.get("meanReprojectionError"),
            )
            if sfm
            else None,
            outputs=Delivery(
                source=outputs.get("source"),
                gaussians=outputs.get("gaussians"),
                delivered_at=outputs.get("deliveredAt"),
                expires_at=outputs.get("expiresAt"),
            )
            if outputs
            else None,
            deleting=bool(meta.get("deletionTimestamp")),
            links=links,
        )


class JobCreated(BaseModel):
    id: str = Field(description="The job id (a UUID).")
    phase: Phase = Phase.PENDING
    image_count: int
    links: Links
    job_token: str | None = Field(
        None,
        description="Anonymous uploads only: send it as X-Job-Token to read, watch or delete this job. "
        "It is shown once and cannot be recovered.",
    )


class JobList(BaseModel):
    items: list[JobStatus]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page; null on the last.")


def _scalar(prop: dict) -> dict:
    """``X | None`` from pydantic's schema as the plain type (a form field is sent or omitted)."""
    if "anyOf" not in prop:
        return {}
    return next(p for p in prop["anyOf"] if p.get("type") != "null")


#: The upload's multipart form in the OpenAPI document (the handler parses the stream itself).
UPLOAD_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["files"],
                "properties": {
                    "files": {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "description": "The photos (JPEG, PNG or HEIC), one part each, 5-100 of them.",
                    },
                    **{
                        name: {k: v for k, v in prop.items() if k not in ("anyOf", "default", "title")}
                        | _scalar(prop)
                        for name, prop in JobOptions.model_json_schema()["properties"].items()
                    },
                },
                "additionalProperties": False,
            }
        }
    },
}


def document_upload_limits(schema: dict, min_images: int, max_images: int) -> dict:
    """Say in the OpenAPI document how many photos an upload holds on this server (its intake limits)."""
    body = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    files = body["properties"]["files"]
    files["minItems"], files["maxItems"] = min_images, max_images
    files["description"] = (
        f"The photos (JPEG, PNG or HEIC), one part each, {min_images}-{max_images} of them."
    )
    return schema


def _event(name: str, data: dict, description: str) -> dict:
    return {
        "type": "object",
        "description": description,
        "required": ["event", "data"],
        "properties": {
            "event": {"const": name},
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data},
            "id": {"type": "string", "description": "The SharpJob's resourceVersion."},
            "retry": {"type": "integer"},
        },
    }


#: One event of a job's event stream in the OpenAPI document (the schema of an event-stream describes
#: each event, as OpenAPI 3.2's ``itemSchema`` does): its type, and its data as JSON.
EVENT_SCHEMA = {
    "oneOf": [
        _event(
            "status", {"$ref": "#/components/schemas/JobStatus"}, "The job's status, now and on every change."
        ),
        _event(
            "deleted",
            {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}},
            "The job is gone; the stream ends.",
        ),
        _event(
            "error",
            {"type": "object", "required": ["message"], "properties": {"message": {"type": "string"}}},
            "Following the job failed; the stream ends and the client reconnects.",
        ),
    ]
}
