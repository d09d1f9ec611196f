"""Settings read from ``SHARPML_*`` environment variables, with the seed document's defaults.

One home for every tunable the CLI, the API, the operator and the SfM pod share, so a limit means
the same thing everywhere it is enforced.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

MB = 1024 * 1024
#: Diagonal of a 36 x 24 mm frame: "35 mm equivalent" focal lengths are defined against it (CIPA DC-008).
FULL_FRAME_DIAGONAL_MM = 43.266615305567875


class ConfigError(ValueError):
    """A ``SHARPML_*`` variable holds a value that cannot be used."""


def _number(env: Mapping[str, str], name: str, default, minimum, kind, what: str):  # type: ignore[no-untyped-def]
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: must be {what}") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r}: must be at least {minimum}")
    return value


def env_int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    """A whole-number ``SHARPML_*`` setting: the one parser the core, API and operator share."""
    return _number(env, name, default, minimum, int, "a whole number")


def env_float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    """A decimal ``SHARPML_*`` setting (seconds and the like)."""
    return _number(env, name, default, minimum, float, "a number")


@dataclass(frozen=True)
class IntakeLimits:
    """What an upload set must satisfy (the seed's "Input Validation")."""

    max_file_bytes: int = 20 * MB
    max_set_bytes: int = 500 * MB
    min_images: int = 5
    max_images: int = 100
    max_dimension: int = 8000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> IntakeLimits:
        env = os.environ if env is None else env
        limits = cls(
            max_file_bytes=env_int(env, "SHARPML_MAX_FILE_MB", 20, 1) * MB,
            max_set_bytes=env_int(env, "SHARPML_MAX_UPLOAD_MB", 500, 1) * MB,
            min_images=env_int(env, "SHARPML_MIN_IMAGES", 5, 1),
            max_images=env_int(env, "SHARPML_MAX_IMAGES", 100, 1),
            max_dimension=env_int(env, "SHARPML_MAX_IMAGE_DIMENSION", 8000, 16),
        )
        if limits.min_images > limits.max_images:
            raise ConfigError(
                f"SHARPML_MIN_IMAGES={limits.min_images} exceeds SHARPML_MAX_IMAGES={limits.max_images}"
            )
        return limits


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """``SHARPML_DATA_DIR``, else ``$XDG_DATA_HOME/sharpml`` (``~/.local/share/sharpml``)."""
    env = os.environ if env is None else env
    if env.get("SHARPML_DATA_DIR"):
        return Path(env["SHARPML_DATA_DIR"]).expanduser()
    xdg = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "sharpml"


def job_timeout_seconds(env: Mapping[str, str] | None = None) -> int:
    """The per-job processing deadline; the seed gives it in milliseconds (30 minutes)."""
    env = os.environ if env is None else env
    return env_int(env, "SHARPML_JOB_TIMEOUT_MS", 1_800_000, 1000) // 1000
