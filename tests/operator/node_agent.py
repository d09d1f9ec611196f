"""A kubelet stand-in for the SfM node: runs the pods bound to it with podman, against the real apiserver.

What a kubelet would do, for the pod spec the operator writes, and nothing it would not:

- keeps the Node alive: a Lease in kube-node-lease renewed every few seconds and the Ready condition's
  heartbeat, so the scheduler and the node lifecycle controller treat it as a live node;
- runs each pod's single container from a local image (``imagePullPolicy`` decides whether a missing
  image is ErrImageNeverPull or ErrImagePull/ImagePullBackOff) with the pod's command (entrypoint),
  args, env, working directory, user and group (``runAsNonRoot`` checked), supplemental fsGroup,
  memory and CPU limits, a pids limit, ``readOnlyRootFilesystem``, dropped and added capabilities,
  ``allowPrivilegeEscalation: false`` as no-new-privileges, and ``--network=none`` (the sandbox's
  deny-all NetworkPolicy; no pod network exists on this node);
- mounts volumes as the kubelet resolves them: a persistentVolumeClaim through its bound
  PersistentVolume (``local`` or ``hostPath``) plus ``subPath``, read-only where the mount says so,
  with fsGroup ownership applied to the mounted directories; emptyDir as a fresh directory;
- reports status like a kubelet: Pending/ContainerCreating, Running with startTime, then Succeeded or
  Failed with the container's exit code and reason (Completed, Error, OOMKilled), the termination
  message from the logs (FallbackToLogsOnError), DeadlineExceeded after ``activeDeadlineSeconds``;
- honours deletion: stops the container within the grace period and removes the pod object.

Anything it cannot honour (another volume type, valueFrom env, several containers) fails the pod
with CreateContainerConfigError rather than being ignored, so a wrong spec fails the tests.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

REPO = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = REPO / "hack" / "containers.conf"
LIFECYCLE_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
PIDS_LIMIT = 1024  # the node's podPidsLimit
log = logging.getLogger("node-agent")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_quantity(q: str) -> float:
    """Kubernetes quantity -> number (bytes for memory, cores for cpu)."""
    units = {
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "T": 1e12,
        "m": 1e-3,
    }
    for suffix in sorted(units, key=len, reverse=True):
        if q.endswith(suffix):
            return float(q[: -len(suffix)]) * units[suffix]
    return float(q)


class PodConfigError(Exception):
    """The pod asks for something this node cannot do (reported as CreateContainerConfigError)."""


@dataclass
class RunningPod:
    uid: str
    container: str  # podman container name
    started: float
    deadline: float | None
    stopped_by_us: str = ""  # "", "deadline", "delete"


@dataclass
class NodeAgent:
    kubeconfig: Path
    node_name: str
    state_dir: Path
    heartbeat_seconds: float = 5.0
    poll_seconds: float = 0.3
    #: Every podman command line it ran, for assertions on what the sandbox looked like.
    launched: list[list[str]] = field(default_factory=list)
    #: (namespace/pod name, wall-clock start, wall-clock end) of every container that ran to an end.
    history: list[tuple[str, float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.api = kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.coord = kubernetes.client.CoordinationV1Api(self.api)
        self.running: dict[str, RunningPod] = {}
        self.finished: set[str] = set()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
        self.state_dir.mkdir(parents=True, exist_ok=True)

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> NodeAgent:
        self.heartbeat()
        for target in (self._heartbeat_loop, self._pod_loop):
            t = threading.Thread(target=target, name=f"node-agent-{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        for rp in list(self.running.values()):
            self._podman("rm", "-f", "-t", "0", rp.container, check=False)

    def _podman(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        # In the agent's own directory: conmon writes a file named `oom` into its working directory when a
        # container is OOM-killed, which from the repository root left a stray `oom` in the checkout.
        proc = subprocess.run(
            ["podman", *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            cwd=self.state_dir,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args[:3])}... failed: {proc.stderr.strip()}")
        return proc

    # --- node heartbeat ----------------------------------------------------------------------------

    def heartbeat(self) -> None:
        lease_body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.node_name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": self.node_name, "leaseDurationSeconds": 40, "renewTime": _micro_now()},
        }
        try:
            self.coord.patch_namespaced_lease(self.node_name, "kube-node-lease", {"spec": lease_body["spec"]})
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.coord.create_namespaced_lease("kube-node-lease", lease_body)
        node = self.core.read_node_status(self.node_name)
        now = _now()
        conds = [c for c in (node.status.conditions or []) if c.type != "Ready"]
        ready = next((c for c in (node.status.conditions or []) if c.type == "Ready"), None)
        transition = ready.last_transition_time if ready is not None and ready.status == "True" else now
        conds.append(
            kubernetes.client.V1NodeCondition(
                type="Ready",
                status="True",
                reason="KubeletReady",
                message="sharpml test node agent is posting ready status (podman)",
                last_heartbeat_time=now,
                last_transition_time=transition,
            )
        )
        node.status.conditions = conds
        self.core.replace_node_status(self.node_name, node)
        self._clear_lifecycle_taints()

    def _clear_lifecycle_taints(self) -> None:
        """Do the node lifecycle controller's part for a Ready node: drop the not-ready/unreachable taints
        (the TaintNodesByCondition admission adds not-ready to every new Node; the development control
        plane runs without that controller because its other nodes have no kubelet)."""
        node = self.core.read_node(self.node_name)
        taints = node.spec.taints or []
        keep = [t for t in taints if t.key not in LIFECYCLE_TAINTS]
        if len(keep) != len(taints):
            self.core.patch_node(self.node_name, {"spec": {"taints": [t.to_dict() for t in keep] or None}})

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                self.heartbeat()
            except Exception:
                log.exception("heartbeat failed")

    # --- pods --------------------------------------------------------------------------------------

    def _pod_loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                pods = self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={self.node_name}")
            except Exception:
                log.exception("listing pods failed")
                continue
            seen = set()
            for pod in pods.items:
                seen.add(pod.metadata.uid)
                try:
                    self.sync(pod)
                except ApiException as exc:
                    if exc.status not in (404, 409):
                        log.exception("syncing %s failed", pod.metadata.name)
                except Exception:
                    log.exception("syncing %s failed", pod.metadata.name)
            for uid in set(self.running) - seen:  # pod object gone (force-deleted): stop its container
                self._podman("rm", "-f", "-t", "0", self.running.pop(uid).container, check=False)

    def sync(self, pod: Any) -> None:
        uid = pod.metadata.uid
        if pod.metadata.deletion_timestamp is not None:
            self._delete(pod)
            return
        if uid in self.finished or (pod.status.phase in ("Succeeded", "Failed")):
            return
        if uid not in self.running:
            self._start(pod)
            return
        self._check(pod)

    def _delete(self, pod: Any) -> None:
        uid = pod.metadata.uid
        rp = self.running.pop(uid, None)
        if rp is not None:
            grace = pod.metadata.deletion_grace_period_seconds or 0
            self._podman("stop", "-t", str(int(grace)), rp.container, check=False, timeout=grace + 60)
            self._podman("rm", "-f", rp.container, check=False)
        self.core.delete_namespaced_pod(
            pod.metadata.name,
            pod.metadata.namespace,
            grace_period_seconds=0,
            body=kubernetes.client.V1DeleteOptions(grace_period_seconds=0, preconditions={"uid": uid}),
        )
        self.finished.discard(uid)

    def _set_status(self, pod: Any, **status: Any) -> None:
        """Replace the pod's status the way the kubelet's status manager does (read, modify, write)."""
        fresh = self.core.read_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace)
        if fresh.metadata.uid != pod.metadata.uid:
            return
        for key, value in status.items():
            setattr(fresh.status, key, value)
        self.core.replace_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, fresh)

    def _conditions(self, pod: Any, ready: bool, initialized: bool = True) -> list[Any]:
        now = _now()
        keep = [c for c in (pod.status.conditions or []) if c.type == "PodScheduled"]
        out = list(keep)
        for type_, status in (
            ("PodReadyToStartContainers", "True"),
            ("Initialized", "True" if initialized else "False"),
            ("ContainersReady", "True" if ready else "False"),
            ("Ready", "True" if ready else "False"),
        ):
            out.append(kubernetes.client.V1PodCondition(type=type_, status=status, last_transition_time=now))
        return out

    def _waiting(self, pod: Any, reason: str, message: str) -> None:
        c = pod.spec.containers[0]
        self._set_status(
            pod,
            phase="Pending",
            conditions=self._conditions(pod, ready=False),
            container_statuses=[
                kubernetes.client.V1ContainerStatus(
                    name=c.name,
                    image=c.image,
                    image_id="",
                    ready=False,
                    restart_count=0,
                    started=False,
                    state=kubernetes.client.V1ContainerState(
                        waiting=kubernetes.client.V1ContainerStateWaiting(reason=reason, message=message)
                    ),
                )
            ],
        )

    def _start(self, pod: Any) -> None:
        c = pod.spec.containers[0] if pod.spec.containers else None
        try:
            args = self.podman_args(pod)
        except PodConfigError as exc:
            self._waiting(pod, "CreateContainerConfigError", str(exc))
            return
        except _ImageMissing as exc:
            self._waiting(pod, exc.reason, exc.message)
            return
        except _VolumeNotReady as exc:
            self._waiting(pod, "ContainerCreating", str(exc))
            return
        name = f"k8s_{c.name}_{pod.metadata.name}_{pod.metadata.namespace}_{pod.metadata.uid[:8]}"
        self._podman("rm", "-f", name, check=False)
        self.launched.append([f"{pod.metadata.namespace}/{pod.metadata.name}", *args])
        proc = self._podman("run", "-d", "--name", name, *args, check=False)
        if proc.returncode != 0:
            self._waiting(pod, "RunContainerError", proc.stderr.strip()[-1000:])
            return
        started = time.time()
        deadline = pod.spec.active_deadline_seconds
        self.running[pod.metadata.uid] = RunningPod(
            pod.metadata.uid, name, started, started + deadline if deadline else None
        )
        now = _now()
        image_id = self._podman("image", "inspect", "-f", "{{.Id}}", c.image, check=False).stdout.strip()
        self._set_status(
            pod,
            phase="Running",
            start_time=now,
            host_ip="127.0.0.1",
            conditions=self._conditions(pod, ready=True),
            container_statuses=[
                kubernetes.client.V1ContainerStatus(
                    name=c.name,
                    image=c.image,
                    image_id=image_id,
                    ready=True,
                    restart_count=0,
                    started=True,
                    container_id=f"podman://{name}",
                    state=kubernetes.client.V1ContainerState(
                        running=kubernetes.client.V1ContainerStateRunning(started_at=now)
                    ),
                )
            ],
        )

    def _check(self, pod: Any) -> None:
        rp = self.running[pod.metadata.uid]
        if rp.deadline is not None and time.time() > rp.deadline and not rp.stopped_by_us:
            rp.stopped_by_us = "deadline"
            grace = pod.spec.termination_grace_period_seconds or 0
            self._podman("stop", "-t", str(int(min(grace, 2))), rp.container, check=False)
        info = self._podman("inspect", rp.container, check=False)
        if info.returncode != 0:
            return
        state = json.loads(info.stdout)[0]["State"]
        if state.get("Running") or state.get("Status") in ("created", "configured", "running", "stopping"):
            return
        self._terminated(pod, rp, state)

    def _terminated(self, pod: Any, rp: RunningPod, state: dict[str, Any]) -> None:
        c = pod.spec.containers[0]
        code = int(state.get("ExitCode", 0))
        logs = self._podman("logs", rp.container, check=False)
        output = (logs.stdout + logs.stderr)[-4096:]
        (self.state_dir / f"{pod.metadata.namespace}_{pod.metadata.name}.log").write_text(
            logs.stdout + logs.stderr
        )
        oom = bool(state.get("OOMKilled")) or (code == 137 and not rp.stopped_by_us)
        reason = "OOMKilled" if oom else ("Completed" if code == 0 else "Error")
        message = (
            output.strip() if code != 0 and c.termination_message_policy == "FallbackToLogsOnError" else None
        )
        if message:
            message = "\n".join(message.splitlines()[-80:])[-2048:]
        terminated = kubernetes.client.V1ContainerStateTerminated(
            exit_code=code,
            reason=reason,
            message=message,
            started_at=datetime.fromtimestamp(rp.started, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            finished_at=_now(),
            container_id=f"podman://{rp.container}",
        )
        phase = "Succeeded" if code == 0 and not rp.stopped_by_us else "Failed"
        extra: dict[str, Any] = {}
        if rp.stopped_by_us == "deadline":
            extra = {
                "reason": "DeadlineExceeded",
                "message": "Pod was active on the node longer than the specified deadline",
            }
        self._set_status(
            pod,
            phase=phase,
            conditions=self._conditions(pod, ready=False),
            container_statuses=[
                kubernetes.client.V1ContainerStatus(
                    name=c.name,
                    image=c.image,
                    image_id="",
                    ready=False,
                    restart_count=0,
                    started=False,
                    container_id=f"podman://{rp.container}",
                    state=kubernetes.client.V1ContainerState(terminated=terminated),
                )
            ],
            **extra,
        )
        self._podman("rm", "-f", rp.container, check=False)
        self.running.pop(pod.metadata.uid, None)
        self.finished.add(pod.metadata.uid)
        self.history.append((f"{pod.metadata.namespace}/{pod.metadata.name}", rp.started, time.time()))

    # --- pod spec -> podman ---------------------------------------------------------------------------

    def podman_args(self, pod: Any) -> list[str]:
        """``podman run`` arguments (after ``run -d --name``) for the pod's container."""
        spec = pod.spec
        if len(spec.containers) != 1 or spec.init_containers or spec.ephemeral_containers:
            raise PodConfigError("this node runs single-container pods without init containers")
        c = spec.containers[0]
        psc = spec.security_context or kubernetes.client.V1PodSecurityContext()
        csc = c.security_context or kubernetes.client.V1SecurityContext()
        args = ["--network=none", f"--pids-limit={PIDS_LIMIT}", "--pull=never"]
        self._require_image(c)

        uid = csc.run_as_user if csc.run_as_user is not None else psc.run_as_user
        gid = csc.run_as_group if csc.run_as_group is not None else psc.run_as_group
        non_root = csc.run_as_non_root if csc.run_as_non_root is not None else psc.run_as_non_root
        if uid is None:
            image_user = self._podman("image", "inspect", "-f", "{{.Config.User}}", c.image).stdout.strip()
            name = image_user.split(":")[0]
            uid = 0 if name in ("", "root") else int(name) if name.isdigit() else None
            if non_root and uid is None:
                raise PodConfigError(f"container has runAsNonRoot and image has non-numeric user ({name})")
        if non_root and uid == 0:
            raise PodConfigError("container has runAsNonRoot and image will run as root")
        if uid is not None:
            args.append(
                f"--user={uid}:{gid if gid is not None else uid}" if gid is not None else f"--user={uid}"
            )
        groups = list(psc.supplemental_groups or [])
        if psc.fs_group is not None:
            groups.append(psc.fs_group)
        args += [f"--group-add={g}" for g in groups]

        if csc.read_only_root_filesystem:
            args.append("--read-only")
        if csc.allow_privilege_escalation is False:
            args.append("--security-opt=no-new-privileges")
        if csc.privileged:
            raise PodConfigError("privileged containers are not run on the SfM node")
        caps = csc.capabilities
        if caps is not None:
            args += [f"--cap-drop={x}" for x in caps.drop or []]
            args += [f"--cap-add={x}" for x in caps.add or []]
        seccomp = csc.seccomp_profile or psc.seccomp_profile
        if seccomp is not None and seccomp.type == "Unconfined":
            args.append("--security-opt=seccomp=unconfined")

        limits = (c.resources.limits or {}) if c.resources else {}
        if "memory" in limits:
            mem = int(parse_quantity(limits["memory"]))
            args += [f"--memory={mem}b", f"--memory-swap={mem}b"]
        if "cpu" in limits:
            args.append(f"--cpus={parse_quantity(limits['cpu']):g}")

        for e in c.env or []:
            if e.value_from is not None:
                raise PodConfigError(f"env {e.name}: valueFrom is not supported on this node")
            args.append(f"--env={e.name}={e.value or ''}")
        if c.working_dir:
            args.append(f"--workdir={c.working_dir}")
        args += self._mounts(pod, c, psc.fs_group)

        tail: list[str] = []
        if c.command:
            args.append(f"--entrypoint={json.dumps(c.command)}")
        tail = list(c.args or [])
        return [*args, c.image, *tail]

    def _require_image(self, c: Any) -> None:
        if self._podman("image", "exists", c.image, check=False).returncode == 0:
            return
        if c.image_pull_policy == "Never":
            raise _ImageMissing(
                "ErrImageNeverPull", f'Container image "{c.image}" is not present with pull policy of Never'
            )
        raise _ImageMissing(
            "ImagePullBackOff", f'Back-off pulling image "{c.image}": no registry reachable from this node'
        )

    def _mounts(self, pod: Any, c: Any, fs_group: int | None) -> list[str]:
        volumes = {v.name: v for v in pod.spec.volumes or []}
        out = []
        for m in c.volume_mounts or []:
            v = volumes.get(m.name)
            if v is None:
                raise PodConfigError(f"volumeMount {m.name}: no such volume")
            if v.persistent_volume_claim is not None:
                root = self._pv_path(pod.metadata.namespace, v.persistent_volume_claim.claim_name)
                read_only = bool(m.read_only or v.persistent_volume_claim.read_only)
            elif v.empty_dir is not None:
                root = self.state_dir / "pods" / pod.metadata.uid / "volumes" / m.name
                root.mkdir(parents=True, exist_ok=True)
                root.chmod(0o777)
                read_only = bool(m.read_only)
            else:
                raise PodConfigError(
                    f"volume {m.name}: only persistentVolumeClaim and emptyDir are supported"
                )
            src = root
            if m.sub_path:
                sub = PurePosixPath(m.sub_path)
                if sub.is_absolute() or ".." in sub.parts:
                    raise PodConfigError(f"volumeMount {m.name}: subPath {m.sub_path!r} must be relative")
                src = root.joinpath(*sub.parts)
                if src.is_symlink():
                    raise PodConfigError(f"volumeMount {m.name}: subPath {m.sub_path!r} is a symlink")
                src.mkdir(parents=True, exist_ok=True)
            if fs_group is not None and v.persistent_volume_claim is not None:
                _apply_fs_group(src, fs_group, writable=not read_only)
            out.append(f"--mount=type=bind,src={src},dst={m.mount_path}{',ro=true' if read_only else ''}")
        return out

    def _pv_path(self, namespace: str, claim: str) -> Path:
        try:
            pvc = self.core.read_namespaced_persistent_volume_claim(claim, namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise _VolumeNotReady(f'persistentvolumeclaim "{claim}" not found') from None
            raise
        if pvc.status.phase != "Bound" or not pvc.spec.volume_name:
            raise _VolumeNotReady(f'persistentvolumeclaim "{claim}" is not bound')
        pv = self.core.read_persistent_volume(pvc.spec.volume_name)
        source = pv.spec.local or pv.spec.host_path
        if source is None:
            raise PodConfigError(
                f"PersistentVolume {pv.metadata.name}: only local and hostPath volumes are supported"
            )
        return Path(source.path)


class _ImageMissing(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


class _VolumeNotReady(Exception):
    pass


def _apply_fs_group(path: Path, gid: int, writable: bool) -> None:
    """What the kubelet's SetVolumeOwnership does: group ownership and group access for fsGroup."""
    dir_bits, file_bits = (0o2070, 0o060) if writable else (0o2050, 0o040)
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, d) for d in dirs)]:
            os.chown(name, -1, gid, follow_symlinks=False)
            os.chmod(name, os.stat(name).st_mode | dir_bits)
        for f in files:
            p = os.path.join(root, f)
            if os.path.islink(p):
                continue
            os.chown(p, -1, gid, follow_symlinks=False)
            os.chmod(p, os.stat(p).st_mode | file_bits)


def have_podman() -> bool:
    return shutil.which("podman") is not None and shutil.which("runc") is not None
