#!/usr/bin/env python3
"""A real S3 server on loopback: versitygw with its posix backend, over TLS, for tests and development.

Why a real server: the training stage hands a GPU worker presigned URLs, so what must be tested is the
server's side of them: signatures checked (a changed key, signature or expiry is refused), expiry
enforced, and conditional writes (`If-None-Match: *` creates an object once, then 412). In-process fakes
(moto's server mode) check none of that. TLS because the worker accepts only https URLs; the certificate
comes from a throw-away CA, which clients trust through its bundle file (boto3: `verify=` or
AWS_CA_BUNDLE; urllib: an ssl context or SSL_CERT_FILE).

    python3 hack/s3server.py up     # start one under .s3/ (or reuse it); prints the variables to export
    python3 hack/s3server.py down   # stop it and drop its objects
    python3 hack/s3server.py env    # print the variables of the running one

As a library (tests/conftest.py's `s3_server` fixture): `start(root)` -> `S3Server`, `stop(server)`.
Each start generates a new CA, server certificate and root credentials; the objects live in
`root/data/` (a folder per bucket). The binary comes from hack/s3/build.sh (`make s3-tools`), cached in
~/.cache/sharpml/versitygw-<version>/. Standard library and `cryptography` only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "hack" / "s3" / "build.sh"
DEV_ROOT = REPO / ".s3"
REGION = "us-east-1"
STATE_FILE = "server.json"


class S3ServerError(RuntimeError):
    """The S3 server could not be started or reached; the message says why and what to do."""


@dataclass(frozen=True)
class S3Server:
    """A running versitygw, and everything a client needs to reach it."""

    endpoint: str
    region: str
    access_key_id: str
    secret_access_key: str
    #: PEM file of the throw-away CA that signed the server's certificate: what clients must trust.
    ca_bundle: Path
    #: The posix backend's top folder: one sub-folder per bucket.
    data_dir: Path
    log: Path
    pid: int

    def __repr__(self) -> str:  # the secret stays out of test reports and logs
        return f"S3Server(endpoint={self.endpoint!r}, pid={self.pid}, data_dir={str(self.data_dir)!r})"

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    def env(self) -> dict[str, str]:
        """The operator's S3 settings (sharpml/settings.py) and AWS_CA_BUNDLE, pointing at this server."""
        return {
            "SHARPML_S3_ENDPOINT": self.endpoint,
            "SHARPML_S3_REGION": self.region,
            "SHARPML_S3_ACCESS_KEY_ID": self.access_key_id,
            "SHARPML_S3_SECRET_ACCESS_KEY": self.secret_access_key,
            "SHARPML_S3_CA_BUNDLE": str(self.ca_bundle),
            "AWS_CA_BUNDLE": str(self.ca_bundle),
        }

    def ssl_context(self) -> ssl.SSLContext:
        """An ssl context trusting only this server's CA (for urllib)."""
        return ssl.create_default_context(cafile=str(self.ca_bundle))


def binary_path() -> Path:
    """Where the pinned versitygw lives (asks build.sh, so the version has one source: hack/s3/go.mod)."""
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--print-path"], check=True, capture_output=True, text=True
    ).stdout.strip()
    return Path(out)


# --- certificates -----------------------------------------------------------------------------------


def write_pki(pki: Path, *, days: int = 7) -> Path:
    """A new CA and a server certificate for 127.0.0.1 and localhost signed by it. Returns the CA bundle.

    Short-lived and regenerated on every start: nothing outside this one server ever trusts the CA.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    pki.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    valid_from, valid_to = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"sharpml-s3-test-ca-{secrets.token_hex(4)}")]
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_to)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_to)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    (pki / "ca.crt").write_bytes(ca_cert.public_bytes(pem))
    (pki / "server.crt").write_bytes(cert.public_bytes(pem))
    key_file = pki / "server.key"
    key_file.touch(mode=0o600)
    key_file.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return pki / "ca.crt"  # the CA's key is never written: no one can sign anything else with it


# --- process ----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _xattrs_work(folder: Path) -> bool:
    """Whether the posix backend can keep object metadata in extended attributes here (else: a sidecar)."""
    probe = folder / ".xattr-probe"
    probe.touch()
    try:
        os.setxattr(probe, "user.sharpml-probe", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


def _answers(endpoint: str, ca_bundle: Path, timeout: float = 2.0) -> bool:
    """True when an HTTP answer comes back over TLS verified against our CA (an unsigned call: 403)."""
    ctx = ssl.create_default_context(cafile=str(ca_bundle))
    try:
        with urllib.request.urlopen(endpoint + "/", context=ctx, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ssl.SSLError):
        return False


def _log_tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) or "(empty)"
    except OSError:
        return "(no log)"


def _pid_is_ours(pid: int, binary: str) -> bool:
    """True when `pid` runs `binary` (a pid from a state file may have been reused since)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and cmdline[0].decode(errors="replace") == binary


