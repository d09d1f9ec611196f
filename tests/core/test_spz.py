"""SPZ encoder: decoded by Niantic's reference library (WebAssembly, from npm) within the format's
quantisation, from a PLY (with SH bands) and from a .splat; about 10x smaller than a PLY."""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from plyfile import PlyData, PlyElement
from scipy.spatial import cKDTree

from sharpml.contract.records import SpzCheck, count_spz, spz_max_bytes
from sharpml.splat import SH_C0, Gaussians, SplatFormatError, ply_to_splat, write_ply
from sharpml.spz import MAGIC, SH_DIM, SpzCloud, encode, read_cloud, write_spz
from tests.npm import node, package

DECODER = Path(__file__).with_name("spz_decode.mjs")


def decode(path: Path, tmp_path: Path) -> dict:
    """The reference decoder's reading of ``path`` (positions, exp scales, sigmoid alphas, RGB, xyzw)."""
    out = tmp_path / f"{path.stem}.decoded.json"
    entry = package("@spz-loader/core/dist/index.js")
    proc = subprocess.run(
        [node(), str(DECODER), str(entry), str(path), str(out)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    n = data["numPoints"]
    for key, width in (("positions", 3), ("scales", 3), ("rotations", 4), ("colors", 3)):
        data[key] = np.asarray(data[key], np.float64).reshape(n, width)
    data["alphas"] = np.asarray(data["alphas"], np.float64)
    data["sh"] = np.asarray(data["sh"], np.float64)
    return data


def scene(n: int, seed: int = 0) -> Gaussians:
    """A trained-looking scene: gaussians on a ground plane and an object's surface, small log-normal
    scales, opacities mostly high, colours varying smoothly with position."""
    rng = np.random.default_rng(seed)
    ground = n // 2
    pos = np.empty((n, 3), np.float64)
    pos[:ground] = np.c_[
        rng.uniform(-4, 4, ground), rng.normal(1.0, 0.01, ground), rng.uniform(-4, 4, ground)
    ]
    d = rng.normal(size=(n - ground, 3))
    pos[ground:] = d / np.linalg.norm(d, axis=1, keepdims=True) * 0.8 + rng.normal(0, 0.01, (n - ground, 3))
    colour = 0.5 + 0.35 * np.sin(pos * [1.3, 2.1, 0.7])
    return Gaussians(
        positions=pos.astype(np.float32),
        log_scales=rng.normal(-4.5, 0.6, (n, 3)).astype(np.float32),
        f_dc=((colour - 0.5) / SH_C0 + rng.normal(0, 0.05, (n, 3))).astype(np.float32),
        opacity_logits=rng.normal(2.0, 1.5, n).astype(np.float32),
        rotations=rng.normal(0, 1, (n, 4)).astype(np.float32),
    )


def write_ply_sh(path: Path, g: Gaussians, sh: np.ndarray) -> None:
    """A 3DGS PLY with SH bands (``f_rest_*`` channel-major, as the Inria trainer writes them)."""
    dim = sh.shape[1]
    rest = [f"f_rest_{i}" for i in range(3 * dim)]
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", *rest, "opacity"]
    names += ["scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    arr = np.zeros(len(g), dtype=[(n, "<f4") for n in names])
    for i, axis in enumerate("xyz"):
        arr[axis] = g.positions[:, i]
    for i in range(3):
        arr[f"f_dc_{i}"] = g.f_dc[:, i]
        arr[f"scale_{i}"] = g.log_scales[:, i]
    flat = sh.transpose(0, 2, 1).reshape(len(g), 3 * dim)
    for i, name in enumerate(rest):
        arr[name] = flat[:, i]
    arr["opacity"] = g.opacity_logits
    for i in range(4):
        arr[f"rot_{i}"] = g.rotations[:, i]
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(path))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x.astype(np.float64)))


