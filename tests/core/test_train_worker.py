"""The RunPod worker's handler: input validation, and its whole flow against a local HTTP server that
plays the object store (presigned GET of the scene, presigned PUTs of the results). RunPod's own worker
loop and S3 are the next issue's."""

from __future__ import annotations

import io
import json
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from sharpml import splat
from sharpml.contract import SpzCheck, TrainResult
from sharpml.layout import JobDir
from sharpml.train.runpod_worker import extract_scene, handle, parse_input


class Store:
    """A tiny object store: GET serves ``objects``, PUT stores the body; ``fail_put`` answers 403."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.puts: dict[str, bytes] = {}
        self.fail_put = False
        store = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = store.objects.get(urlsplit(self.path).path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if store.fail_put:
                    self.send_error(403, "signature expired")
                    return
                store.puts[self.path] = body
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture
def store() -> Iterator[Store]:
    s = Store()
    thread = threading.Thread(target=s.server.serve_forever, daemon=True)
    thread.start()
    yield s
    s.server.shutdown()
    s.server.server_close()


def scene_tar(scene: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("images", "sparse"):
            tar.add(scene / name, arcname=name)
    return buf.getvalue()


def job_input(store: Store, **overrides: object) -> dict:
    base = {
        "scene_url": store.url("/scene.tar.gz?X-Amz-Signature=abc"),
        "preview_url": store.url("/preview.splat"),
        "upload": {
            "splat": store.url("/out/scene.splat?sig=1"),
            "ply": store.url("/out/point_cloud.ply?sig=2"),
            "spz": store.url("/out/scene.spz?sig=4"),
            "result": store.url("/out/result.json?sig=3"),
        },
        "options": {"steps": 6, "max_image_size": 48, "max_gaussians": 2000, "seed": 1},
    }
    return {**base, **overrides}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"scene_url": None}, "scene_url: must be a URL"),
        ({"scene_url": "file:///etc/passwd"}, "scene_url: must be an https or http URL"),
        ({"upload": {}}, "upload: must be an object with at least a 'splat' URL"),
        ({"upload": {"splat": "https://x/s", "logs": "https://x/l"}}, "upload: unknown kind(s) logs"),
        ({"options": {"steps": 0}}, "options.steps: must be 1 to 100000"),
        ({"options": {"steps": "7000"}}, "options.steps: must be a whole number"),
        ({"options": {"device": "cpu"}}, "options: unknown option(s) device"),
        ({"options": {"max_gaussians": 10**9}}, "options.max_gaussians: must be 100 to 10000000"),
        ({"webhook": "https://x"}, "input: unknown field(s) webhook"),
    ],
)
def test_invalid_input_is_refused_with_the_field_named(store: Store, change: dict, message: str) -> None:
    sent: list = []
    result = handle(
        {"id": "j1", "input": job_input(store, **change)},
        progress_sink=lambda *a: sent.append(a),
        allow_http=True,
    )
    assert list(result) == ["error"] and result["error"].startswith(f"invalid input: {message}"), result
    assert sent == [] and store.puts == {}


def test_only_https_without_the_test_switch() -> None:
    with pytest.raises(ValueError, match="scene_url: must be an https URL"):
        parse_input({"scene_url": "http://bucket/scene.tar", "upload": {"splat": "https://b/s"}})
    assert handle({"id": "j", "input": "scene.tar"}) == {
        "error": "invalid input: input: must be a JSON object"
    }
    _, _, uploads, options = parse_input({"scene_url": "https://b/s.tar", "upload": {"splat": "https://b/o"}})
    assert uploads == {"splat": "https://b/o"} and options.steps == 7000 and options.device == "auto"


def test_downloads_trains_reports_progress_and_uploads(store: Store, reconstructed_job: JobDir) -> None:
    store.objects["/scene.tar.gz"] = scene_tar(reconstructed_job.scene)
    store.objects["/preview.splat"] = reconstructed_job.preview_splat.read_bytes()
    sent: list[tuple[dict, dict]] = []
    job = {"id": "job-1", "input": job_input(store)}
    result = handle(job, progress_sink=lambda j, p: sent.append((j, p)), allow_http=True)
    assert "error" not in result, result
    assert result["uploaded"] == ["ply", "result", "splat", "spz"]
    record = TrainResult.from_json({k: v for k, v in result.items() if k != "uploaded"})
    assert record.ok and record.steps == 6 and (record.width, record.height) == (48, 36)
    assert record.preview_psnr is not None and record.test_views == 2
    # What was PUT is what was trained.
    assert set(store.puts) == {
        "/out/scene.splat?sig=1",
        "/out/point_cloud.ply?sig=2",
        "/out/result.json?sig=3",
        "/out/scene.spz?sig=4",
    }
    splat_bytes = store.puts["/out/scene.splat?sig=1"]
    assert len(splat_bytes) == 32 * record.gaussians
    check = SpzCheck("scene.spz")
    check.feed(store.puts["/out/scene.spz?sig=4"])
    assert check.count() == record.gaussians
    assert json.loads(store.puts["/out/result.json?sig=3"]) == record.to_json()
    # Progress went to RunPod with the job, stage by stage, ending with the upload.
    assert all(j is job for j, _ in sent)
    stages = [p["stage"] for _, p in sent]
    assert stages[0] == "download" and stages[-1] == "upload" and "train" in stages and "evaluate" in stages
    assert sent[-1][1]["fraction"] == 1.0


def test_uploaded_ply_is_a_3dgs_ply(store: Store, reconstructed_job: JobDir, tmp_path: Path) -> None:
    store.objects["/scene.tar.gz"] = scene_tar(reconstructed_job.scene)
    payload = job_input(store, preview_url=None, upload={"splat": store.url("/s"), "ply": store.url("/p")})
    result = handle({"id": "j", "input": payload}, progress_sink=lambda *a: None, allow_http=True)
    assert result["uploaded"] == ["ply", "splat"] and result["preview_psnr"] is None
    (tmp_path / "p.ply").write_bytes(store.puts["/p"])
    assert len(splat.read_ply(tmp_path / "p.ply")) == result["gaussians"]


def test_transfer_failures_are_reported(store: Store, reconstructed_job: JobDir) -> None:
    missing = handle({"id": "j", "input": job_input(store)}, progress_sink=lambda *a: None, allow_http=True)
    assert missing["error"].startswith("HTTP 404 from 127.0.0.1")
    store.objects["/scene.tar.gz"] = scene_tar(reconstructed_job.scene)
    store.objects["/preview.splat"] = b"x" * 32
    store.fail_put = True
    denied = handle({"id": "j", "input": job_input(store)}, progress_sink=lambda *a: None, allow_http=True)
    assert denied["error"].startswith("HTTP 403") and "signature expired" in denied["error"]


def test_archive_with_a_link_or_an_escape_is_refused(tmp_path: Path) -> None:
    def archive(add) -> Path:  # type: ignore[no-untyped-def]
        path = tmp_path / f"a{len(list(tmp_path.iterdir()))}.tar"
        with tarfile.open(path, "w") as tar:
            add(tar)
        return path

    def link(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("images/0001.jpg")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)

    def escape(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("images/../../x")
        tar.addfile(info, io.BytesIO(b""))

    def stray(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("run.sh")
        tar.addfile(info, io.BytesIO(b""))

    for add, message in (
        (link, "not a plain file"),
        (escape, "outside the scene"),
        (stray, "unexpected run.sh"),
    ):
        with pytest.raises(ValueError, match=message):
            extract_scene(archive(add), tmp_path / "out")
    not_tar = tmp_path / "x.tar"
    not_tar.write_bytes(b"not a tar")
    with pytest.raises(ValueError, match="not a readable tar file"):
        extract_scene(not_tar, tmp_path / "out")
