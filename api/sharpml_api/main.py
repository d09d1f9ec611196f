"""``sharpml-api``: serve the API with uvicorn; every setting from ``SHARPML_*`` variables."""

from __future__ import annotations

import logging
import sys

import uvicorn

from sharpml.config import ConfigError
from sharpml_api.app import create_app
from sharpml_api.server import header_timeout_protocol
from sharpml_api.settings import Settings


def main() -> int:
    try:
        settings = Settings.from_env()
        logging.basicConfig(
            level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        app = create_app(settings)
    except ConfigError as exc:
        print(f"sharpml-api: configuration error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        proxy_headers=False,  # X-Forwarded-For is interpreted by sharpml_api.client_ip, trusted proxies only
        server_header=False,
        http=header_timeout_protocol(settings.header_timeout_seconds),
        timeout_keep_alive=30,
        log_level=settings.log_level,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
