"""Deterministic synthetic multi-view scenes with known cameras.

No photo data can be downloaded where SharpML is developed, and "COLMAP ran" proves little. This
module ray-casts a textured scene (a ground slab and several boxes, every face carrying its own
non-repeating texture) from an orbit of pinhole cameras whose intrinsics and poses are known, so
tests and benchmarks can assert registration and pose accuracy, and the demo has photos to upload.

Conventions follow COLMAP: world-to-camera rotation ``R`` and translation ``t``
(``x_cam = R @ x_world + t``), camera axes x right, y down, z forward.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from sharpml.config import FULL_FRAME_DIAGONAL_MM

#: A phone's main camera: 26 mm equivalent focal length (about 80 degrees diagonal field of view).
PHONE_FOCAL_35MM = 26.0
#: Real focal length written into EXIF next to the 35 mm equivalent, as a phone does.
PHONE_FOCAL_MM = 4.25
#: Sensor width of the "mm" EXIF style's camera (a 1/2.5" compact of the 2000s).
CLASSIC_SENSOR_WIDTH_MM = 5.76
_TEXELS_PER_UNIT = 110
_SKY_TOP = np.array([150.0, 185.0, 230.0])
_SKY_BOTTOM = np.array([215.0, 228.0, 240.0])
_LIGHT = np.array([0.45, -0.3, 0.84]) / np.linalg.norm([0.45, -0.3, 0.84])


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: square pixels, principal point at the image centre unless offset (pixels,
    right and down: real lenses are often tens of pixels off)."""

    width: int
    height: int
    focal_px: float
    R: np.ndarray
    t: np.ndarray
    principal_offset: tuple[float, float] = (0.0, 0.0)

    @property
    def center(self) -> np.ndarray:
        """Camera centre in world coordinates."""
        return -self.R.T @ self.t

    @property
    def focal_35mm(self) -> float:
        """35 mm-equivalent focal length, as phones record it in EXIF."""
        return self.focal_px / math.hypot(self.width, self.height) * FULL_FRAME_DIAGONAL_MM

    def to_json(self) -> dict:
        return {
            "width": self.width,
            "height": self.height,
            "focal_px": self.focal_px,
            "R": self.R.tolist(),
            "t": self.t.tolist(),
            "center": self.center.tolist(),
            "principal_offset": list(self.principal_offset),
        }


@dataclass(frozen=True)
class Box:
    """An axis-aligned box; the ground is a wide, thin one."""

    lo: tuple[float, float, float]
    hi: tuple[float, float, float]


