"""pytest fixtures for the local RunPod (registered in ``tests/conftest.py``).

- ``runpod_server``: a fresh :class:`~tests.runpod_local.server.LocalRunPod` per test, over https with
  a self-signed certificate (as RunPod is), RunPod's timing minimums lowered to 100 ms. Attributes:
  ``api_url`` (for ``RUNPOD_ENDPOINT_BASE_URL``), ``api_key``, ``endpoint_id``, ``faults``,
  ``job(id)``, ``worker_env()``, ``tls`` (certificate, key).
- ``runpod_endpoint``: the SDK's own client, ``runpod.Endpoint(endpoint_id)``, with ``runpod.api_key``
  and ``runpod.endpoint_url_base`` pointing at the server and the certificate trusted
  (``REQUESTS_CA_BUNDLE``).
- ``runpod_worker``: a factory, ``runpod_worker(module="tests.runpod_local.echo_worker", env=None,
  worker_id=None)``, starting ``python -m MODULE`` with the worker environment RunPod would give it
  (so the SDK runs its real polling loop, not local test mode) plus ``env``; returns a
  :class:`WorkerProcess`. Every worker is stopped at the end of the test (SIGTERM to its process group,
  SIGKILL after 15 s), its ping process included.

Modules here import the server (aiohttp) only inside fixtures, so collecting other tests needs nothing
beyond pytest.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.runpod_local.server import LocalRunPod

REPO = Path(__file__).resolve().parents[2]
ECHO_WORKER = "tests.runpod_local.echo_worker"


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy (returned), or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@dataclass
class WorkerProcess:
    """A RunPod worker subprocess (the SDK's loop) and where its output goes."""

    process: subprocess.Popen[bytes]
    worker_id: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        """Whether anything of the worker (its loop or its ping process) still runs."""
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return self.process.poll() is None or _group_has_members(self.process.pid)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM to the whole process group (the SDK shuts down gracefully once its handler
        returns), SIGKILL after ``timeout``; waits until no process of the group is left."""
        if self.process.poll() is None or _group_has_members(self.process.pid):
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
            deadline = time.monotonic() + 5
            while _group_has_members(self.process.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _group_has_members(self.process.pid):
                _signal_group(self.process.pid, signal.SIGKILL)
        return self.process.returncode


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _group_has_members(pgid: int) -> bool:
    """Any live (non-zombie) process in the group: checked in /proc, as killpg(0) counts zombies."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


@pytest.fixture(scope="session")
def runpod_tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1, made once per session."""
    from tests.runpod_local.server import make_certificate

    return make_certificate(tmp_path_factory.mktemp("runpod-tls"))


@pytest.fixture
def runpod_server(runpod_tls: tuple[Path, Path]) -> Iterator[LocalRunPod]:
    """A fresh local RunPod endpoint over https."""
    from tests.runpod_local.server import LocalRunPod

    server = LocalRunPod(
        endpoint_id="sharpml-train",
        tls=runpod_tls,
        min_execution_timeout_ms=100,
        min_ttl_ms=100,
        job_take_hold_s=0.5,
        stop_poll_hold_s=0.5,
        runsync_wait_s=20,
        webhook_retry_delay_s=0.2,
    ).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def runpod_endpoint(runpod_server: LocalRunPod, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``runpod.Endpoint`` of the local server, configured the SDK's documented way."""
    import runpod

    monkeypatch.setattr(runpod, "api_key", runpod_server.api_key)
    monkeypatch.setattr(runpod, "endpoint_url_base", runpod_server.api_url)
    assert runpod_server.tls is not None
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(runpod_server.tls[0]))
    return runpod.Endpoint(runpod_server.endpoint_id)


@pytest.fixture
def runpod_worker(runpod_server: LocalRunPod, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory of worker subprocesses running the real SDK loop against ``runpod_server``."""
    started: list[WorkerProcess] = []

    def start(
        module: str = ECHO_WORKER, env: dict[str, str] | None = None, worker_id: str | None = None
    ) -> WorkerProcess:
        worker_env = runpod_server.worker_env(worker_id)
        full = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
        full.update(worker_env)
        full.update(
            {
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                "PYTHONUNBUFFERED": "1",
                # The SDK's start-up fitness checks dial 8.8.8.8:53 and want 4 GB free: neither holds
                # on a sandboxed test machine; RunPod's own machines pass them.
                "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
                "RUNPOD_DEBUG_LEVEL": "INFO",
            }
        )
        full.update(env or {})
        log = tmp_path / f"worker-{worker_env['RUNPOD_POD_ID']}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", module],
                cwd=REPO,
                env=full,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        worker = WorkerProcess(process, worker_env["RUNPOD_POD_ID"], log)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()
        leftover = [w.worker_id for w in started if _group_has_members(w.process.pid)]
        assert not leftover, f"worker processes left behind: {leftover}"
