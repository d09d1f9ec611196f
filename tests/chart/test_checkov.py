"""checkov on the rendered chart: zero failed checks. Skips are justified next to them: per resource as
checkov.io/skipN annotations (CHECK=reason), for every resource in charts/checkov.yaml (a comment above
each)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.chart.conftest import EVERYTHING, REPO, Helm, dump

CONFIG = REPO / "charts" / "checkov.yaml"


def checkov() -> Path:
    """The checkov of hack/checkov.txt, in the venv `make chart-tools` makes (named by that file's hash)."""
    digest = hashlib.sha256((REPO / "hack/checkov.txt").read_bytes()).hexdigest()[:12]
    path = Path.home() / ".cache/sharpml/venvs" / f"checkov-{digest}" / "bin" / "checkov"
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make chart-tools`", pytrace=False)
    return path


@pytest.mark.parametrize("variant", [EVERYTHING, [*EVERYTHING, "rbac.clusterWide=true"]], ids=["ns", "wide"])
def test_no_failed_checks(helm: Helm, tmp_path: Path, variant: list[str]) -> None:
    docs = helm.template(*variant)
    dump(docs, tmp_path / "chart.yaml")
    proc = subprocess.run(
        [str(checkov()), "-d", str(tmp_path), "--config-file", str(CONFIG), "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(proc.stdout)
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert report["summary"]["failed"] == 0, failed
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["resource_count"] >= len(docs)  # (it counts some pod templates too)
    assert report["summary"]["passed"] > 200
    for skipped in report["results"]["skipped_checks"]:  # a reason with every per-resource skip
        assert len(skipped["check_result"]["suppress_comment"]) > 30, skipped["check_id"]


def test_global_skips_are_commented() -> None:
    lines = CONFIG.read_text().splitlines()
    skips = [i for i, line in enumerate(lines) if re.match(r"\s+- CKV_", line)]
    assert skips, "no skips: then drop this test"
    for i in skips:
        assert lines[i - 1].lstrip().startswith("#"), f"{lines[i]} has no reason above it"