@dataclass
class Scene:
    """Boxes plus one texture per box face, generated from ``seed`` on first use."""

    boxes: list[Box]
    seed: int
    #: Texture detail: texels per scene unit, and the largest texture side. The default suits photos
    #: of up to ~1 000 px; a denser texture gives 12 MP photos the keypoint count of real ones.
    texels_per_unit: float = _TEXELS_PER_UNIT
    max_texels: int = 1536
    _textures: dict[tuple[int, int], np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def size(self) -> float:
        """Diagonal of the scene's bounding box: the yardstick for pose errors."""
        lo = np.min([b.lo for b in self.boxes], axis=0)
        hi = np.max([b.hi for b in self.boxes], axis=0)
        return float(np.linalg.norm(hi - lo))

    def texture(self, box_index: int, face: int) -> np.ndarray:
        """Float32 RGB texture (H, W, 3) of one face; face = 2 * axis + (1 if the high side)."""
        key = (box_index, face)
        if key not in self._textures:
            box = self.boxes[box_index]
            axis = face // 2
            u_axis, v_axis = [a for a in range(3) if a != axis]
            extent_u = box.hi[u_axis] - box.lo[u_axis]
            extent_v = box.hi[v_axis] - box.lo[v_axis]
            size = (
                int(np.clip(extent_u * self.texels_per_unit, 64, self.max_texels)),
                int(np.clip(extent_v * self.texels_per_unit, 64, self.max_texels)),
            )
            rng = np.random.default_rng([self.seed, box_index, face])
            self._textures[key] = _make_texture(rng, size)
        return self._textures[key]


def _make_texture(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Rich, non-repeating texture: coloured multi-octave noise under random shapes and strokes."""
    w, h = size
    base = np.zeros((h, w, 3), np.float32)
    for octave, weight in ((4, 0.5), (16, 0.3), (64, 0.2)):
        small = rng.random((max(2, h * octave // 512), max(2, w * octave // 512), 3)).astype(np.float32)
        img = Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
        base += weight * np.asarray(img, np.float32)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    n_shapes = int(w * h / 900)
    for _ in range(n_shapes):
        x, y = rng.random(2) * (w, h)
        r = float(rng.uniform(2, 22))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(0, 4)
        if kind == 0:
            draw.ellipse((x - r, y - r * rng.uniform(0.4, 1), x + r, y + r), fill=colour)
        elif kind == 1:
            draw.rectangle((x - r, y - r * rng.uniform(0.3, 1), x + r, y + r * 0.5), fill=colour)
        elif kind == 2:
            pts = [(x + r * math.cos(a), y + r * math.sin(a)) for a in rng.uniform(0, 2 * math.pi, 3)]
            draw.polygon(pts, fill=colour)
        else:
            x2, y2 = x + rng.uniform(-3, 3) * r, y + rng.uniform(-3, 3) * r
            draw.line((x, y, x2, y2), fill=colour, width=int(rng.integers(1, 4)))
    img = img.filter(ImageFilter.GaussianBlur(0.6))
    return np.asarray(img, np.float32)


def default_scene(seed: int = 7, detail: float = 1.0) -> Scene:
    """A 12 x 12 ground slab with six boxes of varied size, placed deterministically from ``seed``;
    ``detail`` multiplies the texture's texels per unit (and its largest side)."""
    rng = np.random.default_rng(seed)
    boxes = [Box((-6.0, -6.0, -0.2), (6.0, 6.0, 0.0))]
    anchors = [(-2.2, -1.8), (1.9, -2.1), (-1.5, 2.0), (2.3, 1.6), (0.2, 0.1), (-3.2, 0.2)]
    for ax, ay in anchors:
        sx, sy = rng.uniform(0.6, 1.6, 2)
        sz = rng.uniform(0.5, 2.4)
        cx, cy = ax + rng.uniform(-0.3, 0.3), ay + rng.uniform(-0.3, 0.3)
        boxes.append(Box((cx - sx / 2, cy - sy / 2, 0.0), (cx + sx / 2, cy + sy / 2, float(sz))))
    return Scene(boxes, seed, _TEXELS_PER_UNIT * detail, int(1536 * detail))


def street_scene(seed: int = 11, length: float = 60.0) -> Scene:
    """A street: a long ground slab between two rows of facades of varied depth and height, and a
    few low boxes (parked cars) along the kerbs, for forward-moving sequences."""
    rng = np.random.default_rng(seed)
    boxes = [Box((-8.0, -6.0, -0.2), (8.0, length + 20.0, 0.0))]
    for side in (-1.0, 1.0):
        y = -6.0
        while y < length + 20.0:
            depth = float(rng.uniform(4.0, 9.0))
            front = float(rng.uniform(4.0, 5.0))
            height = float(rng.uniform(3.0, 8.0))
            x0, x1 = sorted((side * front, side * (front + 2.5)))
            boxes.append(Box((x0, y, 0.0), (x1, y + depth, height)))
            y += depth + float(rng.uniform(0.0, 0.6))
        for _ in range(4):
            cy = float(rng.uniform(0.0, length))
            cx = side * float(rng.uniform(2.4, 3.0))
            boxes.append(Box((cx - 0.8, cy, 0.0), (cx + 0.8, cy + 3.8, float(rng.uniform(1.2, 1.6)))))
    return Scene(boxes=boxes, seed=seed)


def street_cameras(
    n: int, width: int = 640, height: int = 480, *, step: float = 1.5, focal_35mm: float = PHONE_FOCAL_35MM
) -> list[Camera]:
    """``n`` cameras walking forward down :func:`street_scene`'s road at eye height, looking ahead
    with a little sway, as a street walk is shot."""
    focal_px = focal_35mm / FULL_FRAME_DIAGONAL_MM * math.hypot(width, height)
    cams = []
    for i in range(n):
        sway = 0.4 * math.sin(i * 0.7)
        c = np.array([sway, i * step, 1.6 + 0.05 * math.sin(i * 1.3)])
        target = c + np.array([0.25 * math.sin(i * 0.45), 10.0, -0.3])
        R = look_at(c, target)
        cams.append(Camera(width, height, focal_px, R, -R @ c))
    return cams


def look_at(center: np.ndarray, target: np.ndarray, up: Sequence[float] = (0, 0, 1)) -> np.ndarray:
    """World-to-camera rotation for a camera at ``center`` looking at ``target`` (COLMAP axes)."""
    z = target - center
    z = z / np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, float))
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z])


