"""The soak: concurrent uploaders against `sharpml-api` while the API and the operator are SIGKILLed.

Real processes on the development control plane: ``sharpml-api`` (uvicorn) and ``sharpml-operator``
as subprocesses, SfM pods run by podman through the node agent. ``uploaders`` threads post photo sets
in a loop for ``seconds``; a chaos thread kills one of the two processes at seeded moments and
restarts it after a seeded pause. Then the chaos stops, both run, and the soak waits (up to
``drain_seconds``) for every SharpJob to reach a terminal phase and every leftover to be swept.

Every attempt authenticates as an account of its own (``soak-u{uploader}-{attempt}``, the SharpJob's
``spec.owner``), so each SharpJob maps to exactly one attempt, whatever answer the client got: a
response lost in a kill whose SharpJob was created anyway is found and counted, and a duplicate is
two SharpJobs of one account. :func:`violations` lists every broken rule; the test and ``make soak``
both use it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from sharpml.contract import Phase
from sharpml.layout import STAGING_PREFIX
from tests.api.conftest import AUDIENCE, HS_SECRET, ISSUER, make_token
from tests.conftest import ControlPlane

API = Path(sys.executable).parent / "sharpml-api"
#: The settings that make leftovers short-lived: a spool or staging directory is swept once it has
#: not changed for the upload timeout; a job directory without a SharpJob after the orphan grace.
UPLOAD_TIMEOUT_SECONDS = 30
ORPHAN_GRACE_SECONDS = 30
ORPHAN_CHECK_SECONDS = 5
STAGE_LABEL = "sharpml.com/stage"
#: Failed is never acceptable here: the valid sets reconstruct (the operator tests' scene), so a Failed
#: job means the chaos cost a job. Any reason is reported.
ACCEPTABLE_FAILURE_REASONS: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Kill:
    """SIGKILL ``target`` at ``at`` seconds, restart it ``pause`` seconds later. With ``aim`` set (API
    kills), wait from ``at`` for the next upload to start, then kill ``aim`` seconds into it."""

    at: float
    target: str  # "api" | "operator"
    pause: float
    aim: float | None = None


@dataclass(frozen=True)
class SoakConfig:
    uploaders: int
    seconds: float
    seed: int
    #: The kills; None: a random one every 15-45 s, half of the API's aimed at an upload in flight.
    kills: list[Kill] | None = None
    drain_seconds: float = 600
    #: Unfinished accepted jobs an uploader may have before it waits for one to finish (bounds the queue).
    outstanding: int = 2
    #: Share of uploads that carry a photo intake must refuse (expected 422: exercises rejection).
    invalid_share: float = 0.25

    def schedule(self) -> list[Kill]:
        if self.kills is not None:
            return list(self.kills)
        rng = random.Random(self.seed)
        out, t = [], rng.uniform(5, 20)
        while t < self.seconds - 5:
            target = rng.choice(("api", "operator"))
            aim = round(rng.uniform(0, 0.5), 3) if target == "api" and rng.random() < 0.5 else None
            out.append(Kill(round(t, 2), target, round(rng.uniform(0.5, 6), 2), aim))
            t += rng.uniform(15, 45)
        return out


@dataclass
class Attempt:
    account: str
    uploader: int
    valid: bool
    started: float
    #: accepted | refused | unreachable (never connected) | lost (connection broke: the answer is unknown)
    outcome: str = ""
    status: int | None = None
    job_id: str | None = None
    problem: str | None = None
    error: str | None = None
    seconds: float = 0.0


class ApiProcess:
    """``sharpml-api`` on a fixed port (restarts keep the URL), in its own process group."""

    def __init__(self, env: dict[str, str], port: int, log_path: Path) -> None:
        self.env, self.port, self.log_path = env, port, log_path
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, wait: bool = True) -> ApiProcess:
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n=== start {self.starts}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [str(API)], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"sharpml-api did not start:\n{self.log()}")
            time.sleep(0.2)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


def api_env(cp: ControlPlane, namespace: str, data_root: Path, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "SHARPML_DATA_DIR": str(data_root),
        "SHARPML_NAMESPACE": namespace,
        "SHARPML_KUBECONFIG": str(cp.kubeconfig),
        "SHARPML_API_HOST": "127.0.0.1",
        "SHARPML_API_PORT": str(port),
        "SHARPML_ALLOWED_HOSTS": "127.0.0.1",
        "SHARPML_JWT_ALGORITHMS": "HS256",
        "SHARPML_JWT_SECRET": HS_SECRET,
        "SHARPML_JWT_ISSUER": ISSUER,
        "SHARPML_JWT_AUDIENCE": AUDIENCE,
        # Every attempt is an account of its own (one Lease each); one address sends them all.
        "SHARPML_RATE_LIMIT_IP_PER_HOUR": "0",
        "SHARPML_RATE_LIMIT_ACCOUNT_PER_DAY": "10",
        "SHARPML_ANONYMOUS_UPLOADS_PER_DAY": "0",
        "SHARPML_UPLOADS_PER_IP_CONCURRENT": "0",
        "SHARPML_UPLOAD_TIMEOUT_SECONDS": str(UPLOAD_TIMEOUT_SECONDS),
        "SHARPML_INTAKE_WORKERS": "1",
        "SHARPML_LOG_LEVEL": "info",
    }


def operator_settings() -> dict[str, str]:
    """Keyword settings for the ``start_operator`` fixture."""
    return {
        "orphan_grace_seconds": str(ORPHAN_GRACE_SECONDS),
        "orphan_check_seconds": str(ORPHAN_CHECK_SECONDS),
    }


@dataclass
class Soak:
    config: SoakConfig
    cp: ControlPlane
    namespace: str
    data_root: Path
    api: ApiProcess
    #: The operator: ``.kill()`` and ``.start()`` (tests/operator/conftest.py's OperatorProcess).
    operator: Any
    valid_set: list[tuple[str, bytes]]
    invalid_set: list[tuple[str, bytes]]
    attempts: list[Attempt] = field(default_factory=list)
    kills: list[dict[str, Any]] = field(default_factory=list)
    #: Answers that break the rules whatever the chaos: 5xx other than 503, an accepted job gone (404);
    #: and crashes of the soak's own threads.
    server_errors: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    #: POSTs under way (what an aimed kill waits for).
    _in_flight: int = 0
    _posts: int = 0
    #: Seconds after the uploads stopped at which each part of the end state was reached.
    settled: dict[str, float] = field(default_factory=dict)

    # -- uploaders -------------------------------------------------------------------------------
    def _post(self, client: httpx.Client, attempt: Attempt) -> None:
        files = [
            ("files", (name, data, "image/jpeg"))
            for name, data in (self.valid_set if attempt.valid else self.invalid_set)
        ]
        headers = {"Authorization": f"Bearer {make_token(attempt.account)}"}
        with self._lock:
            self._in_flight += 1
            self._posts += 1
        try:
            r = client.post(
                f"{self.api.url}/v1/jobs", files=files, data={"training": "none"}, headers=headers
            )
        except httpx.ConnectError as exc:
            attempt.outcome, attempt.error = "unreachable", type(exc).__name__
            return
        except httpx.TransportError as exc:
            attempt.outcome, attempt.error = "lost", type(exc).__name__
            return
        finally:
            attempt.seconds = time.monotonic() - attempt.started
            with self._lock:
                self._in_flight -= 1
        attempt.status = r.status_code
        if r.status_code == 201:
            attempt.outcome, attempt.job_id = "accepted", r.json()["id"]
            return
        attempt.outcome = "refused"
        try:
            attempt.problem = r.json().get("type", "").rsplit("/", 1)[-1] or None
        except ValueError:
            attempt.problem = None
        if r.status_code >= 500 and r.status_code != 503:
            self._server_error(f"POST {attempt.account}: {r.status_code} {r.text[:500]}")

    def _server_error(self, line: str) -> None:
        with self._lock:
            self.server_errors.append(line)

    def _finished(self, client: httpx.Client, attempt: Attempt) -> bool:
        """Whether the accepted job is in a terminal phase (False while the API cannot be reached)."""
        headers = {"Authorization": f"Bearer {make_token(attempt.account)}"}
        try:
            r = client.get(f"{self.api.url}/v1/jobs/{attempt.job_id}", headers=headers)
        except httpx.TransportError:
            return False
        if r.status_code == 200:
            return Phase(r.json()["phase"]).terminal
        if r.status_code == 404 or (r.status_code >= 500 and r.status_code != 503):
            self._server_error(f"GET {attempt.job_id}: {r.status_code} {r.text[:500]}")
            return True  # reported; stop waiting for it
        return False

    def _uploader(self, index: int) -> None:
        rng = random.Random(f"{self.config.seed}-{index}")
        outstanding: list[Attempt] = []
        with httpx.Client(timeout=httpx.Timeout(120, connect=5)) as client:
            n = 0
            while not self._stop.is_set():
                while len(outstanding) >= self.config.outstanding and not self._stop.is_set():
                    outstanding = [a for a in outstanding if not self._finished(client, a)]
                    if len(outstanding) >= self.config.outstanding:
                        self._stop.wait(1)
                if self._stop.is_set():
                    break
                n += 1
                attempt = Attempt(
                    f"soak-u{index}-a{n}", index, rng.random() >= self.config.invalid_share, time.monotonic()
                )
                self._post(client, attempt)
                with self._lock:
                    self.attempts.append(attempt)
                if attempt.outcome == "accepted":
                    outstanding.append(attempt)
                elif attempt.outcome in ("unreachable", "lost"):
                    self._stop.wait(rng.uniform(0.2, 1.0))  # the API is down: do not spin

    # -- chaos -----------------------------------------------------------------------------------
    def _chaos(self, t0: float) -> None:
        for kill in self.config.schedule():
            if self._stop.wait(max(0.0, t0 + kill.at - time.monotonic())):
                return
            in_flight = self._in_flight
            if kill.aim is not None:
                # A POST that starts from now on: one already under way may be about to answer.
                started, deadline = self._posts, time.monotonic() + 20
                while self._posts == started and time.monotonic() < deadline and not self._stop.is_set():
                    time.sleep(0.005)
                time.sleep(kill.aim)
                in_flight = self._in_flight
            proc = self.api if kill.target == "api" else self.operator
            killed_at = time.monotonic() - t0
            proc.kill()
            time.sleep(kill.pause)
            proc.start() if kill.target == "operator" else proc.start(wait=False)
            self.kills.append(
                {
                    "target": kill.target,
                    "at_s": round(killed_at, 1),
                    "down_s": kill.pause,
                    "aimed": kill.aim is not None,
                    "uploads_in_flight": in_flight,
                }
            )

    # -- the run ---------------------------------------------------------------------------------
    def _guarded(self, target: Callable[..., None], *args: Any) -> None:
        """Run a thread's body; a crash of the soak itself is a violation, never a silent thread death."""
        try:
            target(*args)
        except Exception as exc:
            self._server_error(f"soak thread {target.__name__}{args} crashed: {exc!r}")

    def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        threads = [
            threading.Thread(target=self._guarded, args=(self._uploader, i), daemon=True)
            for i in range(self.config.uploaders)
        ]
        chaos = threading.Thread(target=self._guarded, args=(self._chaos, t0), daemon=True)
        for t in [*threads, chaos]:
            t.start()
        self._stop.wait(self.config.seconds)
        self._stop.set()
        chaos.join()
        for t in threads:
            t.join(timeout=180)
        upload_end = time.monotonic()
        # Both run again (a restart may still be coming up); then everything must settle.
        self.api.wait_ready()
        drained, state = self._drain(upload_end + self.config.drain_seconds)
        return self._result(t0, upload_end, drained, state)

    def state(self) -> dict[str, Any]:
        jobs = self.cp.get_json("sharpjobs", "-n", self.namespace)["items"]
        pods = self.cp.get_json("pods", "-n", self.namespace, "-l", STAGE_LABEL)["items"]
        names = {j["metadata"]["name"] for j in jobs}
        root = self.data_root
        uploads = sorted(p.name for p in (root / "uploads").iterdir()) if (root / "uploads").is_dir() else []
        job_dirs = sorted(p.name for p in (root / "jobs").iterdir()) if (root / "jobs").is_dir() else []
        return {
            "jobs": jobs,
            "pods": pods,
            "uploads": uploads,
            "incoming": [d for d in job_dirs if d.startswith(STAGING_PREFIX)],
            "orphan_dirs": [d for d in job_dirs if not d.startswith(STAGING_PREFIX) and d not in names],
        }

    def _drain(self, deadline: float) -> tuple[bool, dict[str, Any]]:
        """Wait until everything has settled; records when each part did (seconds after the uploads)."""
        start = time.monotonic()
        while True:
            state = self.state()
            parts = {
                "jobs_terminal": all(Phase.of(j.get("status")).terminal for j in state["jobs"]),
                "uploads_swept": not state["uploads"] and not state["incoming"],
                "orphans_swept": not state["orphan_dirs"],
                "pods_done": all(p["status"].get("phase") in ("Succeeded", "Failed") for p in state["pods"]),
            }
            for part, done in parts.items():
                if done:
                    self.settled.setdefault(part, round(time.monotonic() - start, 1))
                else:
                    self.settled.pop(part, None)
            if all(parts.values()) or time.monotonic() > deadline:
                return all(parts.values()), state
            time.sleep(2)

    def _result(self, t0: float, upload_end: float, drained: bool, state: dict[str, Any]) -> dict[str, Any]:
        outcomes = Counter(
            f"{a.outcome}{'' if a.valid else ' (invalid set)'}"
            + (f" {a.status} {a.problem}" if a.status else "")
            for a in self.attempts
        )
        by_owner: dict[str, list[dict[str, Any]]] = {}
        for j in state["jobs"]:
            by_owner.setdefault(j["spec"]["owner"], []).append(j)
        phases = Counter(Phase.of(j.get("status")).value for j in state["jobs"])
        lost_but_created = [
            a.account for a in self.attempts if a.outcome == "lost" and by_owner.get(a.account)
        ]
        return {
            "config": {
                "uploaders": self.config.uploaders,
                "seconds": self.config.seconds,
                "seed": self.config.seed,
                "outstanding_per_uploader": self.config.outstanding,
                "invalid_share": self.config.invalid_share,
                "photos_per_set": len(self.valid_set),
                "set_bytes": sum(len(d) for _, d in self.valid_set),
            },
            "attempts": len(self.attempts),
            "accepted": sum(a.outcome == "accepted" for a in self.attempts),
            "refused": sum(a.outcome == "refused" for a in self.attempts),
            "unreachable": sum(a.outcome == "unreachable" for a in self.attempts),
            "lost_responses": sum(a.outcome == "lost" for a in self.attempts),
            "lost_responses_with_a_job": len(lost_but_created),
            "outcomes": dict(sorted(outcomes.items())),
            "upload_seconds": _quantiles([a.seconds for a in self.attempts if a.outcome == "accepted"]),
            "kills": self.kills,
            "api_kills": sum(k["target"] == "api" for k in self.kills),
            "operator_kills": sum(k["target"] == "operator" for k in self.kills),
            "sharpjobs": len(state["jobs"]),
            "phases": dict(phases),
            "drained": drained,
            "drain_seconds": round(time.monotonic() - upload_end, 1),
            "settled_after_s": self.settled,
            "total_seconds": round(time.monotonic() - t0, 1),
            # What the kills left and the sweeps removed (from the processes' logs).
            "leftovers_swept_by_api": _count(self.api.log_path, "swept abandoned upload leftover"),
            "orphan_dirs_removed_by_operator": _count(self.operator.log_path, "removed job directory"),
            "server_errors": self.server_errors,
            "violations": violations(self.attempts, state, self.server_errors, drained),
        }


