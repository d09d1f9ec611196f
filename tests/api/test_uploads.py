"""POST /v1/jobs against the real control plane: accepted sets become SharpJobs pointing at sanitised
photos; every rejection answers with its status, problem type and rule, and leaves nothing behind."""

from __future__ import annotations

import dataclasses
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from sharpml.config import MB
from sharpml.contract import OWNER_LABEL, owner_label
from tests.api.conftest import (
    TEST_LIMITS,
    asgi_client,
    bearer,
    left_behind,
    multipart,
    sharpjobs,
)
from tests.core.photos import LEAKS, full_exif, jpeg_bytes, photo_set, png_bytes, upright_pattern

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]


def leaky_photos(n: int = 5) -> list[tuple[str, bytes]]:
    """Distinct small JPEGs carrying everything a phone leaks (GPS, maker note, XMP, IPTC, comment)."""
    rng = np.random.default_rng(7)
    photos = []
    for i in range(n):
        a = rng.integers(0, 255, (80, 120, 3), dtype=np.uint8)
        photos.append((f"IMG_{i:04d}.jpg", jpeg_bytes(Image.fromarray(a), exif=full_exif(), leaky=True)))
    return photos


def assert_problem(resp: httpx.Response, status: int, kind: str, rule: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["status"] == status
    assert body["type"] == f"https://sharpml.com/problems/{kind}"
    assert body["detail"]
    if rule is not None:
        assert rule in [e["rule"] for e in body["errors"]], body
    return body


async def test_upload_creates_sharpjob_pointing_at_sanitised_photos(api, settings, control_plane, namespace):
    photos = [*leaky_photos(5), ("IMG_0005.png", png_bytes(upright_pattern()))]
    fields = {"matcher": "sequential", "training": "none", "webhook_url": "https://hooks.example.com/x"}
    resp = await api.post("/v1/jobs", headers=bearer("acct-42"), **multipart(photos, fields))
    assert resp.status_code == 201, resp.text
    body = resp.json()
    job_id = body["id"]
    assert body["image_count"] == 6 and body["phase"] == "Pending"
    assert resp.headers["location"] == body["links"]["status"] == f"http://api.test/v1/jobs/{job_id}"
    assert "job_token" not in body  # only anonymous uploads get one

    (job,) = sharpjobs(control_plane, namespace)
    assert job["metadata"]["name"] == job_id
    assert job["metadata"]["labels"][OWNER_LABEL] == owner_label("acct-42")
    spec = job["spec"]
    assert spec["owner"] == "acct-42"
    assert spec["source"] == {"upload": {"jobDir": f"jobs/{job_id}", "imageCount": 6}}
    assert spec["processing"]["matcher"] == "sequential" and spec["training"]["backend"] == "none"
    assert spec["processing"]["mapper"] == "auto"  # CRD default for what was not given
    assert spec["notify"] == {"webhookURL": "https://hooks.example.com/x"}

    images = settings.data_dir / spec["source"]["upload"]["jobDir"] / "images"
    stored = sorted(images.iterdir())
    assert [p.name for p in stored] == [f"{i:04d}.{'png' if i == 6 else 'jpg'}" for i in range(1, 7)]
    for path in stored:
        data = path.read_bytes()
        assert not [leak for leak in LEAKS if leak in data], path
        with Image.open(path) as img:
            exif = img.getexif()
            assert len(exif) == 0 and not exif.get_ifd(0x8825), f"{path.name} kept EXIF/GPS"
    manifest = json.loads((images.parent / "intake.json").read_text())
    assert [i["source_name"] for i in manifest["images"]][:2] == ["IMG_0000.jpg", "IMG_0001.jpg"]
    assert manifest["images"][0]["focal_length_35mm"] == 28  # the SfM prior is kept, in the manifest only
    assert left_behind(settings) == [f"jobs/{job_id}"]  # the spool is gone


async def test_path_like_file_names_never_reach_the_disk(api, settings, control_plane, namespace, tmp_path):
    photos = [
        (f"../../../{i}/../evil_{i}.jpg", p.read_bytes()) for i, p in enumerate(photo_set(tmp_path / "p"))
    ]
    photos[0] = ("..\\..\\windows\\evil_0.jpg", photos[0][1])
    resp = await api.post("/v1/jobs", headers=bearer(), **multipart(photos))
    assert resp.status_code == 201, resp.text
    job_dir = settings.data_dir / "jobs" / resp.json()["id"]
    names = [i["source_name"] for i in json.loads((job_dir / "intake.json").read_text())["images"]]
    assert names == [f"evil_{i}.jpg" for i in range(5)]
    everything = {p.relative_to(settings.data_dir).as_posix() for p in settings.data_dir.rglob("*")}
    assert not [p for p in everything if "evil" in p]
    assert not list(tmp_path.glob("**/windows"))


async def test_anonymous_upload_gets_a_job_token_that_alone_opens_the_job(api, tmp_path):
    resp = await api.post("/v1/jobs", **multipart(photo_set(tmp_path)))
    assert resp.status_code == 201, resp.text
    body = resp.json()
    token, url = body["job_token"], f"/v1/jobs/{body['id']}"
    assert (await api.get(url, headers={"X-Job-Token": token})).json()["phase"] == "Pending"
    assert_problem(await api.get(url), 404, "not-found")
    assert_problem(await api.get(url, headers={"X-Job-Token": token[:-2] + "xx"}), 404, "not-found")
    assert_problem(await api.get(url, headers=bearer("anonymous-but-not")), 404, "not-found")
    # The anonymous owner id is reserved: a token naming it is refused outright.
    assert_problem(await api.get(url, headers=bearer("anonymous")), 401, "unauthorized")
    assert_problem(await api.delete(url), 404, "not-found")
    assert (await api.delete(url, headers={"X-Job-Token": token})).status_code == 204


REJECTIONS = {
    # name: (photos factory, fields, status, problem type, rule, expected text)
    "too few photos": (
        lambda d: photo_set(d, 3),
        {},
        422,
        "photos-rejected",
        "count",
        "at least 5 are needed",
    ),
    "type mismatch": (
        lambda d: [*photo_set(d, 4), ("IMG_9.jpg", png_bytes(upright_pattern()))],
        {},
        422,
        "photos-rejected",
        "type-mismatch",
        "IMG_9.jpg: content is PNG but extension says JPEG",
    ),
    "corrupt photo": (
        lambda d: [*photo_set(d, 4), ("broken.jpg", jpeg_bytes(upright_pattern(400, 300))[:900])],
        {},
        422,
        "photos-rejected",
        "corrupt",
        "broken.jpg",
    ),
    "not an image": (
        lambda d: [*photo_set(d, 4), ("notes.jpg", b"just some text, not a photo " * 20)],
        {},
        422,
        "photos-rejected",
        "type",
        "notes.jpg: content is not an image",
    ),
    "photo over the per-file limit": (
        lambda d: [*photo_set(d, 4), ("huge.jpg", b"\xff\xd8" + b"\0" * (TEST_LIMITS.max_file_bytes + 10))],
        {},
        413,
        "too-large",
        "file-size",
        "huge.jpg: over the 1.0 MB per-file limit",
    ),
    "set over the total limit": (
        lambda d: [(f"IMG_{i}.jpg", b"\xff\xd8" + bytes(900 * 1024)) for i in range(4)],
        {},
        413,
        "too-large",
        "set-size",
        "over the 3.0 MB limit",
    ),
    "too many photos": (
        lambda d: photo_set(d, 9),
        {},
        422,
        "photos-rejected",
        "count",
        "at most 8 are accepted",
    ),
    "unknown form field": (
        lambda d: photo_set(d),
        {"colour": "red"},
        400,
        "malformed-upload",
        "unknown-field",
        "unknown form field 'colour'",
    ),
    "bad option value": (
        lambda d: photo_set(d),
        {"matcher": "fastest"},
        422,
        "invalid-options",
        "literal_error",
        "matcher: Input should be",
    ),
    "option out of range": (
        lambda d: photo_set(d),
        {"max_image_size": "100"},
        422,
        "invalid-options",
        "greater_than_equal",
        "max_image_size",
    ),
    "webhook not http": (
        lambda d: photo_set(d),
        {"webhook_url": "file:///etc/passwd"},
        422,
        "invalid-options",
        "value_error",
        "absolute http:// or https:// URL",
    ),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
async def test_rejections_name_the_rule_and_leave_nothing_behind(
    case, api, settings, control_plane, namespace, tmp_path
):
    make, fields, status, kind, rule, text = REJECTIONS[case]
    resp = await api.post("/v1/jobs", headers=bearer(), **multipart(make(tmp_path / "photos"), fields))
    body = assert_problem(resp, status, kind, rule)
    assert text in json.dumps(body), body
    assert left_behind(settings) == []
    assert sharpjobs(control_plane, namespace) == []


async def test_multipart_framing_errors(api, settings, control_plane, namespace, tmp_path):
    ok = multipart(photo_set(tmp_path))
    built = httpx.Request("POST", "http://x/", **ok)
    body, ctype = built.read(), built.headers["content-type"]

    cases = [
        ({"content": b"{}", "headers": {"content-type": "application/json"}}, 415, "unsupported-media-type"),
        ({"content": body, "headers": {}}, 415, "unsupported-media-type"),
        ({"content": body, "headers": {"content-type": "multipart/form-data"}}, 400, "malformed-upload"),
        ({"content": body[: len(body) // 2], "headers": {"content-type": ctype}}, 400, "malformed-upload"),
        ({"content": b"garbage" * 100, "headers": {"content-type": ctype}}, 400, "malformed-upload"),
    ]
    for kwargs, status, kind in cases:
        resp = await api.post("/v1/jobs", **kwargs)
        assert_problem(resp, status, kind)
    truncated = await api.post("/v1/jobs", content=body[: len(body) // 2], headers={"content-type": ctype})
    assert "closing boundary" in truncated.json()["detail"]
    photo_in_wrong_field = await api.post("/v1/jobs", files=[("photo", ("a.jpg", b"x"))])
    assert_problem(photo_in_wrong_field, 400, "malformed-upload", "field")
    assert left_behind(settings) == []
    assert sharpjobs(control_plane, namespace) == []


async def test_declared_length_over_the_limit_is_refused_before_reading(api, settings):
    resp = await api.post(
        "/v1/jobs",
        content=b"",
        headers={"content-type": "multipart/form-data; boundary=x", "content-length": str(50 * MB)},
    )
    assert_problem(resp, 413, "too-large")
    assert "50.0 MB" in resp.json()["detail"]


async def test_sharpjob_creation_failure_leaves_no_job_directory(settings_for, tmp_path):
    from sharpml_api.settings import RateLimits

    # A namespace that does not exist: the apiserver refuses the SharpJob after intake succeeded.
    settings = settings_for(namespace="no-such-namespace", rate_limits=RateLimits(0, 0, 1))
    async with asgi_client(settings) as api:
        resp = await api.post("/v1/jobs", headers=bearer(), **multipart(photo_set(tmp_path)))
    assert_problem(resp, 503, "cluster-unavailable")
    assert left_behind(settings) == []


async def test_unusable_data_volume_is_a_503_that_does_not_use_up_the_quota(settings_for, tmp_path):
    from sharpml_api.settings import RateLimits

    settings = settings_for(rate_limits=RateLimits(per_ip_per_hour=1, per_account_per_day=0))
    settings.data_dir.mkdir(parents=True)
    (settings.data_dir / "uploads").symlink_to(tmp_path)  # planted link: refused, never followed
    photos = multipart(photo_set(tmp_path / "p"))
    async with asgi_client(settings) as api:
        assert_problem(await api.post("/v1/jobs", headers=bearer(), **photos), 503, "storage-unavailable")
        (settings.data_dir / "uploads").unlink()
        assert (await api.post("/v1/jobs", headers=bearer(), **photos)).status_code == 201


async def test_invalid_tokens_are_refused(api, settings, rsa_keys, tmp_path):
    photos = multipart(photo_set(tmp_path))
    cases = {
        "expired": bearer(exp_in=-3600),
        "wrong audience": bearer(aud="someone-else"),
        "wrong issuer": bearer(iss="https://evil.test/"),
        "wrong signature": bearer(key="another-secret-0123456789-abcdefghijklmnop"),
        "no exp": {"Authorization": "Bearer " + _token_without("exp")},
        "no sub": {"Authorization": "Bearer " + _token_without("sub")},
        "alg none": {"Authorization": "Bearer " + _unsigned()},
        "HS256 keyed with the RSA public key": {"Authorization": "Bearer " + _confused(rsa_keys.public_pem)},
        "bad account id": bearer("acct/../x"),
        "not bearer": {"Authorization": "Basic dXNlcjpwYXNz"},
        "garbage": {"Authorization": "Bearer not.a.token"},
    }
    for case, headers in cases.items():
        resp = await api.post("/v1/jobs", headers=headers, **photos)
        assert_problem(resp, 401, "unauthorized")
        assert resp.headers["www-authenticate"].startswith("Bearer"), case
    ok = await api.post("/v1/jobs", headers=bearer(key=rsa_keys.private_pem, algorithm="RS256"), **photos)
    assert ok.status_code == 201, ok.text
    assert left_behind(settings) == [f"jobs/{ok.json()['id']}"]


def _token_without(claim: str) -> str:
    import time

    import jwt

    from tests.api.conftest import AUDIENCE, HS_SECRET, ISSUER

    payload = {"sub": "acct-1", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 600}
    del payload[claim]
    return jwt.encode(payload, HS_SECRET, algorithm="HS256")


def _unsigned() -> str:
    import base64
    import time

    from tests.api.conftest import AUDIENCE, ISSUER

    def b64(d: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

    claims = {"sub": "acct-1", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 600}
    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."


def _confused(public_pem: str) -> str:
    """The algorithm-confusion attack: an HS256 token whose HMAC key is the server's RSA public key."""
    import base64
    import hashlib
    import hmac
    import time

    from tests.api.conftest import AUDIENCE, ISSUER

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    claims = {"sub": "acct-1", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 600}
    signing = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{b64(json.dumps(claims).encode())}"
    sig = hmac.new(public_pem.encode(), signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{b64(sig)}"


async def test_only_the_configured_algorithms_are_accepted(settings_for, rsa_keys, tmp_path):
    from sharpml_api.settings import JwtSettings

    settings = settings_for()
    rs_only = dataclasses.replace(settings.jwt, algorithms=("RS256",))
    async with asgi_client(settings_for(jwt=rs_only)) as api:
        resp = await api.get("/v1/jobs", headers=bearer())  # a valid HS256 token
        assert_problem(resp, 401, "unauthorized")
        assert "'HS256' is not accepted" in resp.json()["detail"]
        ok = await api.get("/v1/jobs", headers=bearer(key=rsa_keys.private_pem, algorithm="RS256"))
        assert ok.status_code == 200
    async with asgi_client(settings_for(jwt=JwtSettings())) as api:
        resp = await api.get("/v1/jobs", headers=bearer())
        assert_problem(resp, 401, "unauthorized")
        assert "does not accept bearer tokens" in resp.json()["detail"]
