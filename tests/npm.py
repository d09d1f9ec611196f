"""The viewer's npm project (``viewer/``) as tests use it: its installed packages and its built page.

``make viewer`` (run by ``make test``) installs and builds them; a test that needs them fails with
that instruction rather than skipping, so a suite run without them cannot look green.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VIEWER = REPO / "viewer"
NODE_MODULES = VIEWER / "node_modules"
#: Where ``make viewer`` writes the page and its assets (the API serves them from there).
BUILT = REPO / "api" / "sharpml_api" / "static" / "viewer"


def node() -> str:
    path = shutil.which("node")
    if path is None:
        pytest.fail("node is not installed (hack/system-deps.sh test installs it)")
    return path


def package(relative: str) -> Path:
    """A file inside ``viewer/node_modules``; fails the test when the packages are not installed."""
    path = NODE_MODULES / relative
    if not path.exists():
        pytest.fail(f"{path.relative_to(REPO)} is missing: run `make viewer` first")
    return path


def built_page() -> Path:
    """The built viewer directory; fails the test when ``make viewer`` has not built it."""
    if not (BUILT / "index.html").exists():
        pytest.fail(f"{BUILT.relative_to(REPO)}/index.html is missing: run `make viewer` first")
    return BUILT