def assert_matches(g: Gaussians, d: dict) -> None:
    """The decoded cloud agrees with ``g`` within SPZ's quantisation steps."""
    assert d["numPoints"] == len(g)
    # positions: 24-bit fixed point with 12 fractional bits -> half a step, 1/8192
    np.testing.assert_allclose(d["positions"], g.positions, atol=0.5 / 4096 + 1e-6)
    # log scales in steps of 1/16 -> exp(half a step) relative
    np.testing.assert_allclose(np.log(d["scales"]), g.log_scales, atol=0.5 / 16 + 1e-5)
    # alpha: one byte of sigmoid
    np.testing.assert_allclose(d["alphas"], sigmoid(g.opacity_logits), atol=0.5 / 255 + 1e-5)
    # colour: DC * 0.15 in bytes; the decoder returns DC * SH_C0 + 0.5 (RGB)
    rgb = 0.5 + SH_C0 * g.f_dc.astype(np.float64)
    step = SH_C0 / (0.15 * 255)
    in_range = np.abs(g.f_dc * 0.15 * 255) < 127  # the byte clamps outside [-3.3, 3.3]
    assert np.all(np.abs(d["colors"] - rgb)[in_range] <= 0.5 * step * 1.001 + 1e-6)
    # rotation: x, y, z bytes of the normalised quaternion with w >= 0; the same rotation as q or -q
    q = g.rotations.astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    xyzw = np.c_[q[:, 1:], q[:, :1]]
    xyzw *= np.sign(xyzw[:, 3:4] + (xyzw[:, 3:4] == 0))
    decoded = d["rotations"] / np.linalg.norm(d["rotations"], axis=1, keepdims=True)
    assert np.all(np.abs(decoded[:, :3] - xyzw[:, :3]) <= 1.0 / 127.5 + 1e-5)
    # w is rebuilt as sqrt(1 - |xyz|^2), so its error grows as w nears 0 (rotations near 180 degrees;
    # version 3's smallest-three packing exists for this): the same rotation, within a few degrees
    dot = np.abs((decoded * xyzw).sum(axis=1))
    assert dot.min() > 0.99 and np.median(dot) > 0.9999


def test_splat_of_a_ply_decodes_within_quantisation(tmp_path: Path) -> None:
    g = scene(3000)
    write_ply(tmp_path / "scene.ply", g)
    assert write_spz(tmp_path / "scene.ply", tmp_path / "scene.spz") == 3000
    raw = gzip.decompress((tmp_path / "scene.spz").read_bytes())
    assert struct.unpack_from("<IIIBBBB", raw) == (MAGIC, 2, 3000, 0, 12, 0, 0)
    d = decode(tmp_path / "scene.spz", tmp_path)
    assert d["shDegree"] == 0 and not d["antialiased"]
    assert_matches(g, d)


def test_sh_bands_from_a_ply_keep_their_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    g = scene(500, seed=1)
    sh = rng.uniform(-0.9, 0.9, (500, 15, 3)).astype(np.float32)
    write_ply_sh(tmp_path / "sh.ply", g, sh)
    write_spz(tmp_path / "sh.ply", tmp_path / "sh.spz")
    d = decode(tmp_path / "sh.spz", tmp_path)
    assert d["shDegree"] == 3
    assert_matches(g, d)
    decoded = d["sh"].reshape(500, 15, 3)  # coefficient-major, colour inner
    # band 1 in 5 bits (buckets of 8/128), bands 2-3 in 4 bits (16/128), plus the rounding to 1/128
    np.testing.assert_allclose(decoded[:, :3], sh[:, :3], atol=4.5 / 128 + 1e-6)
    np.testing.assert_allclose(decoded[:, 3:], sh[:, 3:], atol=8.5 / 128 + 1e-6)


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_the_operators_check_counts_what_the_encoder_wrote(tmp_path: Path, degree: int) -> None:
    """SpzCheck (numpy-free, in the operator) agrees with the encoder, fed whole or a byte at a time."""
    n = 300
    data = encode(SpzCloud(scene(n, seed=3), np.zeros((n, SH_DIM[degree], 3), np.float32)))
    (tmp_path / "s.spz").write_bytes(data)
    assert count_spz(tmp_path / "s.spz", len(data)) == n
    check = SpzCheck("s.spz")
    for i in range(len(data)):
        check.feed(data[i : i + 1])
    assert check.count() == n
    with pytest.raises(SplatFormatError, match="at most 10 bytes"):
        count_spz(tmp_path / "s.spz", 10)
    assert len(data) <= spz_max_bytes(n)


