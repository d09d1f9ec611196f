"""The SharpJob CRD, as the real apiserver enforces it: examples apply, bad manifests are refused with
messages a user understands, status lives in its subresource, kopf's state survives, kubectl reads well."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from sharpml.contract import PROCESSING_DEFAULTS, TRAINING_DEFAULTS, TTL_SECONDS_AFTER_FINISHED

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("sharpjob-*.yaml"))
MINIMAL = yaml.safe_load((REPO / "examples" / "sharpjob-minimal.yaml").read_text())


def _create(cp, namespace: str, obj: dict, check: bool = False):
    return cp.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(obj), check=check)


def _job(**spec_changes) -> dict:
    job = copy.deepcopy(MINIMAL)
    job["spec"].update(spec_changes)
    return job


def test_examples_exist():
    assert {p.name for p in EXAMPLES} >= {"sharpjob-minimal.yaml", "sharpjob-full.yaml", "sharpjob-s3.yaml"}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_applies(control_plane, sharpjob_crd, namespace, example):
    """Every manifest in examples/ is accepted by the apiserver as written."""
    control_plane.kubectl("apply", "-n", namespace, "-f", str(example))
    name = yaml.safe_load(example.read_text())["metadata"]["name"]
    got = control_plane.get_json("sharpjob", name, "-n", namespace)
    assert got["spec"]["owner"]


def test_defaults_are_filled_in(control_plane, sharpjob_crd, namespace):
    """Omitted processing options and retention get the contract's defaults (the measured SfM
    configuration: 1600 px), filled in and stored in the object by the apiserver."""
    _create(control_plane, namespace, _job(), check=True)
    spec = control_plane.get_json("sj", "chair", "-n", namespace)["spec"]
    assert (
        spec["processing"]
        == PROCESSING_DEFAULTS
        == {
            "matcher": "auto",
            "mapper": "auto",
            "maxImageSize": 1600,
        }
    )
    expected = {"steps": 7000, "strategy": "mcmc", "maxGaussians": 1_000_000, "maxImageSize": 1600}
    assert spec["training"] == TRAINING_DEFAULTS == expected
    assert spec["ttlSecondsAfterFinished"] == TTL_SECONDS_AFTER_FINISHED == 86400


def _upload(count: int = 24, job_dir: str = "jobs/chair") -> dict:
    return {"upload": {"jobDir": job_dir, "imageCount": count}}


INVALID = {
    "four-images": (
        _job(source=_upload(count=4)),
        ["spec.source.upload.imageCount", "should be greater than or equal to 5"],
    ),
    "too-many-images": (
        _job(source=_upload(count=101)),
        ["spec.source.upload.imageCount", "should be less than or equal to 100"],
    ),
    "unknown-matcher": (
        _job(processing={"matcher": "fast"}),
        [
            'spec.processing.matcher: Unsupported value: "fast"',
            '"exhaustive", "sequential", "retrieval", "auto"',
        ],
    ),
    "unknown-training-backend": (
        _job(training={"backend": "colab"}),
        ['spec.training.backend: Unsupported value: "colab"', '"runpod", "cluster", "none"'],
    ),
    "zero-training-steps": (
        _job(training={"steps": 0}),
        ["spec.training.steps", "should be greater than or equal to 1"],
    ),
    "too-many-gaussians": (
        _job(training={"maxGaussians": 20_000_000}),
        ["spec.training.maxGaussians", "should be less than or equal to 10000000"],
    ),
    "no-source": (
        _job(source={}),
        ["spec.source must set exactly one of 'upload' or 's3'"],
    ),
    "two-sources": (
        _job(source={**_upload(), "s3": {"bucket": "photos"}}),
        ["spec.source must set exactly one of 'upload' or 's3'"],
    ),
    "escaping-job-dir": (
        _job(source=_upload(job_dir="jobs/../../etc")),
        ["spec.source.upload.jobDir must be a plain relative path"],
    ),
    "parent-job-dir": (
        _job(source=_upload(job_dir="jobs")),
        ["spec.source.upload.jobDir must be jobs/<id>: one job's own directory"],
    ),
    "other-folder-job-dir": (
        _job(source=_upload(job_dir="splats/x")),
        ["spec.source.upload.jobDir must be jobs/<id>: one job's own directory"],
    ),
    "another-jobs-dir": (
        _job(source=_upload(job_dir="jobs/3f2c9a4e-5b1d-4c2a-9e7f-0a1b2c3d4e5f")),
        ["spec.source.upload.jobDir must be jobs/<metadata.name>", "owns only its own job directory"],
    ),
    "absolute-job-dir": (
        _job(source=_upload(job_dir="/etc/passwd")),
        ["spec.source.upload.jobDir", "should match"],
    ),
    "bad-webhook": (
        _job(notify={"webhookURL": "ftp://example.com/x"}),
        ["spec.notify.webhookURL must be an absolute http:// or https:// URL"],
    ),
    "bad-email": (
        _job(notify={"email": "not-an-address"}),
        ["spec.notify.email", "must be of type email"],
    ),
    "retention-too-long": (
        _job(ttlSecondsAfterFinished=90 * 86400),
        ["spec.ttlSecondsAfterFinished", "should be less than or equal to 2592000"],
    ),
}


def _missing_owner() -> dict:
    job = _job()
    del job["spec"]["owner"]
    return job


INVALID["missing-owner"] = (_missing_owner(), ["spec.owner: Required value"])


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_job_is_rejected_with_clear_message(control_plane, sharpjob_crd, namespace, case):
    """The apiserver refuses the manifest, and its message names the field and the rule."""
    obj, expected = INVALID[case]
    out = _create(control_plane, namespace, obj)
    assert out.returncode != 0, f"{case} was accepted"
    assert "is invalid" in out.stderr
    for text in expected:
        assert text in out.stderr, f"{text!r} not in:\n{out.stderr}"
    assert control_plane.kubectl("get", "sj", "-n", namespace, "-o", "name").stdout.strip() == ""


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"spec": {"owner": "acct-99"}}, "spec.owner is immutable: a job cannot be moved to another account"),
        (
            {"spec": {"source": {"upload": {"imageCount": 30}}}},
            "spec.source is immutable: create a new SharpJob to process other photos",
        ),
        (
            {"spec": {"processing": {"matcher": "exhaustive"}}},
            "spec.processing is immutable: create a new SharpJob to try other settings",
        ),
    ],
    ids=["owner", "source", "processing"],
)
def test_immutable_fields_cannot_change(control_plane, sharpjob_crd, namespace, patch, message):
    """Source, owner and processing are fixed at creation (CEL transition rules)."""
    _create(control_plane, namespace, _job(), check=True)
    out = control_plane.kubectl(
        "patch", "sj", "chair", "-n", namespace, "--type=merge", "-p", json.dumps(patch), check=False
    )
    assert out.returncode != 0
    assert message in out.stderr, out.stderr


def test_mutable_fields_can_change(control_plane, sharpjob_crd, namespace):
    """Notification targets and retention may be edited while the job runs."""
    _create(control_plane, namespace, _job(), check=True)
    patch = {"spec": {"notify": {"email": "ops@example.com"}, "ttlSecondsAfterFinished": 600}}
    control_plane.kubectl("patch", "sj", "chair", "-n", namespace, "--type=merge", "-p", json.dumps(patch))
    spec = control_plane.get_json("sj", "chair", "-n", namespace)["spec"]
    assert spec["notify"]["email"] == "ops@example.com"
    assert spec["ttlSecondsAfterFinished"] == 600


STATUS = {
    "status": {
        "phase": "Reconstructing",
        "message": "matching features (37/80)",
        "observedGeneration": 1,
        "progress": {"percent": 42, "stage": "feature matching"},
        "queuePosition": 0,
        "timestamps": {"queuedAt": "2026-11-25T10:00:00Z", "reconstructionStartedAt": "2026-11-25T10:01:00Z"},
        "sfm": {"registeredImages": 20, "totalImages": 24, "points": 15234, "meanReprojectionError": 0.71},
        "training": {"runpodJobId": "rp-123", "gpuSeconds": 12.5, "costUSD": "0.42"},
        "outputs": {
            "source": "trained",
            "gaussians": 1000,
            "deliveredAt": "2026-11-25T10:05:00Z",
            "expiresAt": "2026-12-25T10:05:00Z",
            "artifacts": [
                {
                    "format": "splat",
                    "file": "scene.splat",
                    "bytes": 32000,
                    "sha256": "0" * 64,
                    "path": "splats/chair.splat",
                    "s3Key": "sharpml/artifacts/chair/scene.splat",
                }
            ],
            "backup": {"state": "Done", "at": "2026-11-25T10:05:01Z"},
        },
        "notifications": {
            "webhook": {"for": "Complete", "state": "Sent", "attempts": 2, "at": "2026-11-25T10:05:02Z"},
            "email": {"for": "Complete", "state": "Failed", "attempts": 5, "lastError": "550 no such user"},
        },
        "conditions": [
            {
                "type": "Reconstructed",
                "status": "False",
                "reason": "InProgress",
                "message": "structure-from-motion running",
                "lastTransitionTime": "2026-11-25T10:01:00Z",
                "observedGeneration": 1,
            }
        ],
        "kopf": {
            "progress": {"reconcile": {"started": "2026-11-25T10:00:00Z", "retries": 1, "anything": [1, 2]}}
        },
        "notInTheSchema": "pruned",
    }
}


def _patch_status(cp, namespace: str, body: dict, check: bool = True):
    return cp.kubectl(
        "patch", "sj", "chair", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps(body), check=check,
    )  # fmt: skip


def test_status_subresource_separates_spec_and_status(control_plane, sharpjob_crd, namespace):
    """Status writes ignore spec and keep the generation; spec writes ignore status."""
    cp = control_plane
    _create(cp, namespace, _job(), check=True)
    before = cp.get_json("sj", "chair", "-n", namespace)

    body = copy.deepcopy(STATUS)
    body["spec"] = {"ttlSecondsAfterFinished": 1}
    _patch_status(cp, namespace, body)
    after_status = cp.get_json("sj", "chair", "-n", namespace)
    assert after_status["spec"] == before["spec"]
    assert after_status["metadata"]["generation"] == before["metadata"]["generation"]
    assert after_status["status"]["phase"] == "Reconstructing"
    assert after_status["status"]["sfm"]["meanReprojectionError"] == pytest.approx(0.71)

    cp.kubectl(
        "patch", "sj", "chair", "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"ttlSecondsAfterFinished": 7200}, "status": {"phase": "Failed"}}),
    )  # fmt: skip
    after_spec = cp.get_json("sj", "chair", "-n", namespace)
    assert after_spec["spec"]["ttlSecondsAfterFinished"] == 7200
    assert after_spec["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert after_spec["status"] == after_status["status"]


def test_kopf_state_is_preserved_and_unknown_status_pruned(control_plane, sharpjob_crd, namespace):
    """status.kopf keeps whatever kopf writes; other unknown fields are pruned (the schema is structural)."""
    cp = control_plane
    _create(cp, namespace, _job(), check=True)
    _patch_status(cp, namespace, STATUS)
    status = cp.get_json("sj", "chair", "-n", namespace)["status"]
    assert status["kopf"] == STATUS["status"]["kopf"]
    assert "notInTheSchema" not in status
    # The delivery's and the notifications' shapes are in the schema: nothing of them is pruned.
    assert status["outputs"] == STATUS["status"]["outputs"]
    assert status["notifications"] == STATUS["status"]["notifications"]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({"phase": "Exploded"}, 'status.phase: Unsupported value: "Exploded"'),
        ({"progress": {"percent": 140}}, "status.progress.percent: Invalid value: 140"),
        ({"training": {"costUSD": "-3"}}, "status.training.costUSD"),
        (
            {
                "outputs": {
                    "artifacts": [{"format": "gif", "file": "a", "bytes": 1, "sha256": "0" * 64, "path": "p"}]
                }
            },
            'status.outputs.artifacts[0].format: Unsupported value: "gif"',
        ),
        (
            {"notifications": {"webhook": {"state": "Lost"}}},
            "status.notifications.webhook.state: Unsupported value",
        ),
        (
            {"sfm": {"registeredImages": 30, "totalImages": 24}},
            "status.sfm.registeredImages cannot exceed status.sfm.totalImages",
        ),
    ],
    ids=["phase", "progress", "cost", "artifact-format", "notification-state", "sfm-counts"],
)
def test_status_is_validated_too(control_plane, sharpjob_crd, namespace, status, expected):
    """The operator cannot write a phase outside the enum or a progress beyond 100 either."""
    _create(control_plane, namespace, _job(), check=True)
    out = _patch_status(control_plane, namespace, {"status": status}, check=False)
    assert out.returncode != 0
    assert expected in out.stderr, out.stderr


def test_kubectl_get_shows_columns(control_plane, sharpjob_crd, namespace):
    """`kubectl get sj` prints phase, images, progress, age and message."""
    cp = control_plane
    _create(cp, namespace, _job(), check=True)
    _patch_status(cp, namespace, STATUS)
    lines = cp.kubectl("get", "sj", "-n", namespace).stdout.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "IMAGES", "PROGRESS", "AGE", "MESSAGE"]
    row = lines[1].split(None, 5)
    assert row[:4] == ["chair", "Reconstructing", "24", "42"]
    assert row[5] == "matching features (37/80)"
    wide = cp.kubectl("get", "sharpjobs.sharpml.com", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert "OWNER" in wide[0].split() and "acct-42" in wide[1].split()
    # Category: `kubectl get sharpml` lists SharpJobs with everything else of the product.
    assert "sharpjob.sharpml.com/chair" in cp.kubectl("get", "sharpml", "-n", namespace, "-o", "name").stdout


def test_kubectl_explain_documents_the_spec(control_plane, sharpjob_crd):
    """`kubectl explain` reads well: every field carries its description."""
    cp = control_plane
    spec = cp.kubectl("explain", "sharpjob.spec").stdout
    for text in ["which photos to process", "owner", "Account id of the customer", "source", "processing",
                 "notify", "ttlSecondsAfterFinished", "Retention"]:  # fmt: skip
        assert text in spec, f"{text!r} missing from kubectl explain sharpjob.spec:\n{spec}"
    matcher = cp.kubectl("explain", "sharpjob.spec.processing.matcher").stdout
    assert "exhaustive" in matcher and "sequential" in matcher
    status = cp.kubectl("explain", "sharpjob.status", "--recursive").stdout
    for field in [
        "phase",
        "conditions",
        "observedGeneration",
        "registeredImages",
        "runpodJobId",
        "expiresAt",
        "sha256",
        "notifications",
    ]:
        assert field in status
