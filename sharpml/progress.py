"""Progress reporting hooks shared by the pipeline stages.

A stage reports ``(stage, fraction, message)`` with ``fraction`` in [0, 1] for that stage; the CLI
turns these into progress bars, the SfM pod into ``progress.json`` that the operator surfaces in
the SharpJob status (read back by :func:`sharpml.contract.read_progress`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Protocol


class ProgressHook(Protocol):
    def __call__(self, stage: str, fraction: float, message: str = "") -> None: ...


def no_progress(stage: str, fraction: float, message: str = "") -> None:
    """The default hook: report nothing."""


class ProgressFile:
    """Writes the latest progress to a JSON file atomically, at most every ``interval`` seconds.

    Stage changes and completion are always written, so a reader never misses a transition.
    """

    def __init__(self, path: Path, interval: float = 1.0, also: ProgressHook = no_progress) -> None:
        self.path = Path(path)
        self.interval = interval
        self.also = also
        self._last_write = 0.0
        self._last_stage = ""

    def __call__(self, stage: str, fraction: float, message: str = "") -> None:
        self.also(stage, fraction, message)
        now = time.monotonic()
        if stage == self._last_stage and fraction < 1.0 and now - self._last_write < self.interval:
            return
        self._last_stage, self._last_write = stage, now
        record = {"stage": stage, "fraction": round(fraction, 4), "message": message, "time": time.time()}
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.path)