def orbit_cameras(
    n: int,
    width: int = 1024,
    height: int = 768,
    *,
    focal_35mm: float = PHONE_FOCAL_35MM,
    radius: float = 7.0,
    elevation: float = 3.6,
    arc_degrees: float | None = None,
    target: Sequence[float] = (0.0, 0.0, 0.6),
) -> list[Camera]:
    """``n`` cameras on a circular arc around the scene, in walking order, as a person would shoot.

    The default arc grows with ``n`` (15 degrees a step) up to a full circle, so neighbouring photos
    always overlap well.
    """
    if arc_degrees is None:
        arc_degrees = min(360.0, 15.0 * n)
    step = arc_degrees / n if arc_degrees >= 360.0 else arc_degrees / max(n - 1, 1)
    focal_px = focal_35mm / FULL_FRAME_DIAGONAL_MM * math.hypot(width, height)
    tgt = np.asarray(target, float)
    cams = []
    for i in range(n):
        a = math.radians(-90.0 - arc_degrees / 2 + i * step if arc_degrees < 360 else i * step)
        # A little height variation, as a hand-held walk-around has.
        c = np.array([radius * math.cos(a), radius * math.sin(a), elevation + 0.25 * math.sin(3 * a)])
        R = look_at(c, tgt)
        cams.append(Camera(width, height, focal_px, R, -R @ c))
    return cams


