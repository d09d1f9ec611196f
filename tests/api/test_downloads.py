"""Signed downloads, share links and the links in a job's status, on the real control plane (and the real
S3 server for backed-up artifacts): a SharpJob patched to Complete as the Delivering stage leaves it, its
artifacts under the data directory's ``splats/``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from sharpml_api import viewer

from sharpml import links
from sharpml.contract import OWNER_LABEL, owner_label
from sharpml.contract.delivery import ARTIFACTS
from sharpml.links import LinkSettings
from sharpml.storage import S3Settings, Storage
from tests.api.conftest import LINK_TTL_SECONDS, asgi_client, bearer, multipart, patch_status
from tests.api.test_uploads import assert_problem
from tests.core.photos import photo_set

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

OWNER = "acct-dl"
#: Content per format: distinct, and long enough for ranges.
CONTENT = {fmt: hashlib.sha256(fmt.encode()).digest() * 400 + fmt.encode() for fmt in ARTIFACTS}


def _rfc3339(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def make_job(cp, namespace: str, owner: str = OWNER) -> str:
    name = str(uuid.uuid4())
    body = {
        "apiVersion": "sharpml.com/v1alpha1",
        "kind": "SharpJob",
        "metadata": {"name": name, "labels": {OWNER_LABEL: owner_label(owner)}},
        "spec": {"owner": owner, "source": {"upload": {"jobDir": f"jobs/{name}", "imageCount": 5}}},
    }
    cp.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(body))
    return name


def complete(
    cp,
    namespace: str,
    name: str,
    data_dir: Path | None,
    *,
    expires_at: float | None = None,
    s3_prefix: str | None = None,
) -> None:
    """Patch the job to Complete with ``status.outputs`` per sharpml/contract/delivery.py; write the files
    under ``data_dir/splats/`` (None: the local copies are gone); ``s3_prefix``: they were backed up."""
    entries = []
    for fmt, artifact in ARTIFACTS.items():
        data = CONTENT[fmt]
        entry = {"format": fmt, "file": artifact.filename, "bytes": len(data),
                 "sha256": hashlib.sha256(data).hexdigest(), "path": artifact.local_name(name)}  # fmt: skip
        if s3_prefix is not None:
            entry["s3Key"] = s3_prefix + artifact.s3_name(name)
        entries.append(entry)
        if data_dir is not None:
            path = data_dir / artifact.local_name(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    outputs = {
        "source": "trained",
        "gaussians": 400,
        "deliveredAt": _rfc3339(time.time()),
        "expiresAt": _rfc3339(expires_at or time.time() + 30 * 86400),
        "artifacts": entries,
    }
    patch_status(cp, namespace, name, {"phase": "Complete", "progress": {"percent": 100}, "outputs": outputs})


def query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    q = {**dict(parse_qsl(parts.query)), **changes}
    return f"{parts.path}?{'&'.join(f'{k}={v}' for k, v in q.items())}"


async def status_links(api: httpx.AsyncClient, name: str, owner: str = OWNER) -> dict[str, Any]:
    resp = await api.get(f"/v1/jobs/{name}", headers=bearer(owner))
    assert resp.status_code == 200, resp.text
    return resp.json()["links"]


async def test_links_in_the_status_of_a_complete_job(api, settings, control_plane, namespace):
    name = make_job(control_plane, namespace)
    before = time.time()
    complete(control_plane, namespace, name, settings.data_dir)
    body = (await api.get(f"/v1/jobs/{name}", headers=bearer(OWNER))).json()
    got = body["links"]
    assert got["status"] == f"http://api.test/v1/jobs/{name}"
    assert got["view"].startswith(f"http://api.test/v1/jobs/{name}/view?exp=")
    assert set(got["artifacts"]) == set(ARTIFACTS)
    for fmt, artifact in ARTIFACTS.items():
        link = got["artifacts"][fmt]
        assert link["url"].startswith(f"http://api.test/v1/jobs/{name}/artifacts/{artifact.filename}?exp=")
        assert link["bytes"] == len(CONTENT[fmt])
        assert link["sha256"] == hashlib.sha256(CONTENT[fmt]).hexdigest()
        assert link["media_type"] == artifact.media_type
        assert query(link["url"])["kid"] == "new"  # the first key signs
    exp = int(query(got["view"])["exp"])
    assert before + LINK_TTL_SECONDS - 1 <= exp <= time.time() + LINK_TTL_SECONDS
    assert got["expires_at"] == _rfc3339(exp)
    assert body["outputs"]["source"] == "trained" and body["outputs"]["expires_at"]

    # Never past the artifacts' own expiry.
    soon = time.time() + 120
    complete(control_plane, namespace, name, settings.data_dir, expires_at=soon)
    got = await status_links(api, name)
    assert int(query(got["artifacts"]["splat"]["url"])["exp"]) == int(soon)
    assert got["expires_at"] == _rfc3339(soon)


async def test_a_running_job_has_a_view_link_only(api, control_plane, namespace):
    name = make_job(control_plane, namespace)
    patch_status(control_plane, namespace, name, {"phase": "Reconstructing", "progress": {"percent": 30}})
    got = await status_links(api, name)
    assert got["view"] and got["artifacts"] is None and got["expires_at"]


async def test_no_links_without_link_keys(settings_for, settings, control_plane, namespace):
    name = make_job(control_plane, namespace)
    complete(control_plane, namespace, name, settings.data_dir)
    signed = (await status_links_of(settings, name))["artifacts"]["splat"]["url"]
    async with asgi_client(settings_for(links=LinkSettings(keys=(), ttl_seconds=60))) as api:
        got = await status_links(api, name)
        assert got["view"] is None and got["artifacts"] is None and got["expires_at"] is None
        assert got["status"].endswith(name)
        assert_problem(await api.get(signed), 403, "link-invalid")
        # The owner still downloads.
        resp = await api.get(f"/v1/jobs/{name}/artifacts/scene.splat", headers=bearer(OWNER))
        assert resp.status_code == 200 and resp.content == CONTENT["splat"]


async def status_links_of(settings, name: str) -> dict[str, Any]:
    async with asgi_client(settings) as api:
        return await status_links(api, name)


async def test_signed_download_bytes_headers_etag_and_ranges(api, settings, control_plane, namespace):
    name = make_job(control_plane, namespace)
    complete(control_plane, namespace, name, settings.data_dir)
    got = await status_links(api, name)
    for fmt, artifact in ARTIFACTS.items():
        resp = await api.get(got["artifacts"][fmt]["url"])  # no credentials: the link is the grant
        assert resp.status_code == 200, resp.text
        assert resp.content == CONTENT[fmt]
        assert resp.headers["content-type"] == artifact.media_type
        assert resp.headers["content-disposition"] == f'attachment; filename="sharpml-{name}.{fmt}"'
        assert resp.headers["x-content-type-options"] == "nosniff"
        assert resp.headers["cache-control"] == "private"
        assert resp.headers["etag"] == f'"{hashlib.sha256(CONTENT[fmt]).hexdigest()}"'
        assert resp.headers["content-length"] == str(len(CONTENT[fmt]))

    url, data = got["artifacts"]["splat"]["url"], CONTENT["splat"]
    size, etag = len(data), f'"{hashlib.sha256(data).hexdigest()}"'

    for inm in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        resp = await api.get(url, headers={"If-None-Match": inm})
        assert resp.status_code == 304 and resp.content == b"" and resp.headers["etag"] == etag
    assert (await api.get(url, headers={"If-None-Match": '"other"'})).status_code == 200

    for header, (start, end) in {
        "bytes=10-19": (10, 20),
        "bytes=0-0": (0, 1),
        "bytes=-5": (size - 5, size),
        f"bytes={size - 3}-": (size - 3, size),
        f"bytes=100-{size * 10}": (100, size),  # an end past the file is clamped
        f"bytes=0-{'9' * 19}": (0, size),
    }.items():
        resp = await api.get(url, headers={"Range": header})
        assert resp.status_code == 206, (header, resp.text)
        assert resp.content == data[start:end], header
        assert resp.headers["content-range"] == f"bytes {start}-{end - 1}/{size}"
        assert resp.headers["content-length"] == str(end - start)
        assert resp.headers["etag"] == etag

    for header in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}", "bytes=-0", f"bytes={'9' * 19}-"):
        resp = await api.get(url, headers={"Range": header})
        body = assert_problem(resp, 416, "range-not-satisfiable")
        assert resp.headers["content-range"] == f"bytes */{size}" and str(size) in body["detail"]

    # Several ranges, other units, nonsense, absurd lengths, non-ASCII: the whole file (RFC 9110 allows it).
    odd = ("bytes=0-1,5-6", "items=0-5", "bytes=5-3", "bytes=", "0-5", f"bytes=0-{'9' * 40}", "bytes=é-")
    for header in odd:
        resp = await api.get(url, headers={"Range": header.encode()})
        assert resp.status_code == 200 and resp.content == data, header

    # If-Range: the range only while the file is still the version the client holds.
    resp = await api.get(url, headers={"Range": "bytes=0-3", "If-Range": etag})
    assert resp.status_code == 206 and resp.content == data[:4]
    resp = await api.get(url, headers={"Range": "bytes=0-3", "If-Range": '"older"'})
    assert resp.status_code == 200 and resp.content == data

    resp = await api.head(url)
    assert resp.status_code == 200 and resp.content == b""
    assert resp.headers["content-length"] == str(size) and resp.headers["etag"] == etag
    resp = await api.head(url, headers={"Range": "bytes=1-2"})
    assert resp.status_code == 206 and resp.headers["content-range"] == f"bytes 1-2/{size}"

    # A new version of the file gets a new ETag (the digest is cached per file version, not per name).
    new = b"replaced" * 100
    (settings.data_dir / f"splats/{name}.splat").write_bytes(new)
    resp = await api.get(url, headers={"If-None-Match": etag})
    assert resp.status_code == 200 and resp.content == new
    assert resp.headers["etag"] == f'"{hashlib.sha256(new).hexdigest()}"'


async def test_tampered_foreign_and_expired_links_are_refused(api, settings, control_plane, namespace):
    name, other = make_job(control_plane, namespace), make_job(control_plane, namespace)
    complete(control_plane, namespace, name, settings.data_dir)
    complete(control_plane, namespace, other, settings.data_dir)
    url = (await status_links(api, name))["artifacts"]["splat"]["url"]
    q = query(url)
    sig = q["sig"]
    tampered_sig = ("A" if sig[0] != "A" else "B") + sig[1:]
    for bad in (
        with_query(url, sig=tampered_sig),
        with_query(url, exp=str(int(q["exp"]) + 1)),  # a later expiry than was signed
        with_query(url, kid="old"),  # another (valid) key did not sign it
        with_query(url, kid="gone"),
        url.replace(name, other),  # another job's file
        url.replace("scene.splat", "scene.ply"),  # another file of the job
        with_query(url, exp="9" * 40),
        with_query(url, exp="-1"),
        with_query(url, sig="%C3%A9%00" * 30),
        with_query(url, kid="%E2%98%83"),
        urlsplit(url).path + f"?exp={q['exp']}&kid={q['kid']}",  # incomplete
    ):
        body = assert_problem(await api.get(bad, headers=bearer(OWNER)), 403, "link-invalid")
        assert "link" in body["detail"]
    assert (await api.head(with_query(url, sig=tampered_sig))).status_code == 403

    keys = settings.links.keys
    past = int(time.time()) - 5
    expired = links.url("http://api.test", name, "scene.splat", keys, past)
    body = assert_problem(await api.get(expired), 410, "link-expired")
    assert "expired" in body["detail"] and _rfc3339(past) in body["detail"]
    # An expired link that was also altered is just not valid: 410 only for genuine links.
    assert_problem(await api.get(with_query(expired, sig=tampered_sig)), 403, "link-invalid")

    # Rotation: a link signed by the older key still works until it is removed from SHARPML_LINK_KEYS.
    old = links.url("http://api.test", name, "scene.splat", keys[1:], int(time.time()) + 60)
    resp = await api.get(old)
    assert resp.status_code == 200 and resp.content == CONTENT["splat"]
    retired = dataclasses.replace(settings, links=LinkSettings(keys=keys[:1], ttl_seconds=60))
    async with asgi_client(retired) as client:
        assert_problem(await client.get(old), 403, "link-invalid")


async def test_owner_downloads_without_a_link(api, settings, control_plane, namespace):
    name = make_job(control_plane, namespace)
    path = f"/v1/jobs/{name}/artifacts/scene.ply"
    assert_problem(await api.get(path, headers=bearer(OWNER)), 404, "artifact-not-found")  # Pending
    complete(control_plane, namespace, name, settings.data_dir)
    resp = await api.get(path, headers=bearer(OWNER))
    assert resp.status_code == 200 and resp.content == CONTENT["ply"]
    for headers in (bearer("acct-someone-else"), {}):
        assert_problem(await api.get(path, headers=headers), 404, "not-found")
    unknown = await api.get(f"/v1/jobs/{name}/artifacts/notes.txt", headers=bearer(OWNER))
    assert_problem(unknown, 422, "invalid-request")
    complete(control_plane, namespace, name, settings.data_dir, expires_at=time.time() - 10)
    body = assert_problem(await api.get(path, headers=bearer(OWNER)), 410, "artifact-expired")
    assert "retention" in body["detail"]


@pytest.mark.s3
async def test_a_link_outlives_the_sharpjob_while_the_file_is_kept(
    api, settings_for, control_plane, namespace, s3_server
):
    """Retention deleted the SharpJob: the link still proves the grant. Once the file is gone as well
    (locally, and not in the backup), the link's holder is told it was removed."""
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    s3 = S3Settings.from_env({**s3_server.env(), "SHARPML_S3_BUCKET": bucket})
    Storage.from_settings(s3).ensure_bucket()
    settings = settings_for(s3=s3)
    name = make_job(control_plane, namespace)
    complete(control_plane, namespace, name, settings.data_dir)
    async with asgi_client(settings) as api:
        url = (await status_links(api, name))["artifacts"]["spz"]["url"]
        control_plane.kubectl("delete", "sharpjob", name, "-n", namespace, "--wait=true")
        assert_problem(await api.get(f"/v1/jobs/{name}", headers=bearer(OWNER)), 404, "not-found")
        resp = await api.get(url)
        assert resp.status_code == 200 and resp.content == CONTENT["spz"]
        (settings.data_dir / f"splats/{name}.spz").unlink()
        body = assert_problem(await api.get(url), 410, "artifact-expired")
        assert "no longer stored" in body["detail"]


