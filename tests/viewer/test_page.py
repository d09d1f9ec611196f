"""The viewer page in headless Chromium against a stand-in of the API (tests/viewer/stub_api.py):
live progress from the event stream, the splat drawn once Complete (.spz, and .splat when there is
no .spz), and plain messages for a failed job and for expired or altered links.

Screenshots are kept under tests/browser.py's artifacts directory (``viewer/``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sharpml.splat import SH_C0, Gaussians, to_splat, write_splat
from sharpml.spz import write_spz
from tests.browser import artifacts_dir, assert_no_console_errors
from tests.npm import VIEWER, built_page
from tests.viewer.stub_api import StubApi

#: The canvas' background (viewer/src/style.css --scene-background): #101214.
BACKGROUND = np.array([0x10, 0x12, 0x14])
TIMEOUT_MS = 60_000  # software WebGL on a shared 2-core machine


def scene_gaussians(n: int = 4000, seed: int = 0) -> Gaussians:
    """A small, bright scene: a sphere of gaussians coloured by direction, on a flat disc."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    pos = d * 1.0
    pos[: n // 3] = np.c_[rng.uniform(-2, 2, n // 3), np.full(n // 3, 1.0), rng.uniform(-2, 2, n // 3)]
    colour = 0.5 + 0.45 * np.c_[d[:, 0], d[:, 1], -d[:, 2]]
    colour[: n // 3] = [0.55, 0.5, 0.4]
    return Gaussians(
        positions=pos.astype(np.float32),
        log_scales=np.full((n, 3), np.log(0.06), np.float32),
        f_dc=((colour - 0.5) / SH_C0).astype(np.float32),
        opacity_logits=np.full(n, 3.0, np.float32),
        rotations=np.tile(np.array([1, 0, 0, 0], np.float32), (n, 1)),
    )


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    """scene.splat from the project's writer, and scene.spz from it by the project's encoder."""
    out = tmp_path_factory.mktemp("artifacts")
    write_splat(out / "scene.splat", to_splat(scene_gaussians()))
    write_spz(out / "scene.splat", out / "scene.spz")
    return {"splat": out / "scene.splat", "spz": out / "scene.spz"}


@pytest.fixture()
def stub(request, artifacts) -> Iterator[StubApi]:
    formats = getattr(request, "param", ("splat", "spz"))
    api = StubApi(str(uuid.uuid4()), built_page(), {f: artifacts[f] for f in formats}).start()
    try:
        yield api
    finally:
        api.stop()


def canvas_pixels(page, path: Path) -> np.ndarray:
    page.locator("#scene").screenshot(path=str(path))
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def assert_drawn(pixels: np.ndarray) -> None:
    """The corners show the background; the splat's region, the middle, mostly does not."""
    h, w, _ = pixels.shape
    differs = np.abs(pixels - BACKGROUND).max(axis=2) > 24
    corners = np.concatenate([differs[:20, :20].ravel(), differs[-20:, -20:].ravel()])
    middle = differs[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3]
    assert corners.mean() < 0.05, f"the background is not the background: {corners.mean():.0%} differs"
    assert middle.mean() > 0.3, f"the splat's region is blank: only {middle.mean():.1%} of it differs"


def test_progress_then_the_splat(page, stub: StubApi) -> None:
    out = artifacts_dir("viewer")
    page.goto(stub.view_url())
    assert stub.connected.wait(30), "the page never opened the event stream"

    stub.push("Queued", 0, "queued (position 2)", "Waiting for the SfM node", queue=2)
    page.wait_for_selector("#phase:text('Queued')", timeout=TIMEOUT_MS)
    assert page.locator("#queue").inner_text() == "Position in the queue: 2"

    stub.push("Reconstructing", 15, "structure from motion: matching", "Matching features in 12 photos")
    page.wait_for_selector("#overall-text:text('15%')", timeout=TIMEOUT_MS)
    assert page.locator("#phase").inner_text() == "Reconstructing"
    assert page.locator("#stage").inner_text() == "structure from motion: matching"
    assert page.locator("#queue").is_hidden()
    active = page.locator("#stages li[data-stage=active]")
    assert active.inner_text().split("\n")[0] == "Reconstructing the cameras"
    assert active.locator(".stage-state").inner_text() == "50%"  # 15 of the stage's band 0-30
    assert "Matching features in 12 photos" in page.locator("#messages").inner_text()

    stub.push("Training", 62, "training: step 3000/7000", "Training on a RunPod GPU")
    page.wait_for_selector("#overall-text:text('62%')", timeout=TIMEOUT_MS)
    assert page.locator("#stages li[data-stage=done]").first.inner_text().startswith("Waiting in the queue")
    assert page.locator("#stages li[data-stage=active] .stage-state").inner_text() == "49%"  # (62-30)/65
    assert page.locator("#overall").get_attribute("value") == "62"
    page.screenshot(path=str(out / "progress.png"))

    stub.push("Complete", 100, "complete", "Your scene is ready")
    page.wait_for_selector("body[data-state=viewing]", timeout=TIMEOUT_MS)
    assert any(p.endswith("/artifacts/scene.spz") for p in stub.requests), "the .spz was not preferred"
    assert not any(p.endswith("/artifacts/scene.splat") for p in stub.requests)
    assert_drawn(canvas_pixels(page, out / "complete-canvas.png"))
    page.screenshot(path=str(out / "complete.png"))
    downloads = page.locator("#downloads a")
    assert sorted(downloads.all_inner_texts()) == [".splat", ".spz"]
    assert_no_console_errors(page)


def test_reconnects_after_a_lost_stream(page, stub: StubApi) -> None:
    page.goto(stub.view_url())
    assert stub.connected.wait(30)
    stub.push("Reconstructing", 10, "structure from motion: features", "Extracting features")
    page.wait_for_selector("#overall-text:text('10%')", timeout=TIMEOUT_MS)
    stub.drop()
    page.wait_for_selector("#connection:text('Connection lost')", timeout=TIMEOUT_MS)
    assert stub.connected.wait(30), "the page did not reconnect"
    assert stub.last_event_ids[0] is None and stub.last_event_ids[1] is not None  # resumes after the last id
    stub.push("Reconstructing", 20, "structure from motion: matching", "Matching")
    page.wait_for_selector("#overall-text:text('20%')", timeout=TIMEOUT_MS)
    assert page.locator("#connection").inner_text() == ""
    assert_no_console_errors(page)


def test_owner_token_from_the_fragment(page, stub: StubApi) -> None:
    """An owner opens the page with ``#token=``: the API calls carry it as a bearer token (no grant in
    the query), it moves to sessionStorage, and the address bar no longer shows it."""
    page.route("**/v1/jobs/*/view", lambda route: route.fulfill(path=str(built_page() / "index.html")))
    page.goto(f"{stub.base}/v1/jobs/{stub.job_id}/view#token={stub.OWNER_TOKEN}")
    assert stub.connected.wait(30)
    stub.push("Training", 40, "training: step 100/7000", "Training")
    page.wait_for_selector("#overall-text:text('40%')", timeout=TIMEOUT_MS)
    assert stub.owner_requests == [f"/v1/jobs/{stub.job_id}/events"]
    assert "#token" not in page.url and "token" not in page.url
    assert page.evaluate("sessionStorage.getItem('sharpml.token')") == stub.OWNER_TOKEN
    assert_no_console_errors(page)


@pytest.mark.parametrize("stub", [("splat",)], indirect=True)
def test_splat_without_spz(page, stub: StubApi) -> None:
    page.goto(stub.view_url())
    assert stub.connected.wait(30)
    stub.push("Complete", 100, "complete", "Your scene is ready")
    page.wait_for_selector("body[data-state=viewing]", timeout=TIMEOUT_MS)
    assert any(p.endswith("/artifacts/scene.splat") for p in stub.requests)
    assert_drawn(canvas_pixels(page, artifacts_dir("viewer") / "complete-splat-canvas.png"))
    assert_no_console_errors(page)


def test_failed_job_says_why(page, stub: StubApi) -> None:
    page.goto(stub.view_url())
    assert stub.connected.wait(30)
    stub.push(
        "Failed", 30, "reconstructed", "Only 3 of 12 photos could be placed; take more overlapping photos"
    )
    page.wait_for_selector("body[data-state=ended]", timeout=TIMEOUT_MS)
    assert page.locator("#notice-title").inner_text() == "This job failed"
    assert "Only 3 of 12 photos" in page.locator("#notice-text").inner_text()
    assert page.locator("#scene").is_hidden()
    assert_no_console_errors(page)


@pytest.mark.parametrize(
    ("status", "title", "kwargs"),
    [(410, "This link has expired", {"expires_in": -60}), (403, "This link is not valid", {"tamper": True})],
)
def test_refused_links(page, stub: StubApi, status: int, title: str, kwargs: dict) -> None:
    # The page itself is served (here the stand-in checks only the API calls the page makes, as for a
    # link that expired while the page stayed open); the event stream answers 410 or 403.
    url = stub.view_url(**kwargs)
    page.route("**/v1/jobs/*/view?*", lambda route: route.fulfill(path=str(built_page() / "index.html")))
    page.goto(url)
    page.wait_for_selector("body[data-state=denied]", timeout=TIMEOUT_MS)
    assert page.locator("#notice-title").inner_text() == title
    detail = page.locator("#notice-text").inner_text()
    assert ("expired at" in detail) if status == 410 else ("not valid" in detail)
    page.screenshot(path=str(artifacts_dir("viewer") / f"refused-{status}.png"))
    # The browser reports the refused request itself on the console, and nothing else.
    assert all(f"status of {status}" in e for e in page.console_log.errors), page.console_log.errors
    assert not stub.connected.is_set(), "the stream was opened by a refused link"


def test_stages_match_the_operator() -> None:
    """The page's per-stage bands are the operator's stage shares (viewer/src/stages.json)."""
    from sharpml_operator.stages.sfm import SfmStage
    from sharpml_operator.stages.training import TrainingStage

    stages = {
        s["name"]: s["band"] for s in json.loads((VIEWER / "src" / "stages.json").read_text())["stages"]
    }
    assert stages["Reconstructing the cameras"] == list(SfmStage.share)
    assert stages["Training the splat"] == list(TrainingStage.share)
    assert stages["Delivering"] == [TrainingStage.share[1], 100]