def render(
    scene: Scene, camera: Camera, *, supersample: int = 2, noise_seed: int | None = None
) -> np.ndarray:
    """Ray-cast ``scene`` through ``camera``; returns an (H, W, 3) uint8 image."""
    s = supersample
    w, h = camera.width * s, camera.height * s
    u, v = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    f = camera.focal_px * s
    cx, cy = w / 2 + camera.principal_offset[0] * s, h / 2 + camera.principal_offset[1] * s
    d_cam = np.stack([(u + 0.5 - cx) / f, (v + 0.5 - cy) / f, np.ones_like(u)], -1).reshape(-1, 3)
    d = d_cam @ camera.R.astype(np.float32)  # rows: R.T @ d_cam
    origin = camera.center
    with np.errstate(divide="ignore"):
        inv = 1.0 / np.where(np.abs(d) < 1e-12, 1e-12, d)

    n = d.shape[0]
    best_t = np.full(n, np.inf, np.float32)
    best_box = np.full(n, -1, np.int32)
    best_face = np.zeros(n, np.int8)
    dx, dy, dz = (np.ascontiguousarray(d[:, k]) for k in range(3))
    ix, iy, iz = (np.ascontiguousarray(inv[:, k]) for k in range(3))
    for bi, box in enumerate(scene.boxes):
        corners = np.array(
            [
                [x, y, z]
                for x in (box.lo[0], box.hi[0])
                for y in (box.lo[1], box.hi[1])
                for z in (box.lo[2], box.hi[2])
            ]
        )
        if ((corners @ camera.R.T + camera.t)[:, 2] <= 0).all():
            continue  # wholly behind the camera (a street's passed facades): no ray can hit it
        # Slab test, one axis at a time (reductions over a length-3 axis are slow in numpy).
        near, far = [], []
        for k, ik in enumerate((ix, iy, iz)):
            t1 = (box.lo[k] - origin[k]) * ik
            t2 = (box.hi[k] - origin[k]) * ik
            near.append(np.minimum(t1, t2))
            far.append(np.maximum(t1, t2))
        t_near = np.maximum(np.maximum(near[0], near[1]), near[2])
        t_far = np.minimum(np.minimum(far[0], far[1]), far[2])
        hit = (t_far >= t_near) & (t_near > 0) & (t_near < best_t)
        if not hit.any():
            continue
        tn = t_near[hit]
        axis = np.where(near[0][hit] == tn, 0, np.where(near[1][hit] == tn, 1, 2))
        high_side = np.choose(axis, (dx[hit], dy[hit], dz[hit])) < 0  # entering through the high face
        best_t[hit] = tn
        best_box[hit] = bi
        best_face[hit] = (2 * axis + high_side).astype(np.int8)

    # Sky: a featureless vertical gradient.
    elev = np.clip(d[:, 2] / np.linalg.norm(d, axis=1) * 3 + 0.5, 0, 1)[:, None]
    colour = _SKY_BOTTOM * (1 - elev) + _SKY_TOP * elev
    points = origin + d * np.where(np.isfinite(best_t), best_t, 0)[:, None]
    for bi, box in enumerate(scene.boxes):
        for face in range(6):
            sel = np.nonzero((best_box == bi) & (best_face == face))[0]
            if sel.size == 0:
                continue
            axis = face // 2
            ua, va = [a for a in range(3) if a != axis]
            p = points[sel]
            uu = (p[:, ua] - box.lo[ua]) / (box.hi[ua] - box.lo[ua])
            vv = (p[:, va] - box.lo[va]) / (box.hi[va] - box.lo[va])
            normal = np.zeros(3)
            normal[axis] = 1.0 if face % 2 else -1.0
            shade = 0.55 + 0.45 * max(float(normal @ _LIGHT), 0.0)
            colour[sel] = _sample_bilinear(scene.texture(bi, face), uu, vv) * shade

    img = colour.reshape(h, w, 3)
    if s > 1:
        img = img.reshape(camera.height, s, camera.width, s, 3).mean(axis=(1, 3))
    if noise_seed is not None:
        img = img + np.random.default_rng(noise_seed).normal(0, 1.5, img.shape)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _sample_bilinear(tex: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    th, tw = tex.shape[:2]
    x = np.clip(u, 0, 1) * (tw - 1)
    y = np.clip(v, 0, 1) * (th - 1)
    x0 = np.floor(x).astype(np.int32)
    y0 = np.floor(y).astype(np.int32)
    x1 = np.minimum(x0 + 1, tw - 1)
    y1 = np.minimum(y0 + 1, th - 1)
    fx = (x - x0)[:, None]
    fy = (y - y0)[:, None]
    top = tex[y0, x0] * (1 - fx) + tex[y0, x1] * fx
    bottom = tex[y1, x0] * (1 - fx) + tex[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


@dataclass(frozen=True)
class Dataset:
    """Photos on disk plus the ground truth they were rendered from."""

    photos_dir: Path
    ground_truth: Path
    names: list[str]
    cameras: list[Camera]
    scene_size: float


def phone_exif(
    camera: Camera, index: int, *, style: str = "phone", gps: tuple[float, float, float] | None = None
) -> Image.Exif:
    """EXIF like a camera writes: make/model, focal lengths, capture time and GPS position.

    ``style`` "phone": the focal length in mm and its 35 mm equivalent, as phones write them;
    "mm": the focal length in mm and the focal-plane resolution (pixels per inch of the sensor) but
    no 35 mm equivalent, as most cameras before ~2010 did. ``gps`` is (lat, lon, alt); by default
    one fixed position, so the demo and the tests show intake stripping it.
    """
    exif = Image.Exif()
    exif[0x010F] = "SharpML"  # Make
    exif[0x0110] = "SynthCam 1" if style == "phone" else "SynthCam Classic"  # Model
    exif[0x0112] = 1  # Orientation
    sub = exif.get_ifd(0x8769)
    sub[0x9003] = f"2026:11:25 10:{index // 60:02d}:{index % 60:02d}"  # DateTimeOriginal
    if style == "phone":
        sub[0x920A] = PHONE_FOCAL_MM  # FocalLength
        sub[0xA405] = round(camera.focal_35mm)  # FocalLengthIn35mmFilm
    elif style == "mm":
        # A 5.76 mm wide sensor recording camera.width pixels: FocalPlaneXResolution in pixels per inch.
        sensor_mm = CLASSIC_SENSOR_WIDTH_MM
        sub[0x920A] = camera.focal_px * sensor_mm / camera.width  # FocalLength (mm)
        sub[0xA002] = camera.width  # PixelXDimension
        sub[0xA003] = camera.height  # PixelYDimension
        sub[0xA20E] = camera.width / sensor_mm * 25.4  # FocalPlaneXResolution
        sub[0xA20F] = camera.width / sensor_mm * 25.4  # FocalPlaneYResolution
        sub[0xA210] = 2  # FocalPlaneResolutionUnit: inch
    else:
        raise ValueError(f"style: {style!r} is not phone or mm")
    lat, lon, alt = gps or (52.0 + 22 / 60 + 12.5 / 3600, 4.0 + 53 / 60 + 41.2 / 3600, None)
    g = exif.get_ifd(0x8825)
    g[1] = "N" if lat >= 0 else "S"
    g[2] = _dms(abs(lat))
    g[3] = "E" if lon >= 0 else "W"
    g[4] = _dms(abs(lon))
    if alt is not None:
        g[5] = 0 if alt >= 0 else 1
        g[6] = abs(alt)
    return exif


def _dms(deg: float) -> tuple[float, float, float]:
    d = math.floor(deg)
    m = math.floor((deg - d) * 60)
    return (float(d), float(m), round((deg - d - m / 60) * 3600, 4))


def gps_of(center: np.ndarray, origin: tuple[float, float] = (48.8566, 2.3522)) -> tuple[float, float, float]:
    """A camera centre (scene units read as metres; x east, y north, z up) as (lat, lon, alt)."""
    lat = origin[0] + math.degrees(center[1] / 6_371_000.0)
    lon = origin[1] + math.degrees(center[0] / (6_371_000.0 * math.cos(math.radians(origin[0]))))
    return (lat, lon, float(center[2]))


def write_dataset(
    out_dir: Path,
    n: int = 12,
    width: int = 1024,
    height: int = 768,
    *,
    seed: int = 7,
    formats: Sequence[str] = ("jpg",),
    supersample: int = 2,
    progress: Callable[[int], object] | None = None,
    exif: str = "phone",
    scene: Scene | None = None,
    cameras: Sequence[Camera] | None = None,
    gps: bool = False,
) -> Dataset:
    """Render ``n`` photos into ``out_dir/photos`` and write ``out_dir/ground_truth.json``.

    ``formats`` cycles over the photos (e.g. ``("jpg", "png", "heic")``) so a set can mix what
    phones produce. JPEG and HEIC photos carry EXIF in ``exif``'s style ("phone", "mm" or "none":
    see :func:`phone_exif`); with ``gps`` each photo's GPS is its true camera centre. ``scene`` and
    ``cameras`` (default: :func:`default_scene` and an orbit) allow other kinds of set; cameras may
    differ in size and focal length.
    """
    out_dir = Path(out_dir)
    photos = out_dir / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    scene = scene or default_scene(seed)
    cameras = list(cameras) if cameras is not None else orbit_cameras(n, width, height)
    names = []
    for i, (cam, fmt) in enumerate(zip(cameras, _cycle(formats, len(cameras)), strict=True)):
        img = Image.fromarray(render(scene, cam, supersample=supersample, noise_seed=seed * 1000 + i))
        name = f"IMG_{1001 + i:04d}.{fmt}"
        tags = None
        if exif != "none":
            tags = phone_exif(cam, i, style=exif, gps=gps_of(cam.center) if gps else None)
        save_photo(img, photos / name, exif=tags)
        names.append(name)
        if progress is not None:
            progress(1)
    gt = {
        "seed": seed,
        "scene_size": scene.size,
        "cameras": {name: cam.to_json() for name, cam in zip(names, cameras, strict=True)},
    }
    gt_path = out_dir / "ground_truth.json"
    gt_path.write_text(json.dumps(gt, indent=1))
    return Dataset(photos, gt_path, names, cameras, scene.size)


def save_photo(img: Image.Image, path: Path, *, exif: Image.Exif | None = None, quality: int = 92) -> None:
    """Save as a phone would: the format follows the extension; EXIF where the format carries it."""
    ext = path.suffix.lower()
    exif_bytes = exif.tobytes() if exif is not None else b""
    if ext in (".jpg", ".jpeg"):
        img.save(path, "JPEG", quality=quality, exif=exif_bytes)
    elif ext == ".png":
        img.save(path, "PNG")
    elif ext in (".heic", ".heif"):
        import pillow_heif

        pillow_heif.from_pillow(img).save(path, quality=quality, exif=exif_bytes or None)
    else:
        raise ValueError(f"{path.name}: unsupported photo format {ext!r}")


def load_ground_truth(path: Path) -> dict[str, Camera]:
    """Cameras by photo name, as written by :func:`write_dataset`."""
    data = json.loads(Path(path).read_text())
    return {
        name: Camera(
            c["width"],
            c["height"],
            c["focal_px"],
            np.array(c["R"]),
            np.array(c["t"]),
            tuple(c.get("principal_offset", (0.0, 0.0))),
        )
        for name, c in data["cameras"].items()
    }


def _cycle(items: Sequence[str], n: int) -> Iterator[str]:
    for i in range(n):
        yield items[i % len(items)]