def _count(log: Path, text: str) -> int:
    return log.read_text(errors="replace").count(text) if log.exists() else 0


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    v = sorted(values)
    return {
        q: round(v[min(len(v) - 1, int(p * len(v)))], 2) for q, p in (("p50", 0.5), ("p90", 0.9), ("max", 1))
    }


def _reason(job: dict[str, Any]) -> str:
    conds = {c["type"]: c for c in (job.get("status") or {}).get("conditions", [])}
    failed = conds.get("Failed") or {}
    return f"{failed.get('reason')}: {failed.get('message')}"


def violations(
    attempts: list[Attempt], state: dict[str, Any], server_errors: list[str], drained: bool
) -> list[str]:
    """Every broken rule, one line each (empty: the soak passed)."""
    out: list[str] = [f"server error: {e}" for e in server_errors]
    if not drained:
        out.append("the system did not settle before the drain deadline")
    by_owner: dict[str, list[dict[str, Any]]] = {}
    for j in state["jobs"]:
        by_owner.setdefault(j["spec"]["owner"], []).append(j)
    known = {a.account for a in attempts}
    for owner, jobs in by_owner.items():
        if owner not in known:
            out.append(f"SharpJob(s) {[j['metadata']['name'] for j in jobs]} of no attempt (owner {owner})")
    for a in attempts:
        jobs = by_owner.get(a.account, [])
        names = [j["metadata"]["name"] for j in jobs]
        if len(jobs) > 1:
            out.append(f"{a.account}: {len(jobs)} SharpJobs {names} for one upload")
        if a.outcome == "accepted":
            if names != [a.job_id]:
                out.append(f"{a.account}: accepted as {a.job_id} but its SharpJobs are {names}")
        elif a.outcome in ("refused", "unreachable") and jobs:
            out.append(f"{a.account}: {a.outcome} ({a.status} {a.problem}) yet SharpJobs {names} exist")
        if a.outcome == "refused" and not a.problem:
            out.append(f"{a.account}: refused with {a.status} but no problem type (no clear reason)")
        if a.outcome == "refused":
            expected = (503, 429) if a.valid else (422, 503, 429)
            if a.status not in expected:
                out.append(
                    f"{a.account}: {'valid' if a.valid else 'invalid'} set answered {a.status} {a.problem}"
                )
        if not a.valid and jobs:
            out.append(f"{a.account}: a set intake must refuse became SharpJobs {names}")
    for j in state["jobs"]:
        phase = Phase.of(j.get("status"))
        name = j["metadata"]["name"]
        if phase is Phase.FAILED:
            reason = (j.get("status") or {}).get("conditions") or [{}]
            cond = next((c for c in reason if c.get("type") == "Failed"), {})
            if cond.get("reason") not in ACCEPTABLE_FAILURE_REASONS:
                out.append(f"{name}: Failed ({_reason(j)})")
        elif phase is not Phase.COMPLETE:
            out.append(f"{name}: ended the drain in phase {phase.value}")
    for key, what in (
        ("uploads", "uploads/"),
        ("incoming", "jobs/.incoming-*"),
        ("orphan_dirs", "jobs/ without a SharpJob"),
    ):
        if state[key]:
            out.append(f"left in {what}: {state[key]}")
    uids = {j["metadata"]["uid"] for j in state["jobs"]}
    per_job: Counter[tuple[str, str]] = Counter()
    for p in state["pods"]:
        owners = [o["uid"] for o in p["metadata"].get("ownerReferences", [])]
        stage = p["metadata"]["labels"].get(STAGE_LABEL, "")
        if not set(owners) & uids:
            out.append(f"stage pod {p['metadata']['name']} owned by no SharpJob")
        if p["status"].get("phase") not in ("Succeeded", "Failed"):
            out.append(f"stage pod {p['metadata']['name']} still {p['status'].get('phase')}")
        for uid in owners:
            per_job[(uid, stage)] += 1
    out += [f"{n} {stage} pods for SharpJob uid {uid}" for (uid, stage), n in per_job.items() if n > 1]
    return out


def summary(result: dict[str, Any]) -> str:
    """One line: what ``make soak`` prints and the README quotes."""
    return (
        f"soak seed {result['config']['seed']}: {result['config']['uploaders']} uploaders for "
        f"{result['config']['seconds']:.0f} s; {result['attempts']} uploads: {result['accepted']} accepted, "
        f"{result['refused']} refused, {result['unreachable']} unreachable, {result['lost_responses']} "
        f"answers lost ({result['lost_responses_with_a_job']} of them created a job); kills: "
        f"{result['api_kills']} API, {result['operator_kills']} operator; {result['sharpjobs']} SharpJobs "
        f"{result['phases']}; drained in {result['drain_seconds']} s; "
        f"{len(result['violations'])} violation(s)"
    )


def write_result(path: Path, result: dict[str, Any], command: str) -> None:
    record = {
        "benchmark": "soak",
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()},
        "summary": summary(result),
        "results": result,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
