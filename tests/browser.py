"""Headless Chromium for tests: Debian's ``chromium`` (hack/system-deps.sh installs it) driven by
Playwright's Python client with ``executable_path`` set, so no browser is downloaded.

WebGL runs on the CPU through SwiftShader: recent Chromium enables it only when asked
(``--use-angle=swiftshader --enable-unsafe-swiftshader``). Pages record their console errors and
uncaught exceptions; :func:`assert_no_console_errors` fails a test on any. Screenshots go to
:func:`artifacts_dir`: ``$SHARPML_TEST_ARTIFACTS`` when set (CI keeps that directory), else
``.data/test-artifacts`` in the checkout.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: The flags every test browser starts with: new headless mode, software WebGL, no GPU process probing.
CHROMIUM_ARGS = (
    "--headless=new",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist",
    "--no-sandbox",  # tests run as root in CI containers, where Chromium's sandbox cannot start
    "--disable-dev-shm-usage",
)


def chromium_path() -> str:
    """Debian's Chromium binary itself (not the /usr/bin/chromium shell launcher)."""
    for candidate in (
        "/usr/lib/chromium/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("chromium is not installed (hack/system-deps.sh test installs Debian's chromium)")


def artifacts_dir(name: str) -> Path:
    """A directory for one test's artifacts (screenshots), kept after the run."""
    root = Path(os.environ.get("SHARPML_TEST_ARTIFACTS") or REPO / ".data" / "test-artifacts")
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class ConsoleLog:
    """What a page said on its console; ``errors`` holds console.error messages and uncaught exceptions."""

    errors: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=list(CHROMIUM_ARGS), headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture()
def page(browser) -> Iterator[object]:
    """A fresh browser context and page, 1280x800, its console recorded in ``page.console_log``."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = context.new_page()
    log = ConsoleLog()
    pg.on(
        "console",
        lambda m: (
            log.messages.append(f"{m.type}: {m.text}"),
            m.type == "error" and log.errors.append(m.text),
        ),
    )
    pg.on("pageerror", lambda exc: log.errors.append(f"uncaught: {exc}"))
    pg.console_log = log
    try:
        yield pg
    finally:
        context.close()


def assert_no_console_errors(pg) -> None:
    log: ConsoleLog = pg.console_log
    assert not log.errors, (
        "console errors:\n" + "\n".join(log.errors) + "\nall messages:\n" + "\n".join(log.messages)
    )
