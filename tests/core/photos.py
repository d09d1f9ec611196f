"""Generated photo files for intake tests: every format, orientation and kind of damage."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pillow_heif
from PIL import Image

GPS_LAT = (52.0, 22.0, 12.5)


def upright_pattern(width: int = 120, height: int = 80) -> Image.Image:
    """An asymmetric picture: which way is up is unambiguous (white top-left quadrant, red ramp)."""
    a = np.zeros((height, width, 3), np.uint8)
    a[: height // 2, : width // 2] = 255
    a[:, :, 0] = np.maximum(a[:, :, 0], np.linspace(0, 200, width, dtype=np.uint8)[None, :])
    return Image.fromarray(a)


def full_exif(orientation: int = 1) -> Image.Exif:
    """EXIF with everything a phone leaks: make/model, maker note, focal lengths, GPS, time."""
    exif = Image.Exif()
    exif[0x010F] = "LeakyPhone"
    exif[0x0110] = "Model X"
    exif[0x0112] = orientation
    exif[0x0131] = "SecretEditor 1.0"  # Software
    sub = exif.get_ifd(0x8769)
    sub[0x920A] = 5.7  # FocalLength
    sub[0xA405] = 28  # FocalLengthIn35mmFilm
    sub[0x927C] = b"MAKERNOTE-SERIAL-123456"  # MakerNote
    sub[0x9003] = "2026:01:02 03:04:05"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "N", GPS_LAT, "E", (4.0, 53.0, 41.2)
    return exif


XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:CreatorTool="XMP-SECRET"/>'
    b"</rdf:RDF></x:xmpmeta>"
)
IPTC_MARKER = b"IPTC-SECRET-CAPTION"
LEAKS = [b"LeakyPhone", b"MAKERNOTE-SERIAL", b"SecretEditor", b"XMP-SECRET", IPTC_MARKER, b"COMMENT-SECRET"]


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


def jpeg_bytes(
    img: Image.Image, *, exif: Image.Exif | None = None, leaky: bool = False, quality: int = 90
) -> bytes:
    """A JPEG; with ``leaky`` it also carries XMP, an IPTC block and a comment (spliced in)."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, exif=exif.tobytes() if exif else b"")
    data = buf.getvalue()
    if not leaky:
        return data
    extra = (
        _jpeg_segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + XMP)
        + _jpeg_segment(
            0xED, b"Photoshop 3.0\x008BIM\x04\x04\x00\x00\x00\x00\x00\x17\x1c\x02x\x00\x13" + IPTC_MARKER
        )
        + _jpeg_segment(0xFE, b"COMMENT-SECRET")
    )
    return data[:2] + extra + data[2:]


def png_bytes(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def heic_bytes(img: Image.Image, *, exif: Image.Exif | None = None) -> bytes:
    buf = io.BytesIO()
    pillow_heif.from_pillow(img).save(buf, quality=90, exif=exif.tobytes() if exif else None)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression-bomb shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) is patched to claim ``width`` x ``height``."""
    data = bytearray(jpeg_bytes(upright_pattern(16, 16)))
    i = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, i + 5, height, width)
    return bytes(data)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def photo_set(folder: Path, n: int = 5, size: tuple[int, int] = (120, 80)) -> list[Path]:
    """``n`` small, valid, distinct JPEGs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    paths = []
    for i in range(n):
        a = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        paths.append(write(folder / f"IMG_{i:04d}.jpg", jpeg_bytes(Image.fromarray(a))))
    return paths
