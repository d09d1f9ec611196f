"""Errors as RFC 9457 problem details: one JSON shape for every failure, naming the file or field and rule.

``{"type", "title", "status", "detail", "errors": [{"file"|"field", "rule", "message"}]}`` with
``Content-Type: application/problem+json``. ``type`` is a stable URI per kind of problem, so clients
branch on it rather than on English text.

This module is the vocabulary (no web framework in it: the services raise :class:`ApiProblem`);
:mod:`sharpml_api.errors` turns every exception into the response.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pydantic import BaseModel, Field

from sharpml.intake import Problem

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://sharpml.com/problems/"


class ProblemItem(BaseModel):
    """One offending file or field."""

    file: str | None = Field(None, description="Client file name the problem is about (printable form).")
    field: str | None = Field(None, description="Form field or parameter the problem is about.")
    rule: str = Field(description="Machine-readable rule, e.g. `type-mismatch`, `file-size`, `count`.")
    message: str = Field(description="Human-readable explanation.")


class ProblemDetails(BaseModel):
    """RFC 9457 problem details."""

    type: str = Field(description="URI identifying the kind of problem.")
    title: str = Field(description="Short summary of the kind of problem.")
    status: int = Field(description="HTTP status code.")
    detail: str = Field(description="Explanation of this occurrence.")
    instance: str | None = Field(None, description="The request path.")
    errors: list[ProblemItem] = Field(default_factory=list, description="Every offending file or field.")


class ApiProblem(Exception):
    """Raise to answer with a problem document."""

    def __init__(
        self,
        status: int,
        kind: str,
        title: str,
        detail: str,
        errors: Iterable[ProblemItem] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.title = title
        self.detail = detail
        self.errors = list(errors)
        self.headers = dict(headers or {})

    @property
    def outage(self) -> bool:
        """A dependency of the server (cluster, data volume) failed; nothing is wrong with the request."""
        return self.status == 503


def intake_problem(problems: Iterable[Problem]) -> ApiProblem:
    """Intake's verdict (from :mod:`sharpml.intake`, the one home of the rules) as a 422."""
    items = [ProblemItem(file=p.file, rule=p.rule, message=str(p)) for p in problems]
    return ApiProblem(
        422,
        "photos-rejected",
        "Photos rejected",
        f"{len(items)} problem(s); nothing was stored: " + "; ".join(i.message for i in items),
        items,
    )


def field_problem(status: int, kind: str, title: str, field: str, rule: str, message: str) -> ApiProblem:
    return ApiProblem(status, kind, title, message, [ProblemItem(field=field, rule=rule, message=message)])


def file_problem(status: int, kind: str, title: str, file: str | None, rule: str, message: str) -> ApiProblem:
    return ApiProblem(status, kind, title, message, [ProblemItem(file=file, rule=rule, message=message)])


def not_found(job_id: str) -> ApiProblem:
    """No such job for this caller (also for other owners' jobs: their existence is not revealed)."""
    return ApiProblem(404, "not-found", "Not found", f"no job {job_id!r} for this caller")


#: ``Retry-After`` of every 503: a restarting apiserver or a remounted volume is back within seconds.
RETRY_AFTER_SECONDS = 10


def unavailable(kind: str, title: str, detail: str, errors: Iterable[ProblemItem] = ()) -> ApiProblem:
    """A dependency is down (503 with ``Retry-After``): the request may be sent again unchanged."""
    return ApiProblem(503, kind, title, detail, errors, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def cluster_unavailable(detail: str) -> ApiProblem:
    """The apiserver (job store and rate-limit store) could not be used: the client may retry."""
    return unavailable("cluster-unavailable", "Cluster unavailable", detail)


def storage_unavailable(detail: str) -> ApiProblem:
    """The data volume could not be used (missing, read-only, full): the client may retry."""
    return unavailable("storage-unavailable", "Storage unavailable", detail)


def responses(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI ``responses`` entries: these statuses answer with problem details."""
    return {
        s: {
            "model": ProblemDetails,
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}},
            "description": _DESCRIPTIONS.get(s, "Problem details"),
        }
        for s in statuses
    }


_DESCRIPTIONS = {
    400: "Malformed request (e.g. broken multipart, unknown form field)",
    401: "Missing, invalid or expired bearer token",
    403: "A signed link that is not valid: altered, incomplete, for another job or file, or an unknown key",
    404: "No such job for this caller",
    408: "The upload did not arrive within the upload timeout",
    410: "A signed link, or the artifact, has expired",
    413: "A photo or the whole upload exceeds the size limit",
    415: "Content-Type is not multipart/form-data",
    416: "The range starts beyond the end of the file (Content-Range: bytes */size)",
    422: "Photos or options rejected; every offending file or field is named",
    429: "Rate limit reached; see Retry-After",
    503: "The cluster or the data volume is unavailable; try again later",
}


def document(schema: dict) -> dict:
    """Make the OpenAPI document say what the app does: every error response is problem+json.

    FastAPI documents its own validation errors as ``application/json`` ``HTTPValidationError``;
    here they (and every other 4xx/5xx) are problem details, so the schema must say so.
    """
    ref = {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}
    for path in schema.get("paths", {}).values():
        for op in path.values():
            for status, resp in op.get("responses", {}).items():
                if status[0] in "45":
                    resp["content"] = {PROBLEM_MEDIA_TYPE: ref}
                if status in ("429", "503"):
                    resp["headers"] = {
                        "Retry-After": {
                            "description": "Seconds until an upload will be admitted again."
                            if status == "429"
                            else "Seconds after which the request may be sent again.",
                            "required": True,
                            "schema": {"type": "integer", "minimum": 1},
                        }
                    }
                if status == "201":
                    resp["headers"] = {
                        "Location": {
                            "description": "The new job's status URL.",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    }
                if status == "422" and resp.get("description") == "Validation Error":
                    resp["description"] = "Invalid parameters; every offending field is named"
            op["security"] = [{"bearerAuth": []}, {"jobToken": []}, {}]
    components = schema.setdefault("components", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.get("schemas", {}).pop(name, None)
    components["securitySchemes"] = {
        "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
        "jobToken": {
            "type": "apiKey",
            "in": "header",
            "name": "X-Job-Token",
            "description": "The token an anonymous upload returned, for that job only.",
        },
    }
    return schema
