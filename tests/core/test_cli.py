"""The ``sharpml`` command line: exit codes, messages, and the whole job end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sharpml.contract import EXIT_ERROR, EXIT_OK, EXIT_QUALITY_GATE, EXIT_REJECTED
from sharpml.splat import read_splat

from .conftest import noise_photos
from .photos import photo_set, png_bytes, upright_pattern, write
from .test_splat import random_gaussians


def test_validate_accepts_and_rejects_with_every_file_named(run, tmp_path: Path) -> None:
    good = photo_set(tmp_path / "good", 5)
    ok = run("validate", str(tmp_path / "good"))
    assert ok.exit_code == EXIT_OK, ok.output
    assert "5 photos would be accepted" in ok.output
    bad = write(tmp_path / "IMG_0042.jpg", png_bytes(upright_pattern()))
    result = run("validate", str(bad), *map(str, good[:3]))
    assert result.exit_code == EXIT_REJECTED
    assert "4 photos uploaded; at least 5 are needed" in result.output
    assert "IMG_0042.jpg: content is PNG but extension says JPEG" in result.output


@pytest.mark.slow
def test_process_writes_a_preview_splat(run, scene_photos, tmp_path: Path) -> None:
    out = tmp_path / "scene.splat"
    result = run("process", str(scene_photos.photos_dir), "-o", str(out))
    assert result.exit_code == EXIT_OK, result.output
    assert "12/12 photos placed" in result.output
    assert "preview splat (untrained" in result.output
    assert len(read_splat(out)) > 300
    jobs = list((tmp_path / "data" / "jobs").iterdir())
    assert len(jobs) == 1 and (jobs[0] / "colmap" / "scene" / "sparse" / "0" / "points3D.bin").exists()


def test_process_rejected_photos_exit_3_and_store_nothing(run, tmp_path: Path) -> None:
    photo_set(tmp_path / "few", 3)
    result = run("process", str(tmp_path / "few"), "-o", str(tmp_path / "x.splat"))
    assert result.exit_code == EXIT_REJECTED
    assert "3 photos uploaded; at least 5 are needed" in result.output
    assert "nothing was stored" in result.output
    assert not (tmp_path / "x.splat").exists()
    assert list((tmp_path / "data" / "jobs").iterdir()) == []


@pytest.mark.slow
def test_process_quality_gate_exit_4(run, tmp_path: Path) -> None:
    noise_photos(tmp_path / "noise", 5)
    result = run("process", str(tmp_path / "noise"), "-o", str(tmp_path / "x.splat"))
    assert result.exit_code == EXIT_QUALITY_GATE, result.output
    assert "reconstruction rejected: none of the 5 photos could be placed together" in result.output
    assert not (tmp_path / "x.splat").exists()


def test_convert_and_inspect(run, tmp_path: Path) -> None:
    from sharpml.splat import write_ply

    write_ply(tmp_path / "in.ply", random_gaussians(1000))
    result = run("convert", str(tmp_path / "in.ply"), str(tmp_path / "out.splat"))
    assert result.exit_code == EXIT_OK, result.output
    assert result.output.startswith("1000 gaussians")
    info = run("inspect", "--json", str(tmp_path / "out.splat"))
    assert info.exit_code == EXIT_OK
    data = json.loads(info.output)
    assert data["gaussians"] == 1000 and data["sorted"] is True and data["non_finite"] == 0
    (tmp_path / "bad.ply").write_text("ply\nformat ascii 1.0\nelement vertex 0\nend_header\n")
    bad = run("convert", str(tmp_path / "bad.ply"), str(tmp_path / "bad.splat"))
    assert bad.exit_code == EXIT_ERROR
    assert "not a 3D Gaussian splatting PLY" in bad.output


def test_inspect_flags_non_finite_positions(run, tmp_path: Path) -> None:
    from sharpml.splat import SPLAT_DTYPE

    rec = np.zeros(2, SPLAT_DTYPE)
    rec["position"][1] = [np.nan, 0, 0]
    rec.tofile(tmp_path / "nan.splat")
    result = run("inspect", str(tmp_path / "nan.splat"))
    assert result.exit_code == EXIT_ERROR
    assert "non_finite: 1" in result.output


@pytest.mark.slow
def test_demo_runs_the_whole_job_and_scores_it(run, tmp_path: Path) -> None:
    result = run("demo", "-n", "8", "--size", "640x480")
    assert result.exit_code == EXIT_OK, result.output
    assert "8/8 photos placed" in result.output
    assert "pose accuracy vs ground truth: 8/8 cameras" in result.output
    assert (tmp_path / "data" / "demo" / "scene.splat").exists()
