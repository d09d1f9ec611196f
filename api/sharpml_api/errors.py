"""How every error becomes an RFC 9457 problem response: the app's exception handlers.

:class:`~sharpml_api.problems.ApiProblem` raised anywhere (routes, dependencies, services), FastAPI's
own validation errors and Starlette's HTTP errors (404 route, 405 method) all answer with the one
problem shape. A dependency's outage met anywhere (the apiserver refusing or timing out, the data
volume failing: :mod:`sharpml_api.outages`) is a 503 with ``Retry-After`` on every route, however it
surfaced; anything else unexpected is logged and answered as a 500 problem that reveals nothing.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from sharpml_api.outages import OUTAGE_ERRORS, outage_problem
from sharpml_api.problems import PROBLEM_MEDIA_TYPE, TYPE_BASE, ApiProblem, ProblemDetails, ProblemItem

log = logging.getLogger(__name__)


def problem_response(problem: ApiProblem, instance: str | None = None) -> JSONResponse:
    body = ProblemDetails(
        type=TYPE_BASE + problem.kind,
        title=problem.title,
        status=problem.status,
        detail=problem.detail,
        instance=instance,
        errors=problem.errors,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=problem.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=problem.headers,
    )


_HTTP_KINDS = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Authentication required"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    406: ("not-acceptable", "Not acceptable"),
    408: ("upload-timeout", "Request timeout"),
    413: ("too-large", "Request too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
}


def install(app: FastAPI) -> None:
    """Route every error the app or the framework raises through the problem shape."""

    @app.exception_handler(ApiProblem)
    async def _api_problem(request: Request, exc: ApiProblem) -> JSONResponse:
        return problem_response(exc, request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind, title = _HTTP_KINDS.get(exc.status_code, ("http-error", "HTTP error"))
        detail = exc.detail if isinstance(exc.detail, str) else title
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # FastAPI routes each method separately, so Starlette's Allow names only one of them.
            headers["Allow"] = ", ".join(_allowed_methods(app, request))
        return problem_response(
            ApiProblem(exc.status_code, kind, title, detail, headers=headers), request.url.path
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        items = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
            items.append(
                ProblemItem(field=".".join(loc) or None, rule=str(err.get("type")), message=err["msg"])
            )
        detail = "; ".join(f"{i.field}: {i.message}" if i.field else i.message for i in items)
        return problem_response(
            ApiProblem(422, "invalid-request", "Invalid request", detail or "invalid request", items),
            request.url.path,
        )

    async def _outage(request: Request, exc: Exception) -> JSONResponse:
        problem = outage_problem(exc)
        if problem is None:
            return await _unexpected(request, exc)
        log.warning("%s %s: dependency unavailable: %r", request.method, request.url.path, exc)
        return problem_response(problem, request.url.path)

    for error in OUTAGE_ERRORS:
        app.add_exception_handler(error, _outage)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            ApiProblem(500, "internal", "Internal error", "an unexpected error occurred; it has been logged"),
            request.url.path,
        )


def _allowed_methods(app: FastAPI, request: Request) -> list[str]:
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match != Match.NONE and getattr(route, "methods", None):
            methods |= route.methods
    return sorted(methods)
