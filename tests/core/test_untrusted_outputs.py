"""Files the sandboxed SfM pod writes are read as hostile: no symlinks, no FIFOs, bounded, type-checked."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from sharpml.contract import SfmResult, read_progress
from sharpml.layout import UnsafePathError, read_untrusted
from sharpml.splat import SPLAT_DTYPE, SplatFormatError, count_gaussians


def test_symlinks_fifos_and_oversize_files_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root:x:0:0")
    (tmp_path / "link.json").symlink_to(secret)
    with pytest.raises(UnsafePathError):
        read_untrusted(tmp_path / "link.json", 1024)
    os.mkfifo(tmp_path / "fifo.json")  # a blocking read would hang the operator's handler
    with pytest.raises(UnsafePathError, match="not a regular file"):
        read_untrusted(tmp_path / "fifo.json", 1024)
    (tmp_path / "big.json").write_bytes(b" " * 2048)
    with pytest.raises(UnsafePathError, match="larger than 1024 bytes"):
        read_untrusted(tmp_path / "big.json", 1024)
    (tmp_path / "ok.json").write_text("{}")
    assert read_untrusted(tmp_path / "ok.json", 1024) == b"{}"


def test_zero_device_is_refused(tmp_path: Path) -> None:
    (tmp_path / "progress.json").symlink_to("/dev/zero")
    assert read_progress(tmp_path / "progress.json") is None


@pytest.mark.parametrize(
    "content",
    [
        b"[]",
        b'"x"',
        b"\xff\xfe",
        b'{"stage": 3, "fraction": 0.5}',
        b'{"stage": "map", "fraction": "x"}',
        b'{"stage": "map", "fraction": 7}',
        b'{"stage": "map", "fraction": true}',
    ],
)
def test_malformed_progress_reads_as_none(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "progress.json").write_bytes(content)
    assert read_progress(tmp_path / "progress.json") is None


def test_well_formed_progress_is_returned(tmp_path: Path) -> None:
    record = {"stage": "map", "fraction": 0.5, "message": "placed 4/8 photos", "time": 1.0}
    (tmp_path / "progress.json").write_text(json.dumps(record))
    assert read_progress(tmp_path / "progress.json") == record


def test_result_with_wrong_types_is_refused(tmp_path: Path) -> None:
    good = SfmResult(ok=True, reason=None, total=8, registered=8, points=900, mean_reprojection_error=0.4)
    good.write(tmp_path / "result.json")
    assert SfmResult.read(tmp_path / "result.json") == good
    for bad in (
        {"registered": "8"},
        {"ok": "yes"},
        {"points": -1},
        {"mean_reprojection_error": "low"},
        {"attempts": {"planned": "accepted"}},
        {"attempts": ["accepted"]},
        {"features": [-1]},
        {"intrinsics": "refined"},
        {"failure": "the user"},
        {"attempt": 2},
    ):
        data = {**json.loads((tmp_path / "result.json").read_text()), **bad}
        (tmp_path / "bad.json").write_text(json.dumps(data))
        with pytest.raises(ValueError, match="wrong type"):
            SfmResult.read(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a JSON object"):
        SfmResult.read(tmp_path / "list.json")


def test_count_gaussians_from_size_alone(tmp_path: Path) -> None:
    np.zeros(5, SPLAT_DTYPE).tofile(tmp_path / "p.splat")
    assert count_gaussians(tmp_path / "p.splat") == 5
    (tmp_path / "link.splat").symlink_to(tmp_path / "p.splat")
    with pytest.raises(OSError):
        count_gaussians(tmp_path / "link.splat")
    (tmp_path / "odd.splat").write_bytes(b"\0" * 33)
    with pytest.raises(SplatFormatError):
        count_gaussians(tmp_path / "odd.splat")
