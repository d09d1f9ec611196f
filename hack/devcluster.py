#!/usr/bin/env python3
"""The development control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler on loopback.

Why a real control plane: the operator's correctness is Kubernetes semantics (schema validation, status
subresource, finalizers, owner references, scheduling onto the SfM node). This is the envtest idea plus the
controller-manager (garbage collection, namespaces, service accounts) and the scheduler (nodeSelector and
taints), with no kubelet: Node objects are plain API objects.

    python3 hack/devcluster.py up      # start or reuse it; writes .cluster/kubeconfig, .cluster/bin/kubectl
    python3 hack/devcluster.py down    # stop it and drop its etcd data (certificates are kept)
    python3 hack/devcluster.py status  # exit 0 when it answers /readyz

Binaries come from hack/k8s-tools/build.sh (cached in ~/.cache/sharpml/k8s-<version>/). Only the standard
library and the openssl command are used, so the pytest fixture and `make cluster-up` share this file.
Ports: SHARPML_CLUSTER_PORT_BASE (default 16400) + 43 apiserver, +79/+80 etcd client/peer, +57 controller
manager, +59 scheduler; all bound to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "hack" / "k8s-tools" / "build.sh"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
BINARIES = (*COMPONENTS, "kubectl")
SERVICE_CIDR = "10.96.0.0/24"  # allocation range only: nothing routes to it
PKI_MARKER = "complete-v2"  # bump when ensure_pki makes a different set of files


class ControlPlaneError(RuntimeError):
    """The control plane could not be started; the message says what to do."""


@dataclass(frozen=True)
class Layout:
    """Where one checkout keeps its control plane state, and the ports it uses."""

    root: Path
    bin_dir: Path
    port_base: int

    @property
    def apiserver_port(self) -> int:
        return self.port_base + 43

    @property
    def etcd_client_port(self) -> int:
        return self.port_base + 79

    @property
    def etcd_peer_port(self) -> int:
        return self.port_base + 80

    @property
    def kcm_port(self) -> int:
        return self.port_base + 57

    @property
    def scheduler_port(self) -> int:
        return self.port_base + 59

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def kubectl(self) -> Path:
        return self.root / "bin" / "kubectl"


def binary_dir() -> Path:
    """The cache folder of the pinned release (asks build.sh, so the version has one source: go.mod)."""
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--print-dir"], check=True, capture_output=True, text=True
    ).stdout.strip()
    return Path(out)


def default_layout() -> Layout:
    """The layout for this checkout: .cluster/ in the repository, ports from SHARPML_CLUSTER_PORT_BASE."""
    return Layout(
        root=REPO / ".cluster",
        bin_dir=binary_dir(),
        port_base=int(os.environ.get("SHARPML_CLUSTER_PORT_BASE", "16400")),
    )


def missing_binaries(layout: Layout) -> list[str]:
    """Names of the control plane binaries that have not been built yet."""
    return [b for b in BINARIES if not os.access(layout.bin_dir / b, os.X_OK)]


# --- certificates -----------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _new_ca(pki: Path, name: str, subject: str) -> None:
    _openssl("genrsa", "-out", f"{name}.key", "2048", cwd=pki)
    _openssl(
        "req", "-x509", "-new", "-key", f"{name}.key", "-subj", subject, "-days", "3650",
        "-sha256", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", "-out", f"{name}.crt", cwd=pki,
    )  # fmt: skip


def _sign(pki: Path, name: str, subject: str, ext: str, ca: str = "ca") -> None:
    """A key and a certificate signed by a local CA; `ext` is an openssl extension section body."""
    (pki / f"{name}.ext").write_text(ext)
    _openssl("genrsa", "-out", f"{name}.key", "2048", cwd=pki)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=pki)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
        "-days", "3650", "-sha256", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=pki,
    )  # fmt: skip


def ensure_pki(layout: Layout) -> None:
    """CA, apiserver serving cert, client certs for admin/controller-manager/scheduler, SA signing keys.

    Generated once per checkout and kept across `down`, so a kubeconfig copied elsewhere keeps working.
    """
    pki = layout.pki
    if (pki / PKI_MARKER).exists():
        return
    import shutil

    shutil.rmtree(pki, ignore_errors=True)  # an older or half-written set: start over
    pki.mkdir(parents=True)
    _new_ca(pki, "ca", "/CN=sharpml-dev-ca")
    # Front proxy (aggregation layer) CA: without it every component logs missing requestheader CA errors.
    _new_ca(pki, "front-proxy-ca", "/CN=sharpml-dev-front-proxy-ca")
    client = (
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n"
    )
    sans = ",".join(
        [
            "IP:127.0.0.1",
            "IP:10.96.0.1",
            "DNS:localhost",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
        ]
    )
    server = (
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage=serverAuth\nsubjectAltName={sans}\n"
    )
    _sign(pki, "apiserver", "/CN=kube-apiserver", server)
    _sign(pki, "admin", "/O=system:masters/CN=sharpml-dev-admin", client)
    _sign(pki, "kube-controller-manager", "/CN=system:kube-controller-manager", client)
    _sign(pki, "kube-scheduler", "/CN=system:kube-scheduler", client)
    _sign(pki, "front-proxy-client", "/CN=front-proxy-client", client, ca="front-proxy-ca")
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    for p in pki.iterdir():
        if p.suffix == ".key":
            p.chmod(0o600)
    (pki / PKI_MARKER).write_text("ok\n")


def _write_kubeconfig(layout: Layout, path: Path, user: str) -> None:
    """A kubeconfig for one client certificate (JSON is valid kubeconfig YAML)."""
    pki = layout.pki
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "sharpml-dev",
                "cluster": {"server": layout.server, "certificate-authority": str(pki / "ca.crt")},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate": str(pki / f"{user}.crt"),
                    "client-key": str(pki / f"{user}.key"),
                },
            }
        ],
        "contexts": [{"name": "sharpml-dev", "context": {"cluster": "sharpml-dev", "user": user}}],
        "current-context": "sharpml-dev",
    }
    path.write_text(json.dumps(cfg, indent=2) + "\n")


def write_client_files(layout: Layout) -> None:
    """The admin kubeconfig, one per component, and the .cluster/bin/kubectl wrapper."""
    _write_kubeconfig(layout, layout.kubeconfig, "admin")
    for comp in ("kube-controller-manager", "kube-scheduler"):
        _write_kubeconfig(layout, layout.pki / f"{comp}.kubeconfig", comp)
    layout.kubectl.parent.mkdir(parents=True, exist_ok=True)
    layout.kubectl.write_text(
        "#!/bin/sh\n"
        "# kubectl of the pinned release, aimed at the development control plane unless KUBECONFIG is set.\n"
        f'KUBECONFIG="${{KUBECONFIG:-{layout.kubeconfig}}}" exec "{layout.bin_dir / "kubectl"}" "$@"\n'
    )
    layout.kubectl.chmod(0o755)


# --- processes --------------------------------------------------------------------------------------


def _command(layout: Layout, name: str) -> list[str]:
    """The command line of one component: the flags are where the cluster's behaviour is decided."""
    pki, b = layout.pki, layout.bin_dir
    if name == "etcd":
        return [
            str(b / "etcd"),
            "--name=sharpml-dev",
            f"--data-dir={layout.root / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{layout.etcd_client_port}",
            f"--advertise-client-urls=http://127.0.0.1:{layout.etcd_client_port}",
            f"--listen-peer-urls=http://127.0.0.1:{layout.etcd_peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{layout.etcd_peer_port}",
            f"--initial-cluster=sharpml-dev=http://127.0.0.1:{layout.etcd_peer_port}",
            "--unsafe-no-fsync",  # a throwaway dev store: speed over durability
            "--log-level=warn",
        ]
    if name == "kube-apiserver":
        return [
            str(b / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{layout.etcd_client_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={layout.apiserver_port}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
            "--authorization-mode=Node,RBAC",
            # PodSecurity is in the default set; named so that nobody removes it by accident.
            "--enable-admission-plugins=NodeRestriction,PodSecurity",
            # As kubeadm does: privileged pods are allowed by the API, and Pod Security decides per namespace.
            "--allow-privileged=true",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--cert-dir={layout.run / 'apiserver-certs'}",
            "--profiling=false",
            "--v=1",
        ]
    common = [
        "--bind-address=127.0.0.1",
        "--leader-elect=false",
        "--profiling=false",
        "--v=1",
    ]
    if name == "kube-controller-manager":
        kc = pki / "kube-controller-manager.kubeconfig"
        return [
            str(b / "kube-controller-manager"),
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            f"--secure-port={layout.kcm_port}",
            f"--cert-dir={layout.run / 'kcm-certs'}",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            # There is no kubelet: Node objects never heartbeat, so the node lifecycle controller would mark
            # them NotReady/unreachable and taint-evict every pod. Everything else (garbage collector,
            # namespace, service account, job, ...) runs as in a real cluster.
            "--controllers=*,-node-lifecycle-controller,-taint-eviction-controller",
            *common,
        ]
    if name == "kube-scheduler":
        kc = pki / "kube-scheduler.kubeconfig"
        return [
            str(b / "kube-scheduler"),
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            f"--secure-port={layout.scheduler_port}",
            f"--cert-dir={layout.run / 'scheduler-certs'}",
            *common,
        ]
    raise ValueError(name)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own exited child not yet reaped) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _read_pid(layout: Layout, name: str) -> int | None:
    try:
        pid = int((layout.run / f"{name}.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def _start(layout: Layout, name: str) -> subprocess.Popen[bytes]:
    """Start one component detached from the caller (own session), logging to .cluster/logs/NAME.log."""
    layout.logs.mkdir(parents=True, exist_ok=True)
    layout.run.mkdir(parents=True, exist_ok=True)
    log = (layout.logs / f"{name}.log").open("ab")
    log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {name}\n".encode())
    log.flush()
    proc = subprocess.Popen(
        _command(layout, name),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=layout.root,
    )
    log.close()
    (layout.run / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc


def _ssl_context(layout: Layout) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(layout.pki / "ca.crt"))
    ctx.load_cert_chain(str(layout.pki / "admin.crt"), str(layout.pki / "admin.key"))
    return ctx


def _get(layout: Layout, path: str, timeout: float = 2.0) -> tuple[int, str]:
    """GET against the apiserver as admin; (status, body), status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(layout.server + path, context=_ssl_context(layout), timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (OSError, ssl.SSLError):
        return 0, ""


def is_ready(layout: Layout) -> bool:
    """True when the apiserver answers /readyz and the controller manager and scheduler are running."""
    if not (layout.pki / PKI_MARKER).exists() or not layout.kubeconfig.exists():
        return False
    if any(_read_pid(layout, c) is None for c in COMPONENTS):
        return False
    return _get(layout, "/readyz")[0] == 200


def _log_tail(layout: Layout, name: str, lines: int = 25) -> str:
    try:
        return "\n".join((layout.logs / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait(layout: Layout, name: str, proc: subprocess.Popen[bytes], check, timeout: float) -> None:
    """Wait until `check()` holds; fail with the component's log tail if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ControlPlaneError(
                f"{name} exited with code {proc.returncode}; last lines of {layout.logs / (name + '.log')}:\n"
                + _log_tail(layout, name)
            )
        if check():
            return
        time.sleep(0.25)
    raise ControlPlaneError(
        f"{name} not ready after {timeout:.0f}s; last lines of its log:\n" + _log_tail(layout, name)
    )


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def up(layout: Layout | None = None, timeout: float = 120.0) -> bool:
    """Start the control plane, or reuse a running one. Returns True when this call started it."""
    layout = layout or default_layout()
    missing = missing_binaries(layout)
    if missing:
        raise ControlPlaneError(
            f"control plane binaries missing in {layout.bin_dir}: {', '.join(missing)}. "
            "Build them first with `make k8s-tools` (runs hack/k8s-tools/build.sh; the first build takes a "
            "while, see README 'Development control plane')."
        )
    if is_ready(layout):
        write_client_files(layout)  # cheap; refreshes the kubectl wrapper if the cache moved
        return False
    down(layout, wipe=False)  # half-started leftovers: stop them, keep data
    for port in (layout.etcd_client_port, layout.etcd_peer_port, layout.apiserver_port,
                 layout.kcm_port, layout.scheduler_port):  # fmt: skip
        if not _port_free(port):
            raise ControlPlaneError(
                f"127.0.0.1:{port} is in use by another process; stop it, or pick other ports with "
                "SHARPML_CLUSTER_PORT_BASE (another checkout's control plane, perhaps)."
            )
    layout.root.mkdir(parents=True, exist_ok=True)
    ensure_pki(layout)
    write_client_files(layout)
    t0 = time.monotonic()
    etcd = _start(layout, "etcd")
    _wait(layout, "etcd", etcd, lambda: not _port_free(layout.etcd_client_port), timeout)
    api = _start(layout, "kube-apiserver")
    _wait(layout, "kube-apiserver", api, lambda: _get(layout, "/readyz")[0] == 200, timeout)
    kcm = _start(layout, "kube-controller-manager")
    sched = _start(layout, "kube-scheduler")
    _wait(layout, "kube-controller-manager", kcm, lambda: not _port_free(layout.kcm_port), timeout)
    _wait(layout, "kube-scheduler", sched, lambda: not _port_free(layout.scheduler_port), timeout)
    print(
        f"control plane up in {time.monotonic() - t0:.1f}s at {layout.server}\n"
        f"  export KUBECONFIG={layout.kubeconfig}\n  {layout.kubectl} get --raw /readyz",
        file=sys.stderr,
    )
    return True


def down(layout: Layout | None = None, wipe: bool = True, timeout: float = 15.0) -> None:
    """Stop every component (SIGTERM, then SIGKILL); with `wipe`, drop etcd's data too. Idempotent."""
    layout = layout or default_layout()
    for name in reversed(COMPONENTS):
        pid = _read_pid(layout, name)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        (layout.run / f"{name}.pid").unlink(missing_ok=True)
    if wipe:
        import shutil

        shutil.rmtree(layout.root / "etcd", ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--keep-data", action="store_true", help="down: keep etcd's data for the next up")
    args = p.parse_args(argv)
    layout = default_layout()
    try:
        if args.action == "up":
            if not up(layout):
                print(f"control plane already running at {layout.server}", file=sys.stderr)
        elif args.action == "down":
            down(layout, wipe=not args.keep_data)
            print("control plane stopped", file=sys.stderr)
        else:
            ready = is_ready(layout)
            print("running" if ready else "not running")
            return 0 if ready else 1
    except ControlPlaneError as e:
        print(f"devcluster: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