def start(
    root: Path,
    *,
    port: int | None = None,
    region: str = REGION,
    binary: Path | None = None,
    timeout: float = 30.0,
) -> S3Server:
    """Start versitygw on 127.0.0.1 (a free port unless given) with its objects under `root/data`.

    New CA, certificate and root credentials each time. Returns once the server answers over TLS; raises
    S3ServerError with the server's log when it exits or does not answer within `timeout` seconds.
    """
    binary = binary or binary_path()
    if not os.access(binary, os.X_OK):
        raise S3ServerError(
            f"versitygw is not built ({binary} missing). Build it with `make s3-tools` "
            "(runs hack/s3/build.sh; the first build takes a few minutes, later ones are a no-op)."
        )
    root = root.resolve()
    data, meta = root / "data", root / "meta"
    data.mkdir(parents=True, exist_ok=True)
    ca_bundle = write_pki(root / "pki")
    access, secret = "sharpml" + secrets.token_hex(6), secrets.token_urlsafe(30)
    backend = ["posix"] if _xattrs_work(data) else ["posix", "--sidecar", str(meta)]
    if "--sidecar" in backend:
        meta.mkdir(exist_ok=True)
    log = root / "versitygw.log"
    for attempt in range(3):  # a free port can be taken by someone else before versitygw binds it
        chosen = port or _free_port()
        endpoint = f"https://127.0.0.1:{chosen}"
        cmd = [
            str(binary), "--port", f"127.0.0.1:{chosen}", "--region", region,
            "--cert", str(root / "pki" / "server.crt"), "--key", str(root / "pki" / "server.key"),
            "--quiet", *backend, str(data),
        ]  # fmt: skip
        with log.open("ab") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {' '.join(cmd)}\n".encode())
            out.flush()
            # Credentials through the environment (versitygw reads ROOT_*), never on the command line.
            env = {**os.environ, "ROOT_ACCESS_KEY_ID": access, "ROOT_SECRET_ACCESS_KEY": secret}
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                cwd=root, start_new_session=True,
            )  # fmt: skip
        server = S3Server(endpoint, region, access, secret, ca_bundle, data, log, proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if _answers(endpoint, ca_bundle):
                return server
            time.sleep(0.1)
        else:
            _terminate(proc.pid, binary=str(binary))
            raise S3ServerError(
                f"versitygw did not answer at {endpoint} within {timeout:.0f}s; last lines of {log}:\n"
                + _log_tail(log)
            )
        tail = _log_tail(log)
        if port is None and "address already in use" in tail and attempt < 2:
            continue
        raise S3ServerError(f"versitygw exited with code {proc.returncode}; last lines of {log}:\n{tail}")
    raise AssertionError("unreachable")


def _terminate(pid: int, *, binary: str, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`; returns once the process is gone (and reaped, if ours)."""
    if not _pid_is_ours(pid, binary):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):  # our child: reap it, or it lingers as a zombie
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        if not _pid_is_ours(pid, binary):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def stop(server: S3Server, *, binary: Path | None = None) -> None:
    """Stop the server (SIGTERM, then SIGKILL); idempotent. Its objects stay in `data_dir`."""
    _terminate(server.pid, binary=str(binary or binary_path()))


def is_running(server: S3Server) -> bool:
    """True when the server's process is alive and it answers over TLS."""
    return _pid_is_ours(server.pid, str(binary_path())) and _answers(server.endpoint, server.ca_bundle)


# --- development: one server per checkout under .s3/ --------------------------------------------------


def _load(root: Path) -> S3Server | None:
    try:
        raw = json.loads((root / STATE_FILE).read_text())
        return S3Server(**{**raw, "ca_bundle": Path(raw["ca_bundle"]), "data_dir": Path(raw["data_dir"]),
                           "log": Path(raw["log"])})  # fmt: skip
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _save(root: Path, server: S3Server) -> None:
    path = root / STATE_FILE
    path.touch(mode=0o600)  # it holds the root secret
    path.write_text(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in asdict(server).items()}))


def up(root: Path = DEV_ROOT, port: int | None = None) -> tuple[S3Server, bool]:
    """The development server: reuse the running one, or start one. Returns it and whether this started it."""
    current = _load(root)
    if current is not None and is_running(current):
        return current, False
    if current is not None:
        stop(current)
    server = start(root, port=port)
    _save(root, server)
    return server, True


def down(root: Path = DEV_ROOT) -> None:
    """Stop the development server and drop its objects, certificates and credentials."""
    current = _load(root)
    if current is not None:
        stop(current)
    shutil.rmtree(root, ignore_errors=True)


def _exports(server: S3Server) -> str:
    return "\n".join(f"export {k}={v}" for k, v in server.env().items())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["up", "down", "env"])
    p.add_argument("--port", type=int, help="up: listen on this port (default: a free one)")
    args = p.parse_args(argv)
    try:
        if args.action == "up":
            server, started = up(port=args.port)
            print(f"versitygw {'started' if started else 'already running'} at {server.endpoint} "
                  f"(objects in {server.data_dir}, log {server.log})", file=sys.stderr)  # fmt: skip
            print(_exports(server))
        elif args.action == "down":
            down()
            print("S3 server stopped", file=sys.stderr)
        else:
            server = _load(DEV_ROOT)
            if server is None or not is_running(server):
                print("not running (python3 hack/s3server.py up)", file=sys.stderr)
                return 1
            print(_exports(server))
    except S3ServerError as e:
        print(f"s3server: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
