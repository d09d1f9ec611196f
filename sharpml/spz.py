"""Niantic's SPZ format (version 2): gaussians about 10x smaller than a 3DGS PLY, for delivery.

No maintained Python package writes SPZ, so this encoder follows the published format
(github.com/nianticlabs/spz, ``README.md`` and ``src/cc/load-spz.cc``), checked in
``tests/core/test_spz.py`` by decoding with that library compiled to WebAssembly
(``@spz-loader/core`` from npm) and in the browser test by Spark's own decoder. The file is a gzip
stream of a 16-byte little-endian header — magic ``0x5053474e`` ("NGSP"), version, point count, SH
degree, fractional bits, flags, a zero byte — then each attribute for every gaussian in turn:

- positions: 24-bit signed fixed point (x, y, z), ``fractional_bits`` after the point;
- alphas: ``sigmoid(opacity) * 255``;
- colours: the SH DC term ``f_dc * 0.15 * 255 + 127.5`` (wider than RGB, as the format wants);
- scales: the log scale as ``(log_scale + 10) * 16``;
- rotations: the normalised quaternion's x, y, z with w made non-negative, ``* 127.5 + 127.5``
  (version 2; version 3's smallest-three packing is not read by every decoder, e.g. spz-js);
- SH bands 1-3: per gaussian, coefficient-major with the colour channel inner, ``x * 128 + 128``
  rounded to 5 bits (band 1) or 4 bits (bands 2-3), as the reference packer does.

Coordinates are written as the PLY holds them (the reference library's default, ``from:
UNSPECIFIED``), so the ``.spz``, ``.ply`` and ``.splat`` of a job open the same way up in a viewer.
The fractional bits are the reference's 12 unless the scene is larger than 24-bit fixed point can
hold at that precision (about ±2 km); then fewer, so no coordinate wraps round.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sharpml.contract.records import SPZ_HEADER as _HEADER
from sharpml.contract.records import SPZ_MAGIC as MAGIC
from sharpml.contract.records import SPZ_SH_DIM as SH_DIM
from sharpml.contract.records import SPZ_VERSION as VERSION
from sharpml.splat import SH_C0, Gaussians, SplatFormatError, read_ply, read_splat

#: SPZ's DC colour scale (the reference's ``colorScale``): narrower than SH_C0 so colours that higher
#: bands bring back into range still fit a byte.
COLOR_SCALE = 0.15
FRACTIONAL_BITS = 12
_SH1_BITS, _SH_REST_BITS = 5, 4


@dataclass
class SpzCloud:
    """Gaussians plus their higher SH bands, as SPZ stores them (``sh``: (N, dim, 3), colour inner)."""

    gaussians: Gaussians
    sh: np.ndarray  # (N, SH_DIM[degree], 3)

    @property
    def sh_degree(self) -> int:
        return {v: k for k, v in SH_DIM.items()}[self.sh.shape[1]]


def _round(x: np.ndarray) -> np.ndarray:
    """C's ``std::round`` (half away from zero), which the reference packer uses; not NumPy's rint."""
    x = np.asarray(x, np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _u8(x: np.ndarray) -> np.ndarray:
    """The reference's ``toUint8``: round, then clamp to [0, 255]."""
    return np.clip(_round(x), 0, 255).astype(np.uint8)


def _fractional_bits(positions: np.ndarray) -> int:
    """12, or fewer when a coordinate would not fit 24 signed bits at that precision."""
    extent = float(np.abs(positions).max()) if len(positions) else 0.0
    bits = FRACTIONAL_BITS
    while bits > 0 and round(extent * (1 << bits)) > (1 << 23) - 1:
        bits -= 1
    if round(extent * (1 << bits)) > (1 << 23) - 1:
        raise SplatFormatError(f"positions reach {extent:.3g}: beyond SPZ's 24-bit coordinate range")
    return bits