def test_from_a_splat(tmp_path: Path) -> None:
    g = scene(800, seed=2)
    write_ply(tmp_path / "s.ply", g)
    ply_to_splat(tmp_path / "s.ply", tmp_path / "s.splat")
    assert write_spz(tmp_path / "s.splat", tmp_path / "s.spz") == 800
    cloud = read_cloud(tmp_path / "s.splat")
    d = decode(tmp_path / "s.spz", tmp_path)
    assert d["shDegree"] == 0
    assert_matches(cloud.gaussians, d)
    # and what the .splat held: alpha and colour within a byte of each format
    # (the .splat reorders gaussians by importance; its positions are the PLY's exactly)
    source = cKDTree(g.positions).query(cloud.gaussians.positions)[1]
    np.testing.assert_allclose(d["alphas"], sigmoid(g.opacity_logits)[source], atol=1 / 255 + 1e-5)
    rgb = 0.5 + SH_C0 * g.f_dc[source].astype(np.float64)
    spz_step = SH_C0 / (0.15 * 255)  # half a .splat byte, then half an SPZ colour step
    assert np.all(np.abs(d["colors"] - rgb)[(rgb > 0) & (rgb < 1)] <= 0.5 / 255 + 0.5 * spz_step + 1e-5)


def test_large_scenes_get_fewer_fractional_bits(tmp_path: Path) -> None:
    g = scene(100, seed=3)
    g.positions[0] = [3000.0, -2500.0, 10.0]  # beyond 12 fractional bits' 2048
    raw = gzip.decompress(encode(SpzCloud(g, np.zeros((100, 0, 3), np.float32))))
    bits = raw[13]
    assert bits == 11
    (tmp_path / "big.spz").write_bytes(gzip.compress(raw))
    d = decode(tmp_path / "big.spz", tmp_path)
    np.testing.assert_allclose(d["positions"], g.positions, atol=0.5 / 2**bits + 1e-4)


def test_bad_input_is_named(tmp_path: Path) -> None:
    g = scene(10)
    g.positions[3, 1] = np.nan
    with pytest.raises(SplatFormatError, match="non-finite"):
        encode(SpzCloud(g, np.zeros((10, 0, 3), np.float32)))
    (tmp_path / "x.obj").write_text("o")
    with pytest.raises(SplatFormatError, match=r"x\.obj: SPZ is written from a \.ply or a \.splat"):
        write_spz(tmp_path / "x.obj", tmp_path / "x.spz")


def test_about_ten_times_smaller_than_the_ply(tmp_path: Path) -> None:
    """A trained 3DGS PLY carries SH degree 3 (62 floats a gaussian): SPZ is about 10x smaller. The
    trainer here writes DC only (14 floats), for which the ratio is printed too."""
    n = 50_000
    rng = np.random.default_rng(4)
    g = scene(n, seed=4)
    # trained SH bands are small and shrink with the band
    sh = np.concatenate(
        [rng.normal(0, s, (n, k, 3)) for s, k in ((0.08, 3), (0.04, 5), (0.02, 7))], axis=1
    ).astype(np.float32)
    write_ply_sh(tmp_path / "full.ply", g, sh)
    write_spz(tmp_path / "full.ply", tmp_path / "full.spz")
    write_ply(tmp_path / "dc.ply", g)
    write_spz(tmp_path / "dc.ply", tmp_path / "dc.spz")
    full = (tmp_path / "full.ply").stat().st_size / (tmp_path / "full.spz").stat().st_size
    dc = (tmp_path / "dc.ply").stat().st_size / (tmp_path / "dc.spz").stat().st_size
    print(f"PLY/SPZ size ratio, {n} gaussians: SH degree 3 {full:.1f}x, DC only {dc:.1f}x")
    assert full >= 8.0
    assert dc >= 3.0
