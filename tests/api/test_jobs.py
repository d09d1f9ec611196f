"""Reading jobs back: status for the owner only, pagination, deletion, CORS, health and metrics."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import pytest

from sharpml.contract import OWNER_LABEL, owner_label
from tests.api.conftest import asgi_client, bearer, left_behind, multipart, patch_status, sharpjobs
from tests.api.test_uploads import assert_problem
from tests.core.photos import photo_set

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]


def _create_sharpjob(cp, namespace: str, owner: str) -> str:
    """A SharpJob as the API would have made it, without an upload (for listing tests)."""
    name = str(uuid.uuid4())
    body = {
        "apiVersion": "sharpml.com/v1alpha1",
        "kind": "SharpJob",
        "metadata": {"name": name, "labels": {OWNER_LABEL: owner_label(owner)}},
        "spec": {"owner": owner, "source": {"upload": {"jobDir": f"jobs/{name}", "imageCount": 5}}},
    }
    cp.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(body))
    return name


async def test_status_is_for_the_owner_only_and_follows_the_resource(api, control_plane, namespace, tmp_path):
    resp = await api.post("/v1/jobs", headers=bearer("acct-a"), **multipart(photo_set(tmp_path)))
    job_id = resp.json()["id"]
    url = f"/v1/jobs/{job_id}"

    status = (await api.get(url, headers=bearer("acct-a"))).json()
    assert status["id"] == job_id and status["phase"] == "Pending" and status["finished"] is False
    assert status["image_count"] == 5 and status["progress"] == {"percent": 0, "stage": None}
    assert status["processing"]["matcher"] == "auto"

    for headers in (bearer("acct-b"), {}):
        body = assert_problem(await api.get(url, headers=headers), 404, "not-found")
        assert job_id in body["detail"]
    assert_problem(await api.get("/v1/jobs/not-a-uuid", headers=bearer("acct-a")), 404, "not-found")
    assert_problem(await api.get(f"/v1/jobs/{uuid.uuid4()}", headers=bearer("acct-a")), 404, "not-found")

    patch_status(
        control_plane,
        namespace,
        job_id,
        {
            "phase": "Reconstructing",
            "message": "matching features",
            "progress": {"percent": 40, "stage": "feature matching"},
            "sfm": {"registeredImages": 4, "totalImages": 5, "points": 1234, "meanReprojectionError": 0.7},
            "timestamps": {"reconstructionStartedAt": "2026-11-25T10:00:00Z"},
        },
    )
    status = (await api.get(url, headers=bearer("acct-a"))).json()
    assert status["phase"] == "Reconstructing" and status["message"] == "matching features"
    assert status["progress"] == {"percent": 40, "stage": "feature matching"}
    assert status["sfm"] == {
        "registered_images": 4,
        "total_images": 5,
        "points": 1234,
        "mean_reprojection_error": 0.7,
    }
    assert status["timestamps"] == {"reconstructionStartedAt": "2026-11-25T10:00:00Z"}


async def test_list_is_the_callers_jobs_newest_first_in_pages(api, control_plane, namespace):
    mine = []
    for _ in range(5):
        mine.append(_create_sharpjob(control_plane, namespace, "acct-list"))
        time.sleep(1.05)  # creationTimestamp has one-second resolution
    _create_sharpjob(control_plane, namespace, "acct-other")

    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/v1/jobs", params=params, headers=bearer("acct-list"))).json()
        assert len(page["items"]) <= 2
        seen += [j["id"] for j in page["items"]]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    assert seen == mine[::-1]
    other = (await api.get("/v1/jobs", headers=bearer("acct-other"))).json()
    assert len(other["items"]) == 1 and other["items"][0]["id"] not in mine
    assert (await api.get("/v1/jobs", headers=bearer("acct-nobody"))).json() == {
        "items": [],
        "next_cursor": None,
    }

    assert_problem(await api.get("/v1/jobs"), 401, "unauthorized")
    assert (await api.get("/v1/jobs?cursor=0", headers=bearer("acct-list"))).json()["items"] == []
    body = assert_problem(
        await api.get("/v1/jobs?limit=0", headers=bearer("acct-list")), 422, "invalid-request"
    )
    assert body["errors"][0]["field"] == "limit"


async def test_delete_removes_the_job_and_its_files(api, settings, control_plane, namespace, tmp_path):
    resp = await api.post("/v1/jobs", headers=bearer("acct-d"), **multipart(photo_set(tmp_path)))
    job_id = resp.json()["id"]
    assert_problem(await api.delete(f"/v1/jobs/{job_id}", headers=bearer("acct-e")), 404, "not-found")
    assert left_behind(settings) == [f"jobs/{job_id}"]

    resp = await api.delete(f"/v1/jobs/{job_id}", headers=bearer("acct-d"))
    assert resp.status_code == 204, resp.text
    assert sharpjobs(control_plane, namespace) == []
    assert left_behind(settings) == []
    assert_problem(await api.get(f"/v1/jobs/{job_id}", headers=bearer("acct-d")), 404, "not-found")
    assert_problem(await api.delete(f"/v1/jobs/{job_id}", headers=bearer("acct-d")), 404, "not-found")


async def test_delete_with_a_finaliser_answers_202_and_leaves_files_to_the_operator(
    api, settings, control_plane, namespace, tmp_path
):
    resp = await api.post("/v1/jobs", headers=bearer("acct-f"), **multipart(photo_set(tmp_path)))
    job_id = resp.json()["id"]
    control_plane.kubectl(
        "patch", "sharpjob", job_id, "-n", namespace, "--type=merge",
        "-p", json.dumps({"metadata": {"finalizers": ["sharpml.com/cleanup"]}}),
    )  # fmt: skip
    resp = await api.delete(f"/v1/jobs/{job_id}", headers=bearer("acct-f"))
    assert resp.status_code == 202, resp.text
    assert resp.json()["deleting"] is True
    assert left_behind(settings) == [f"jobs/{job_id}"]  # the operator's finaliser still needs them
    control_plane.kubectl(
        "patch", "sharpjob", job_id, "-n", namespace, "--type=merge", "-p", '{"metadata":{"finalizers":null}}'
    )


async def test_cors_allows_only_configured_origins(api):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    ok = await api.options("/v1/jobs", headers={"Origin": "https://sharpml.com", **preflight})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://sharpml.com"
    evil = await api.options("/v1/jobs", headers={"Origin": "https://evil.example", **preflight})
    assert evil.status_code == 400
    assert "access-control-allow-origin" not in evil.headers
    simple = await api.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in simple.headers


async def test_health_readiness_and_metrics(api, settings_for, settings, tmp_path):
    assert (await api.get("/healthz")).json() == {"status": "ok", "checks": {}}
    ready = await api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"cluster": "ok", "data_dir": "ok"}

    await api.post("/v1/jobs", headers=bearer(), **multipart(photo_set(tmp_path)))
    await api.post("/v1/jobs", headers=bearer(), **multipart(photo_set(tmp_path / "few", 2)))
    text = (await api.get("/metrics")).text
    assert 'sharpml_api_uploads_total{outcome="created"} 1.0' in text
    assert 'sharpml_api_uploads_total{outcome="rejected"} 1.0' in text
    assert "sharpml_api_images_accepted_total 5.0" in text
    assert 'sharpml_api_requests_total{method="POST",route="/v1/jobs",status="201"} 1.0' in text
    assert "process_resident_memory_bytes " in text  # the chart's memory alert reads it

    # Not ready: the apiserver does not answer, and the data directory lies under a file.
    (tmp_path / "not-a-dir").write_text("")
    dead = tmp_path / "dead-kubeconfig"
    kubeconfig = Path(settings.kubeconfig).read_text()
    dead.write_text(re.sub(r"https://127\.0\.0\.1:\d+", "https://127.0.0.1:9", kubeconfig))
    broken = settings_for(data_dir=tmp_path / "not-a-dir" / "data", kubeconfig=str(dead))
    async with asgi_client(broken) as api2:
        body = assert_problem(await api2.get("/readyz"), 503, "not-ready")
        assert [e["field"] for e in body["errors"]] == ["cluster", "data_dir"]
