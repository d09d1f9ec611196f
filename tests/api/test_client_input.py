"""Whatever a client writes into headers, part headers and names is answered with a 4xx or accepted:
file names outside latin-1 (UTF-8 as browsers send them, NFD, emoji), bytes that are not UTF-8, form
field names outside latin-1, broken part headers. Sent as raw bytes, through the ASGI app and through
real uvicorn (the ``sharpml-api`` console script), because HTTP clients refuse to build most of them."""

from __future__ import annotations

import json
import socket
import unicodedata
from pathlib import Path

import pytest

from tests.api.conftest import bearer, left_behind, sharpjobs
from tests.api.test_uploads import assert_problem
from tests.core.photos import photo_set

pytestmark = [pytest.mark.cluster]

BOUNDARY = "sharpml-raw-boundary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"

#: (the raw bytes of a part's ``filename`` parameter, the name intake.json must keep)
HOSTILE_NAMES = [
    (unicodedata.normalize("NFD", "café.jpg").encode(), "café.jpg"),  # decomposed: kept composed (NFC)
    ("📷 Ferienhaus.jpg".encode(), "📷 Ferienhaus.jpg"),  # outside the BMP
    ("写真_0003.jpg".encode(), "写真_0003.jpg"),
    (b"\xff\xfe_raw.jpg", "\ufffd\ufffd_raw.jpg"),  # not UTF-8 at all: replacement characters
    (b"x" * 1000 + b".jpg", "x" * 250 + "\u2026.jpg"),  # length-bounded, the extension kept
]


def part(disposition: bytes, data: bytes, extra_headers: bytes = b"") -> bytes:
    return (
        f"--{BOUNDARY}\r\n".encode()
        + b"Content-Disposition: "
        + disposition
        + b"\r\n"
        + extra_headers
        + b"\r\n"
        + data
        + b"\r\n"
    )