async def test_a_symlink_in_place_of_an_artifact_is_never_followed(api, settings, control_plane, namespace):
    name = make_job(control_plane, namespace)
    complete(control_plane, namespace, name, settings.data_dir)
    secret = settings.data_dir.parent / "secret.txt"
    secret.write_bytes(b"not for download")
    target = settings.data_dir / f"splats/{name}.splat"
    target.unlink()
    os.symlink(secret, target)
    url = (await status_links(api, name))["artifacts"]["splat"]["url"]
    resp = await api.get(url)
    assert_problem(resp, 503, "storage-unavailable")  # the volume is not as we left it: not served
    assert b"not for download" not in resp.content


@pytest.mark.s3
async def test_a_backed_up_artifact_is_a_redirect_to_a_presigned_s3_url(
    settings_for, control_plane, namespace, s3_server
):
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    s3 = S3Settings.from_env({**s3_server.env(), "SHARPML_S3_BUCKET": bucket})
    store = Storage.from_settings(s3)
    store.ensure_bucket()
    settings = settings_for(s3=s3)
    name = make_job(control_plane, namespace)
    for fmt, artifact in ARTIFACTS.items():
        store.put_bytes(artifact.s3_name(name), CONTENT[fmt])
    complete(control_plane, namespace, name, None, s3_prefix=s3.prefix)  # only the backup remains
    keys = settings.links.keys

    async with asgi_client(settings) as api, httpx.AsyncClient(verify=s3_server.ssl_context()) as s3_http:
        # The owner, and a link, both get a short-lived presigned URL; following it gives the bytes.
        resp = await api.get(f"/v1/jobs/{name}/artifacts/scene.ply", headers=bearer(OWNER))
        assert resp.status_code == 302 and resp.headers["cache-control"] == "no-store"
        got = await s3_http.get(resp.headers["location"])
        assert got.status_code == 200 and got.content == CONTENT["ply"]

        exp = int(time.time()) + 3
        resp = await api.get(links.url("http://api.test", name, "scene.splat", keys, exp))
        assert resp.status_code == 302
        location = resp.headers["location"]
        assert location.startswith(s3.endpoint) and bucket in location
        assert 1 <= int(query(location)["X-Amz-Expires"]) <= 3
        got = await s3_http.get(location)
        assert got.status_code == 200 and got.content == CONTENT["splat"]
        # The presigned URL never outlives the link that granted it.
        time.sleep(max(0.0, exp + 1.5 - time.time()))
        assert (await s3_http.get(location)).status_code == 403
        late = await api.get(links.url("http://api.test", name, "scene.splat", keys, exp))
        assert_problem(late, 410, "link-expired")

        # With the SharpJob gone too, a link still finds the backup (S3 is asked).
        control_plane.kubectl("delete", "sharpjob", name, "-n", namespace, "--wait=true")
        resp = await api.get(links.url("http://api.test", name, "scene.spz", keys, int(time.time()) + 60))
        assert resp.status_code == 302
        got = await s3_http.get(resp.headers["location"])
        assert got.status_code == 200 and got.content == CONTENT["spz"]


