"""Shared fixtures for core tests: one small rendered scene per session, reused by every SfM test;
the CLI runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from sharpml.layout import DataDir, JobDir
from sharpml.synthetic import Dataset, write_dataset

#: Small enough for CI on two cores, large enough for COLMAP to place every camera.
N_PHOTOS = 12
SIZE = (640, 480)


@pytest.fixture(scope="session")
def scene_photos(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """Twelve photos of the synthetic scene, mixing JPEG, PNG and HEIC as phones produce them."""
    out = tmp_path_factory.mktemp("scene")
    return write_dataset(out, N_PHOTOS, *SIZE, formats=("jpg", "heic", "png"))


@pytest.fixture
def run(tmp_path: Path):  # type: ignore[no-untyped-def]
    """``run("validate", ...)``: the ``sharpml`` CLI in-process, with its data directory in tmp_path."""
    from sharpml.cli import cli

    runner = CliRunner()

    def invoke(*args: str):  # type: ignore[no-untyped-def]
        return runner.invoke(cli, list(args), env={"SHARPML_DATA_DIR": str(tmp_path / "data")})

    return invoke


@pytest.fixture(scope="session")
def reconstructed_job(scene_photos: Dataset, tmp_path_factory: pytest.TempPathFactory) -> JobDir:
    """That scene through intake and the real SfM stage: a job with ``colmap/scene`` and
    ``colmap/preview.splat`` (the trainer's input). Shared by the trainer's tests."""
    from sharpml.intake import ingest, select_uploads
    from sharpml.sfm import SfmOptions, reconstruct

    store = DataDir(tmp_path_factory.mktemp("reconstructed"))
    job = ingest(select_uploads([scene_photos.photos_dir]).uploads, store).job
    result = reconstruct(job, SfmOptions(num_threads=2))
    assert result.ok, result.reason
    return job


def noise_photos(folder: Path, n: int, seed: int = 11) -> list[Path]:
    """Photos of nothing in particular: blurred noise that shares no structure with any scene."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        small = rng.integers(0, 255, (SIZE[1] // 8, SIZE[0] // 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize(SIZE, Image.Resampling.BICUBIC)
        path = folder / f"noise_{i:02d}.jpg"
        img.save(path, quality=90)
        paths.append(path)
    return paths
