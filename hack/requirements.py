#!/usr/bin/env python3
"""Print the requirements of pyproject.toml extras, one a line, with ``sharpml[...]`` references expanded.

Image builds install an extra's dependencies before the code (a layer that survives code edits):
``hack/requirements.py sfm > requirements.txt``.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def requirements(extras: list[str], pyproject: Path = PYPROJECT) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    table = project["optional-dependencies"]
    out: list[str] = []

    def add(reqs: list[str]) -> None:
        for req in reqs:
            ref = re.fullmatch(rf"{project['name']}\[([\w,-]+)\]", req)
            if ref:
                for extra in ref.group(1).split(","):
                    add(table[extra])
            elif req not in out:
                out.append(req)

    add(project["dependencies"])
    for extra in extras:
        add(table[extra])
    return out


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1:])))
