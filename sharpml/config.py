"""The core's settings as typed values: intake limits, the data directory, the job deadline.

Every variable is declared once in :mod:`sharpml.settings` (name, type, default, bounds, doc); this
module turns them into the objects the CLI, the API and the operator share, so a limit means the
same thing everywhere it is enforced.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sharpml.settings import ConfigError, value

__all__ = [
    "FULL_FRAME_DIAGONAL_MM",
    "MB",
    "ConfigError",
    "IntakeLimits",
    "default_data_dir",
    "job_timeout_seconds",
]

MB = 1024 * 1024
#: Diagonal of a 36 x 24 mm frame: "35 mm equivalent" focal lengths are defined against it (CIPA DC-008).
FULL_FRAME_DIAGONAL_MM = 43.266615305567875


def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


@dataclass(frozen=True)
class IntakeLimits:
    """What an upload set must satisfy (the seed's "Input Validation"); defaults from the registry."""

    max_file_bytes: int = value({}, "SHARPML_MAX_FILE_MB") * MB
    max_set_bytes: int = value({}, "SHARPML_MAX_UPLOAD_MB") * MB
    min_images: int = value({}, "SHARPML_MIN_IMAGES")
    max_images: int = value({}, "SHARPML_MAX_IMAGES")
    max_dimension: int = value({}, "SHARPML_MAX_IMAGE_DIMENSION")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> IntakeLimits:
        env = _env(env)
        limits = cls(
            max_file_bytes=value(env, "SHARPML_MAX_FILE_MB") * MB,
            max_set_bytes=value(env, "SHARPML_MAX_UPLOAD_MB") * MB,
            min_images=value(env, "SHARPML_MIN_IMAGES"),
            max_images=value(env, "SHARPML_MAX_IMAGES"),
            max_dimension=value(env, "SHARPML_MAX_IMAGE_DIMENSION"),
        )
        if limits.min_images > limits.max_images:
            raise ConfigError(
                f"SHARPML_MIN_IMAGES={limits.min_images} exceeds SHARPML_MAX_IMAGES={limits.max_images}"
            )
        return limits


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """``SHARPML_DATA_DIR``, else ``$XDG_DATA_HOME/sharpml`` (``~/.local/share/sharpml``)."""
    env = _env(env)
    configured = value(env, "SHARPML_DATA_DIR")
    if configured is not None:
        return configured
    xdg = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "sharpml"


def job_timeout_seconds(env: Mapping[str, str] | None = None) -> int:
    """The per-job processing deadline; the seed gives it in milliseconds (30 minutes)."""
    return value(_env(env), "SHARPML_JOB_TIMEOUT_MS") // 1000
