"""The browser viewer: its page (``GET /v1/jobs/{id}/view``), its bundle (``/viewer/``) and the Content
Security Policy both are served with.

The page and bundle are built from npm into ``static/viewer/`` by the project's build (no CDN at view
time); until they are, the page route serves a short built-in page saying so. The policy allows exactly
what a three.js/Spark splat viewer needs and nothing from elsewhere:

* ``script-src 'self' 'wasm-unsafe-eval'``: the bundle, and compiling WebAssembly (Spark sorts splats
  in WASM); no inline script, no ``eval``.
* ``worker-src 'self' blob:``: sorting runs in Web Workers, which bundlers start from ``blob:`` URLs.
* ``connect-src 'self' blob: data:`` plus the S3 endpoint's origin: the page fetches the status, the event
  stream and the splat from this server, a download of a backed-up splat is redirected to S3, and
  bundlers inline the WASM module as a ``data:`` URL.
* ``img-src 'self' blob: data:`` (textures), ``style-src 'self'`` (stylesheets from the bundle only);
  WebGL needs no directive.
* ``object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'``: no plug-ins, no
  base rewriting, no forms, not framed (clickjacking).

``Referrer-Policy: no-referrer``: the page's URL holds a share link's signature.
"""

from __future__ import annotations

from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from sharpml.storage import S3Settings

STATIC_DIR = Path(__file__).parent / "static" / "viewer"
PAGE = STATIC_DIR / "index.html"
#: Where the bundle is mounted; the page refers to its assets below it.
ASSETS_PATH = "/viewer"

_PLACEHOLDER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>SharpML viewer</title></head>
<body><h1>SharpML viewer</h1>
<p>The viewer is not built into this server (api/sharpml_api/static/viewer/ is empty).
The job's status and downloads are at its links in <code>GET /v1/jobs/{id}</code>.</p></body></html>
"""


def s3_origins(s3: S3Settings) -> list[str]:
    """Origins a download may be redirected to (the artifacts' S3 backup)."""
    if s3.endpoint:
        return [s3.endpoint]
    return [f"https://{s3.bucket}.s3.{s3.region}.amazonaws.com", f"https://{s3.bucket}.s3.amazonaws.com"]


def content_security_policy(s3: S3Settings) -> str:
    connect = " ".join(["'self'", "blob:", "data:", *s3_origins(s3)])
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self' 'wasm-unsafe-eval'",
            "worker-src 'self' blob:",
            f"connect-src {connect}",
            "img-src 'self' blob: data:",
            "style-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


def security_headers(s3: S3Settings) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(s3),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
    }


def page(s3: S3Settings) -> Response:
    """The viewer page (it reads the job id and the share link from its own URL), not cached: it is the
    entry point of a bundle that changes with deployments."""
    headers = {**security_headers(s3), "Cache-Control": "no-store"}
    if PAGE.is_file():
        return FileResponse(PAGE, media_type="text/html; charset=utf-8", headers=headers)
    return HTMLResponse(_PLACEHOLDER, headers=headers)


class ViewerAssets(StaticFiles):
    """The bundle's files: never a directory listing (``html=False``), never a symlink out of the folder,
    each with the page's security headers."""

    def __init__(self, s3: S3Settings) -> None:
        super().__init__(directory=STATIC_DIR, html=False, check_dir=False)
        self._headers = security_headers(s3)

    async def check_config(self) -> None:
        """Not built (yet): every asset is a 404, rather than Starlette's error for a missing folder."""
        if STATIC_DIR.is_dir():
            await super().check_config()

    async def get_response(self, path: str, scope: Scope) -> Response:
        if not STATIC_DIR.is_dir():
            raise HTTPException(404, "the viewer is not built into this server")
        response = await super().get_response(path, scope)
        response.headers.update(self._headers)
        return response
