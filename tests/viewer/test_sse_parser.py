"""The page's SSE parser (viewer/src/sse.ts) on the API's own event format (sharpml_api.events.sse),
split into chunks at every possible place, with CRLF and CR line ends, comments and ``retry``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from sharpml_api.events import sse

from tests.npm import VIEWER, node, package

SCRIPT = Path(__file__).with_name("sse_parse.mjs")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """sse.ts as an ES module node can import (esbuild strips the types)."""
    out = tmp_path_factory.mktemp("sse") / "sse.mjs"
    esbuild = package(".bin/esbuild")
    subprocess.run(
        [
            str(esbuild),
            str(VIEWER / "src" / "sse.ts"),
            "--format=esm",
            f"--outfile={out}",
            "--log-level=warning",
        ],
        check=True,
        timeout=60,
    )
    return out


def parse(bundle: Path, chunks: list[str], tmp_path: Path) -> dict:
    src = tmp_path / "chunks.json"
    src.write_text(json.dumps(chunks))
    proc = subprocess.run(
        [node(), str(SCRIPT), str(bundle), str(src)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


STREAM = (
    "retry: 3000\n\n"
    + sse("status", json.dumps({"phase": "Queued", "message": "line one\nline two"}), "41")
    + ": keep-alive\n\n"
    + sse("status", json.dumps({"phase": "Training", "progress": {"percent": 62}}), "42")
    + sse("deleted", json.dumps({"id": "j"}))
)
EXPECTED = [
    {"event": "status", "data": json.dumps({"phase": "Queued", "message": "line one\nline two"}), "id": "41"},
    {"event": "status", "data": json.dumps({"phase": "Training", "progress": {"percent": 62}}), "id": "42"},
    {"event": "deleted", "data": json.dumps({"id": "j"}), "id": "42"},  # the last id carries over
]


def test_whole_stream(bundle: Path, tmp_path: Path) -> None:
    out = parse(bundle, [STREAM], tmp_path)
    assert out == {"events": EXPECTED, "lastId": "42", "retry": 3000}


def test_every_split_point_and_line_ending(bundle: Path, tmp_path: Path) -> None:
    """One run of the parser per (line ending, split point), batched into one node process."""
    cases = []
    for ending in ("\n", "\r\n", "\r"):
        text = STREAM.replace("\n", ending)
        cases += [[text[:i], text[i:]] for i in range(len(text) + 1)]
        cases.append(list(text))  # one character at a time
    src = tmp_path / "cases.json"
    src.write_text(json.dumps(cases))
    driver = tmp_path / "many.mjs"
    driver.write_text(
        "import { readFileSync } from 'node:fs';\n"
        f"const {{ SseParser }} = await import({json.dumps(bundle.as_uri())});\n"
        f"const cases = JSON.parse(readFileSync({json.dumps(str(src))}, 'utf8'));\n"
        "console.log(JSON.stringify(cases.map((chunks) => {\n"
        "  const p = new SseParser(); const ev = [];\n"
        "  for (const c of chunks) ev.push(...p.feed(c));\n"
        "  return ev; })));\n"
    )
    proc = subprocess.run([node(), str(driver)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert len(results) == len(cases)
    wrong = [(c, r) for c, r in zip(cases, results, strict=True) if r != EXPECTED]
    assert not wrong, f"{len(wrong)} of {len(cases)} splits parsed wrongly, e.g. {wrong[0]}"