def body(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def photo_part(filename: bytes, data: bytes) -> bytes:
    return part(b'form-data; name="files"; filename="' + filename + b'"', data)


def hostile_upload(folder: Path) -> bytes:
    photos = [p.read_bytes() for p in photo_set(folder, len(HOSTILE_NAMES))]
    return body(*(photo_part(raw, data) for (raw, _), data in zip(HOSTILE_NAMES, photos, strict=True)))


def kept_names(settings, job_id: str) -> list[str]:
    manifest = settings.data_dir / "jobs" / job_id / "intake.json"
    return [i["source_name"] for i in json.loads(manifest.read_text())["images"]]


@pytest.mark.anyio
async def test_names_outside_latin1_are_display_data(api, settings, tmp_path):
    resp = await api.post(
        "/v1/jobs", content=hostile_upload(tmp_path), headers={**bearer(), "content-type": CONTENT_TYPE}
    )
    assert resp.status_code == 201, resp.text
    assert sorted(kept_names(settings, resp.json()["id"])) == sorted(name for _, name in HOSTILE_NAMES)


# (what the body holds, status, problem type, rule, text the answer must hold)
REFUSALS = {
    "form field name outside latin-1": (
        lambda photos: [part('form-data; name="матчер"'.encode(), b"sequential")],
        400,
        "malformed-upload",
        "unknown-field",
        "unknown form field 'матчер'",
    ),
    "form field name that is not UTF-8": (
        lambda photos: [part(b'form-data; name="\xff\xfe"', b"x")],
        400,
        "malformed-upload",
        "unknown-field",
        "unknown form field '\ufffd\ufffd'",
    ),
    "disposition type outside latin-1 (a Cyrillic o)": (
        lambda photos: [part('f\u043erm-data; name="files"; filename="a.jpg"'.encode(), photos[0])],
        400,
        "malformed-upload",
        "part-headers",
        "Content-Disposition: form-data",
    ),
    "unterminated quoted file name (read to the end of the header)": (
        lambda photos: [part(b'form-data; name="files"; filename="a.jpg', photos[0])],
        422,
        "photos-rejected",
        "count",
        "1 photos uploaded",
    ),
    "only the extended filename* (RFC 7578 forbids it)": (
        lambda photos: [part(b"form-data; name=\"files\"; filename*=UTF-8''caf%C3%A9.jpg", photos[0])],
        400,
        "malformed-upload",
        "not-a-file",
        "a filename is missing",
    ),
    "part header name outside ASCII": (
        lambda photos: [
            part(b'form-data; name="files"; filename="a.jpg"', photos[0], "Cönt: x\r\n".encode())
        ],
        400,
        "malformed-upload",
        "multipart",
        "malformed multipart body",
    ),
    "part headers too long": (
        lambda photos: [
            part(
                b'form-data; name="files"; filename="a.jpg"',
                photos[0],
                b"".join([b"X: " + b"y" * 4000 + b"\r\n"] * 6),
            )
        ],
        400,
        "malformed-upload",
        None,
        "header",
    ),
    "NFD and NFC spellings of one name are one name": (
        lambda photos: [
            photo_part("café.jpg".encode(), photos[0]),
            photo_part(unicodedata.normalize("NFD", "café.jpg").encode(), photos[1]),
            *(photo_part(f"{i}.jpg".encode(), photos[i]) for i in range(2, 5)),
        ],
        422,
        "photos-rejected",
        "duplicate",
        "café.jpg: appears more than once",
    ),
}


@pytest.mark.anyio
@pytest.mark.parametrize("case", list(REFUSALS))
async def test_hostile_part_headers_are_4xx_and_leave_nothing(
    case, api, settings, control_plane, namespace, tmp_path
):
    make, status, kind, rule, text = REFUSALS[case]
    photos = [p.read_bytes() for p in photo_set(tmp_path)]
    resp = await api.post(
        "/v1/jobs", content=body(*make(photos)), headers={**bearer(), "content-type": CONTENT_TYPE}
    )
    problem = assert_problem(resp, status, kind, rule)
    assert text in json.dumps(problem, ensure_ascii=False), problem
    assert left_behind(settings) == [] and sharpjobs(control_plane, namespace) == []


def exchange(port: int, head: bytes, payload: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One request as raw bytes over a socket (headers exactly as given), the response parsed."""
    request = head + f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(request)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    head_bytes, _, rest = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), headers, rest


def test_raw_bytes_through_uvicorn(settings, serve_api, control_plane, namespace, tmp_path):
    api = serve_api(settings)
    auth = f"Authorization: {bearer('acct-raw')['Authorization']}\r\n".encode()
    post = b"POST /v1/jobs HTTP/1.1\r\nHost: api\r\n" + auth

    status, headers, payload = exchange(
        api.port, post + f"Content-Type: {CONTENT_TYPE}\r\n".encode(), hostile_upload(tmp_path)
    )
    assert status == 201, payload
    job_id = json.loads(payload)["id"]
    assert sorted(kept_names(settings, job_id)) == sorted(name for _, name in HOSTILE_NAMES)

    field = body(part('form-data; name="матчер"'.encode(), b"x"))
    status, headers, payload = exchange(api.port, post + f"Content-Type: {CONTENT_TYPE}\r\n".encode(), field)
    assert status == 400 and json.loads(payload)["errors"][0]["rule"] == "unknown-field"

    # Request headers holding bytes outside ASCII: each is a 4xx from the API, never a 5xx.
    status, headers, payload = exchange(
        api.port, post + "Content-Type: multipart/form-data; boundary=ünïcödé\r\n".encode(), field
    )
    assert status == 400 and headers["content-type"] == "application/problem+json", payload
    status, headers, payload = exchange(api.port, post + "Content-Type: bild/jpég\r\n".encode(), b"x")
    assert status == 415 and json.loads(payload)["type"].endswith("/unsupported-media-type")
    status, headers, payload = exchange(
        api.port, "GET /v1/jobs HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer tökén\r\n".encode()
    )
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    status, headers, payload = exchange(
        api.port, f"GET /v1/jobs/{job_id} HTTP/1.1\r\nHost: api\r\nX-Job-Token: tökén\r\n".encode()
    )
    assert status == 404
    status, headers, payload = exchange(
        api.port, post + f"Content-Type: {CONTENT_TYPE}\r\nX-Forwarded-For: ünï, 1.2.3.4\r\n".encode(), field
    )
    assert status == 400
    assert [j["metadata"]["name"] for j in sharpjobs(control_plane, namespace)] == [job_id]
    assert left_behind(settings) == [f"jobs/{job_id}"]


@pytest.mark.anyio
@pytest.mark.parametrize("length", [b"\xb2", b"9" * 5000])
async def test_content_length_that_is_not_a_small_ascii_number(length, api, settings):
    """Superscript two is a digit to ``str.isdigit`` but not to ``int``; 5000 digits are over
    Python's int-from-text limit. Both once escaped as 500s through the ASGI interface."""
    resp = await api.post(
        "/v1/jobs",
        content=b"",
        headers=[*bearer().items(), (b"content-type", CONTENT_TYPE.encode()), (b"content-length", length)],
    )
    assert 400 <= resp.status_code < 500, resp.text
    assert left_behind(settings) == []


@pytest.mark.anyio
async def test_endless_epilogue_is_cut_off(api, settings_for, tmp_path):
    """After the closing boundary the body is ignored, but not without end: 413 past the ceiling."""
    from sharpml_api.uploads import body_ceiling

    settings = settings_for()
    photos = [p.read_bytes() for p in photo_set(tmp_path)]
    upload = body(*(photo_part(f"{i}.jpg".encode(), d) for i, d in enumerate(photos)))
    filler = b"\0" * 65536

    async def chunks():
        yield upload
        for _ in range(body_ceiling(settings.limits) // len(filler) + 2):
            yield filler

    resp = await api.post("/v1/jobs", content=chunks(), headers={**bearer(), "content-type": CONTENT_TYPE})
    assert_problem(resp, 413, "too-large")
    assert left_behind(settings) == []
