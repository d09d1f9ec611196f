"""Splat formats: 3DGS PLY -> .splat byte layout, ordering, round trip, previews."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from sharpml.splat import (
    SH_C0,
    SPLAT_DTYPE,
    Gaussians,
    SplatFormatError,
    describe,
    ply_to_splat,
    preview_from_points,
    read_ply,
    read_splat,
    write_ply,
)


def random_gaussians(n: int, seed: int = 0) -> Gaussians:
    rng = np.random.default_rng(seed)
    return Gaussians(
        positions=rng.normal(0, 3, (n, 3)).astype(np.float32),
        log_scales=rng.normal(-4, 1, (n, 3)).astype(np.float32),
        f_dc=rng.normal(0, 1, (n, 3)).astype(np.float32),
        opacity_logits=rng.normal(0, 2, n).astype(np.float32),
        rotations=rng.normal(0, 1, (n, 4)).astype(np.float32),
    )


def test_one_gaussian_byte_for_byte(tmp_path: Path) -> None:
    g = Gaussians(
        positions=np.array([[1.0, -2.0, 3.5]], np.float32),
        log_scales=np.array([[0.0, np.log(2.0), np.log(0.5)]], np.float32),
        f_dc=np.array([[1.0, 0.0, -1.0]], np.float32),
        opacity_logits=np.array([0.0], np.float32),
        rotations=np.array([[2.0, 0.0, 0.0, 0.0]], np.float32),  # unnormalised identity
    )
    write_ply(tmp_path / "one.ply", g)
    assert ply_to_splat(tmp_path / "one.ply", tmp_path / "one.splat") == 1
    raw = (tmp_path / "one.splat").read_bytes()
    assert len(raw) == 32
    pos = struct.unpack("<3f", raw[:12])
    scale = struct.unpack("<3f", raw[12:24])
    rgba = tuple(raw[24:28])
    rot = tuple(raw[28:32])
    assert pos == (1.0, -2.0, 3.5)
    assert scale == pytest.approx((1.0, 2.0, 0.5))
    expected_rgb = [round((0.5 + SH_C0 * c) * 255) for c in (1.0, 0.0, -1.0)]
    assert rgba == (*expected_rgb, 128)  # sigmoid(0) = 0.5 -> 127.5 -> 128
    assert rot == (255, 128, 128, 128)  # w=1 -> 256 clipped to 255


def test_sorted_by_volume_times_opacity_and_round_trips(tmp_path: Path) -> None:
    g = random_gaussians(5000)
    write_ply(tmp_path / "g.ply", g)
    ply_to_splat(tmp_path / "g.ply", tmp_path / "g.splat")
    records = read_splat(tmp_path / "g.splat")
    assert len(records) == 5000
    importance = np.exp(g.log_scales.sum(1, dtype=np.float64)) / (
        1 + np.exp(-g.opacity_logits.astype(np.float64))
    )
    order = np.argsort(-importance, kind="stable")
    # Same gaussians, in descending importance (ties may fall either way at float precision).
    np.testing.assert_allclose(importance[order], np.sort(importance)[::-1])
    got = {tuple(p) for p in records["position"].tolist()}
    assert got == {tuple(p) for p in g.positions.tolist()}
    by_pos = {tuple(p): i for i, p in enumerate(g.positions.tolist())}
    order = np.array([by_pos[tuple(p)] for p in records["position"].tolist()])
    np.testing.assert_allclose(importance[order], np.sort(importance)[::-1], rtol=1e-5)
    np.testing.assert_allclose(records["scale"], np.exp(g.log_scales[order]), rtol=1e-6)
    q = g.rotations[order] / np.linalg.norm(g.rotations[order], axis=1, keepdims=True)
    decoded = (records["rotation"].astype(np.float32) - 128) / 128
    assert np.abs(decoded - q).max() <= 1 / 128 + 1e-6
    assert describe(records)["sorted"] is True
    assert describe(records[::-1])["sorted"] is False


def test_ply_with_view_dependent_colour_is_read(tmp_path: Path) -> None:
    """Trainer output carries f_rest_* and normals; they are read past, not required."""
    from plyfile import PlyData, PlyElement

    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(45)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    arr = np.zeros(3, dtype=[(n, "<f4") for n in names])
    arr["rot_0"] = 1
    arr["x"] = [1, 2, 3]
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(tmp_path / "trained.ply"))
    g = read_ply(tmp_path / "trained.ply")
    assert g.positions[:, 0].tolist() == [1, 2, 3]


def test_not_a_splat_ply_names_what_is_missing(tmp_path: Path) -> None:
    from plyfile import PlyData, PlyElement

    arr = np.zeros(2, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1")])
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(tmp_path / "points.ply"))
    with pytest.raises(
        SplatFormatError, match=r"points.ply: not a 3D Gaussian splatting PLY; missing properties f_dc_0"
    ):
        read_ply(tmp_path / "points.ply")
    (tmp_path / "junk.ply").write_bytes(b"not a ply")
    with pytest.raises(SplatFormatError, match=r"junk.ply: not a readable PLY"):
        read_ply(tmp_path / "junk.ply")


def test_truncated_splat_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "bad.splat").write_bytes(b"\0" * 33)
    with pytest.raises(SplatFormatError, match="33 bytes is not a whole number of 32-byte gaussians"):
        read_splat(tmp_path / "bad.splat")


def test_preview_from_points_sizes_by_neighbour_spacing() -> None:
    # A dense grid (spacing 0.1) and a sparse one (spacing 1.0): gaussians should follow the spacing.
    dense = np.stack(np.meshgrid(*[np.arange(5) * 0.1] * 3), -1).reshape(-1, 3)
    sparse = np.stack(np.meshgrid(*[np.arange(5) * 1.0 + 100] * 3), -1).reshape(-1, 3)
    xyz = np.concatenate([dense, sparse])
    rgb = np.tile(np.array([[255, 0, 10]], np.uint8), (len(xyz), 1))
    rec = preview_from_points(xyz, rgb)
    assert rec.dtype == SPLAT_DTYPE and len(rec) == len(xyz)
    near_dense = rec["position"][:, 0] < 50
    assert np.median(rec["scale"][near_dense, 0]) < 0.2
    assert np.median(rec["scale"][~near_dense, 0]) > 0.4
    assert (rec["rgba"][:, :3] == [255, 0, 10]).all()
    assert (rec["rgba"][:, 3] == round(0.85 * 255)).all()
    assert (rec["rotation"] == [255, 128, 128, 128]).all()
