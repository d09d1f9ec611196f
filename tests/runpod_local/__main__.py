"""``python -m tests.runpod_local --port 8765 --api-key KEY``: the local RunPod for development.

Prints the URLs and the worker environment, then serves until interrupted. Point the SDK client at it
with ``RUNPOD_ENDPOINT_BASE_URL=http://127.0.0.1:8765/v2`` and start a worker with the printed
``RUNPOD_*`` variables (plus ``RUNPOD_SKIP_AUTO_SYSTEM_CHECKS=true`` on a machine without internet).
"""

from __future__ import annotations

import argparse
import shlex
import tempfile
import threading
from pathlib import Path

from tests.runpod_local.server import LocalRunPod, make_certificate


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.runpod_local", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", default=None, help="the public API's key (random when left out)")
    parser.add_argument("--worker-key", default=None, help="the workers' RUNPOD_AI_API_KEY")
    parser.add_argument("--endpoint-id", default="local-endpoint")
    parser.add_argument("--tls", action="store_true", help="serve https with a fresh self-signed cert")
    args = parser.parse_args()
    tls = make_certificate(Path(tempfile.mkdtemp(prefix="runpod-local-"))) if args.tls else None
    server = LocalRunPod(
        api_key=args.api_key,
        worker_key=args.worker_key,
        endpoint_id=args.endpoint_id,
        host=args.host,
        port=args.port,
        tls=tls,
    ).start()
    print(f"RUNPOD_ENDPOINT_BASE_URL={server.api_url}")
    print(f"API key: {server.api_key}   endpoint id: {server.endpoint_id}")
    print("worker environment:")
    for name, value in server.worker_env().items():
        print(f"  export {name}={shlex.quote(value)}")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
