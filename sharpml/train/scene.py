"""The SfM stage's undistorted scene (``scene/images``, ``scene/sparse/0``) as training views.

Read with pycolmap; no torch here. Cameras must be PINHOLE (what ``sfm._undistort`` writes). Photos
are downscaled to ``max_image_size`` on their longest side with the intrinsics scaled to match;
every ``test_every``-th photo in name order (the first included) is held out for evaluation, as
gsplat's and the Mip-NeRF 360 benchmarks do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap
from PIL import Image


class SceneError(ValueError):
    """The scene cannot be trained on; the message says why."""


@dataclass(frozen=True)
class View:
    name: str
    image: np.ndarray  # (H, W, 3) uint8
    K: np.ndarray  # (3, 3) float64, for this image size
    viewmat: np.ndarray  # (4, 4) float64, world -> camera (COLMAP: x right, y down, z forward)
    held_out: bool

    @property
    def width(self) -> int:
        return self.image.shape[1]

    @property
    def height(self) -> int:
        return self.image.shape[0]

    @property
    def center(self) -> np.ndarray:
        R, t = self.viewmat[:3, :3], self.viewmat[:3, 3]
        return -R.T @ t


@dataclass(frozen=True)
class Scene:
    views: list[View]
    points: np.ndarray  # (P, 3) float64
    colors: np.ndarray  # (P, 3) uint8

    @property
    def train(self) -> list[View]:
        return [v for v in self.views if not v.held_out]

    @property
    def test(self) -> list[View]:
        return [v for v in self.views if v.held_out]

    @property
    def extent(self) -> float:
        """The cameras' spread (gsplat's ``scene_scale``): 1.1 x the largest distance of a camera
        centre from their mean; scales the position learning rate."""
        centers = np.array([v.center for v in self.views])
        return float(1.1 * np.linalg.norm(centers - centers.mean(axis=0), axis=1).max()) or 1.0


def load_scene(scene_dir: Path, *, max_image_size: int = 1600, test_every: int = 8) -> Scene:
    """Read an undistorted COLMAP scene; raises :class:`SceneError` when it cannot be trained on."""
    scene_dir = Path(scene_dir)
    sparse = scene_dir / "sparse" / "0"
    if not (sparse / "cameras.bin").is_file() and not (sparse / "cameras.txt").is_file():
        raise SceneError(f"{scene_dir}: no COLMAP model in sparse/0")
    try:
        rec = pycolmap.Reconstruction(sparse)
    except Exception as exc:  # pycolmap raises plain RuntimeError/ValueError
        raise SceneError(f"{scene_dir}: unreadable COLMAP model ({exc})") from exc
    images = sorted((img for img in rec.images.values() if img.has_pose), key=lambda img: img.name)
    if len(images) < 2:
        raise SceneError(f"{scene_dir}: {len(images)} posed photo(s); training needs at least 2")
    if rec.num_points3D() == 0:
        raise SceneError(f"{scene_dir}: the model has no 3D points to start from")
    views = []
    for i, img in enumerate(images):
        cam = rec.cameras[img.camera_id]
        if cam.model.name != "PINHOLE":
            raise SceneError(
                f"{img.name}: camera model {cam.model.name}; the trainer needs undistorted PINHOLE"
            )
        path = scene_dir / "images" / img.name
        try:
            with Image.open(path) as im:
                pixels = im.convert("RGB")
        except OSError as exc:
            raise SceneError(f"{img.name}: cannot read the photo ({exc})") from exc
        if pixels.size != (cam.width, cam.height):
            raise SceneError(f"{img.name}: {pixels.size} pixels but its camera says {cam.width}x{cam.height}")
        fx, fy, cx, cy = cam.params
        scale = min(1.0, max_image_size / max(cam.width, cam.height))
        w, h = max(1, round(cam.width * scale)), max(1, round(cam.height * scale))
        if (w, h) != pixels.size:
            pixels = pixels.resize((w, h), Image.Resampling.LANCZOS)
        sx, sy = w / cam.width, h / cam.height
        K = np.array([[fx * sx, 0, cx * sx], [0, fy * sy, cy * sy], [0, 0, 1]], dtype=np.float64)
        viewmat = np.eye(4)
        viewmat[:3, :] = img.cam_from_world().matrix()
        held_out = test_every > 0 and i % test_every == 0
        views.append(View(img.name, np.asarray(pixels, dtype=np.uint8), K, viewmat, held_out))
    if not any(not v.held_out for v in views):
        raise SceneError(f"{scene_dir}: no photo left for training after holding out every {test_every}th")
    pts = list(rec.points3D.values())
    xyz = np.array([p.xyz for p in pts], dtype=np.float64).reshape(-1, 3)
    rgb = np.array([p.color for p in pts], dtype=np.uint8).reshape(-1, 3)
    return Scene(views, xyz, rgb)