async def test_a_view_link_grants_that_jobs_status_events_and_page_only(
    api, settings, control_plane, namespace
):
    name, other = make_job(control_plane, namespace), make_job(control_plane, namespace)
    complete(control_plane, namespace, name, settings.data_dir)
    view = (await status_links(api, name))["view"]
    q = urlsplit(view).query
    exp = int(query(view)["exp"])

    async with asgi_client(settings) as stranger:  # no credentials at all
        resp = await stranger.get(f"/v1/jobs/{name}?{q}")
        assert resp.status_code == 200, resp.text
        shared = resp.json()
        assert shared["id"] == name and shared["phase"] == "Complete"
        # The viewer gets the splat's link, but nothing that outlives the share link.
        assert int(query(shared["links"]["view"])["exp"]) <= exp
        assert int(query(shared["links"]["artifacts"]["splat"]["url"])["exp"]) <= exp
        splat = await stranger.get(shared["links"]["artifacts"]["splat"]["url"])
        assert splat.status_code == 200 and splat.content == CONTENT["splat"]

        resp = await stranger.get(f"/v1/jobs/{name}/events?{q}")
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        assert "event: status" in resp.text and f'"id":"{name}"' in resp.text

        page = await stranger.get(f"/v1/jobs/{name}/view?{q}")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["default-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
        assert directives["script-src"] == "'self' 'wasm-unsafe-eval'"  # no inline script, no CDN
        # Nothing from elsewhere but a redirected download from the artifacts' S3 backup.
        others = [src for d in directives.values() for src in d.split() if "://" in src]
        assert others and set(others) == set(viewer.s3_origins(settings.s3))
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "no-referrer"

        # Not another job, not a download, not the owner's other powers.
        for path in (f"/v1/jobs/{other}", f"/v1/jobs/{other}/events", f"/v1/jobs/{other}/view"):
            assert_problem(await stranger.get(f"{path}?{q}"), 403, "link-invalid")
        assert_problem(await stranger.get(f"/v1/jobs/{name}/artifacts/scene.splat?{q}"), 403, "link-invalid")
        assert_problem(await stranger.delete(f"/v1/jobs/{name}?{q}"), 404, "not-found")
        assert_problem(await stranger.get(f"/v1/jobs?{q}"), 401, "unauthorized")
        assert_problem(await stranger.get(f"/v1/jobs/{name}"), 404, "not-found")
        assert_problem(await stranger.get(f"/v1/jobs/{name}/view"), 404, "not-found")
        assert_problem(await stranger.get(with_query(view, sig="x" * 43)), 403, "link-invalid")
        expired = links.url("http://api.test", name, "view", settings.links.keys, int(time.time()) - 1)
        parts = urlsplit(expired)
        for path in (parts.path, parts.path.removesuffix("/view"), parts.path.replace("/view", "/events")):
            assert_problem(await stranger.get(f"{path}?{parts.query}"), 410, "link-expired")
    assert control_plane.kubectl("get", "sharpjob", name, "-n", namespace).returncode == 0

    # Its owner reaches the page with their own credentials.
    page = await api.get(f"/v1/jobs/{name}/view", headers=bearer(OWNER))
    assert page.status_code == 200 and "content-security-policy" in page.headers
    assert_problem(await api.get(f"/v1/jobs/{name}/view", headers=bearer("acct-other")), 404, "not-found")


async def test_a_share_links_event_stream_ends_when_the_link_expires(api, settings, control_plane, namespace):
    name = make_job(control_plane, namespace)
    patch_status(control_plane, namespace, name, {"phase": "Reconstructing", "progress": {"percent": 30}})
    exp = int(time.time()) + 2
    params = links.sign(settings.links.keys, name, "view", exp)
    started = time.monotonic()
    resp = await api.get(f"/v1/jobs/{name}/events", params=params)  # keep-alive is 15 s: not what ends it
    assert resp.status_code == 200 and resp.text.count("event: status") == 1
    assert time.time() >= exp and time.monotonic() - started < 10
    status = json.loads(resp.text.split("data: ", 1)[1].split("\n", 1)[0])
    assert int(query(status["links"]["view"])["exp"]) <= exp and status["links"]["artifacts"] is None


async def test_an_upload_answer_carries_its_share_link(api, settings, tmp_path):
    resp = await api.post("/v1/jobs", headers=bearer(OWNER), **multipart(photo_set(tmp_path)))
    assert resp.status_code == 201, resp.text
    created = resp.json()
    view = created["links"]["view"]
    assert view.startswith(f"http://api.test/v1/jobs/{created['id']}/view?")
    async with asgi_client(settings) as stranger:
        shared = await stranger.get(f"/v1/jobs/{created['id']}?{urlsplit(view).query}")
    assert shared.status_code == 200 and shared.json()["phase"] == "Pending"


async def test_viewer_assets_are_files_never_listings(api, settings):
    assert_problem(await api.get("/viewer/"), 404, "not-found")
    assert_problem(await api.get("/viewer/../app.py"), 404, "not-found")
    assert (await api.get("/viewer/%2e%2e/app.py")).status_code == 404