def _quantize_sh(sh: np.ndarray) -> np.ndarray:
    """Band 1 to 5 bits, the rest to 4, centred on 128 (the reference's legacy quantisation)."""
    out = np.empty(sh.shape, np.uint8)
    for lo, hi, bits in ((0, 3, _SH1_BITS), (3, sh.shape[1], _SH_REST_BITS)):
        bucket = 1 << (8 - bits)
        q = (_round(sh[:, lo:hi] * 128.0) + 128.0).astype(np.int64)
        out[:, lo:hi] = np.clip((q + bucket // 2) // bucket * bucket, 0, 255)
    return out


def encode(cloud: SpzCloud) -> bytes:
    """The SPZ bytes (gzip-compressed) of ``cloud``; raises :class:`SplatFormatError` on bad input."""
    g = cloud.gaussians
    n = len(g)
    arrays = [g.positions, g.log_scales, g.f_dc, g.opacity_logits, g.rotations, cloud.sh]
    if not all(np.isfinite(a).all() for a in arrays):
        raise SplatFormatError("gaussians with non-finite values cannot be encoded as SPZ")
    bits = _fractional_bits(g.positions)
    fixed = _round(g.positions.astype(np.float64) * (1 << bits)).astype(np.int64) & 0xFFFFFF
    positions = np.stack([fixed & 0xFF, (fixed >> 8) & 0xFF, (fixed >> 16) & 0xFF], axis=-1).astype(np.uint8)
    alphas = _u8(1.0 / (1.0 + np.exp(-g.opacity_logits.astype(np.float64))) * 255.0)
    colors = _u8(g.f_dc.astype(np.float64) * (COLOR_SCALE * 255.0) + 0.5 * 255.0)
    scales = _u8((g.log_scales.astype(np.float64) + 10.0) * 16.0)
    # PLY order is w, x, y, z; SPZ keeps x, y, z of the normalised quaternion with w >= 0.
    q = g.rotations.astype(np.float64)
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    q = np.divide(q, norm, out=np.tile([1.0, 0.0, 0.0, 0.0], (n, 1)), where=norm > 0)
    q = np.where(q[:, :1] < 0, -q, q)
    rotations = _u8(q[:, 1:] * 127.5 + 127.5)
    header = _HEADER.pack(MAGIC, VERSION, n, cloud.sh_degree, bits, 0, 0)
    body = b"".join(
        a.tobytes() for a in (positions, alphas, colors, scales, rotations, _quantize_sh(cloud.sh))
    )
    return gzip.compress(header + body, compresslevel=9, mtime=0)


def _from_ply(path: Path) -> SpzCloud:
    """A 3DGS PLY with whatever SH bands it has (``f_rest_*`` is channel-major: R's, G's, then B's)."""
    from plyfile import PlyData

    g = read_ply(path)
    v = PlyData.read(str(path))["vertex"].data
    rest = sorted((n for n in v.dtype.names if n.startswith("f_rest_")), key=lambda n: int(n[7:]))
    dim = len(rest) // 3
    if dim not in SH_DIM.values() or len(rest) % 3:
        raise SplatFormatError(f"{Path(path).name}: {len(rest)} f_rest_* properties are not SH degree 1-3")
    sh = np.zeros((len(g), dim, 3), np.float32)
    if dim:
        flat = np.stack([np.asarray(v[n], np.float32) for n in rest], axis=1)
        sh = flat.reshape(len(g), 3, dim).transpose(0, 2, 1).copy()
    return SpzCloud(g, sh)


def _from_splat(path: Path) -> SpzCloud:
    """A ``.splat`` back to gaussians (degree 0; colour and opacity as its bytes hold them)."""
    r = read_splat(path)
    rgba = r["rgba"].astype(np.float64) / 255.0
    alpha = np.clip(rgba[:, 3], 0.5 / 255, 1 - 0.5 / 255)
    g = Gaussians(
        positions=r["position"].astype(np.float32),
        log_scales=np.log(np.maximum(r["scale"].astype(np.float64), 1e-30)).astype(np.float32),
        f_dc=((rgba[:, :3] - 0.5) / SH_C0).astype(np.float32),
        opacity_logits=np.log(alpha / (1 - alpha)).astype(np.float32),
        rotations=(r["rotation"].astype(np.float32) - 128.0) / 128.0,
    )
    return SpzCloud(g, np.zeros((len(g), 0, 3), np.float32))


def read_cloud(source: Path) -> SpzCloud:
    """Gaussians from a 3DGS ``.ply`` or a ``.splat``, by extension."""
    suffix = Path(source).suffix.lower()
    if suffix == ".ply":
        return _from_ply(source)
    if suffix == ".splat":
        return _from_splat(source)
    raise SplatFormatError(f"{Path(source).name}: SPZ is written from a .ply or a .splat, not {suffix!r}")


def save(dest: Path, cloud: SpzCloud | Gaussians) -> int:
    """Write ``cloud`` (gaussians alone: SH degree 0) as SPZ at ``dest`` atomically; returns its count."""
    if isinstance(cloud, Gaussians):
        cloud = SpzCloud(cloud, np.zeros((len(cloud), 0, 3), np.float32))
    data = encode(cloud)
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, dest)
    return len(cloud.gaussians)


def write_spz(source: Path, dest: Path) -> int:
    """Encode ``source`` (.ply or .splat) as SPZ at ``dest`` atomically; returns the gaussian count."""
    return save(dest, read_cloud(source))
