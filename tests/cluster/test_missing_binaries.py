"""Without the control plane binaries, cluster tests fail loudly with the command to run; they never skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path) -> dict[str, str]:
    # An empty cache and other ports: nothing found, and nothing of a running control plane touched.
    return {
        **os.environ,
        "SHARPML_CACHE": str(tmp_path / "empty-cache"),
        "SHARPML_CLUSTER_PORT_BASE": "26400",
    }


def test_cluster_up_names_the_build_target(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "hack" / "devcluster.py"), "up"],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=60,
    )
    assert out.returncode == 1
    assert "control plane binaries missing" in out.stderr
    assert "make k8s-tools" in out.stderr


def test_fixture_fails_instead_of_skipping(tmp_path):
    """A test that needs the control plane errors (pytest exit 1), with the build command in the report."""
    out = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
            "tests/cluster/test_control_plane.py::test_kubectl_matches_apiserver_minor",
        ],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        cwd=REPO,
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 1, out.stdout
    assert "1 error" in out.stdout and "skipped" not in out.stdout
    assert "development control plane unavailable" in out.stdout
    assert "make k8s-tools" in out.stdout
