"""The chart's PrometheusRule under `promtool test rules` (promtool pinned in hack/k8s-tools/promtool), on
series that fire and series that don't (alerts_test.yaml), and the metrics it names are ones the API and
the operator export."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.chart.conftest import Helm, find, tool

HERE = Path(__file__).parent


def promtool_test(helm: Helm, tmp_path: Path, *sets: str) -> subprocess.CompletedProcess:
    rule = find(helm.template("monitoring.prometheusRule.enabled=true", *sets), "PrometheusRule")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    shutil.copy(HERE / "alerts_test.yaml", tmp_path)
    check = subprocess.run(
        [str(tool("promtool")), "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    return subprocess.run(
        [str(tool("promtool")), "test", "rules", "alerts_test.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_alerts_fire_and_stay_quiet(helm: Helm, tmp_path: Path) -> None:
    proc = promtool_test(helm, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_thresholds_are_the_values(helm: Helm, tmp_path: Path) -> None:
    """Lower thresholds (values) make the quiet series fire: promtool then reports each alert."""
    proc = promtool_test(
        helm,
        tmp_path,
        "monitoring.prometheusRule.queueDepth=40",
        "monitoring.prometheusRule.avgProcessingSeconds=300",
        "monitoring.prometheusRule.dataFreeBytes=70000000000",
        "monitoring.prometheusRule.memoryBytes=10000000000",
        "--set-json=monitoring.prometheusRule.failureRatio=0.04",
    )
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    for alert in ("QueueDeep", "ProcessingSlow", "DataVolumeLow", "MemoryHigh", "JobFailureRateHigh"):
        # the quiet group expected nothing and got this alert
        assert re.search(rf"alertname: SharpML{alert}, time: 1h10m,\s*exp:\[\],\s*got:\[\s*0:", out), alert


def test_alerts_name_exported_metrics(helm: Helm) -> None:
    """Each sharpml_* metric in the rules is defined in the operator's or the API's metrics module."""
    rule = find(helm.template("monitoring.prometheusRule.enabled=true"), "PrometheusRule")
    exprs = " ".join(r["expr"] for g in rule["spec"]["groups"] for r in g["rules"])
    used = {re.sub(r"_(sum|count|bucket)$", "", m) for m in re.findall(r"\bsharpml_\w+", exprs)}
    repo = HERE.parents[1]
    source = (repo / "operator/sharpml_operator/metrics.py").read_text() + (
        repo / "api/sharpml_api/metrics.py"
    ).read_text()
    for metric in used:
        assert f'"{metric}"' in source, metric
    assert "process_resident_memory_bytes" in exprs
