"""The soak (tests/operator/soak.py): uploaders against the API while the API and the operator are
SIGKILLed and restarted; every accepted upload must end as exactly one finished SharpJob, with nothing
left behind.

In the suite the run is short and its kills are fixed by a seed: 2 uploaders for 60 s, one API kill and
one operator kill at seeded moments. ``make soak`` runs the same test with ``SHARPML_SOAK_UPLOADERS``
uploaders for ``SHARPML_SOAK_SECONDS``, kills every 15-45 s chosen by ``SHARPML_SOAK_SEED`` (random when
unset, and printed), and writes ``SHARPML_SOAK_RESULT`` (JSON) with a summary line.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

from sharpml.synthetic import write_dataset
from tests.operator.conftest import N_PHOTOS, _free_port
from tests.operator.soak import (
    ApiProcess,
    Kill,
    Soak,
    SoakConfig,
    api_env,
    operator_settings,
    summary,
    write_result,
)

pytestmark = [pytest.mark.cluster, pytest.mark.podman, pytest.mark.slow]

LONG = "SHARPML_SOAK_SECONDS" in os.environ
UPLOADERS = int(os.environ.get("SHARPML_SOAK_UPLOADERS", "2"))
SECONDS = float(os.environ.get("SHARPML_SOAK_SECONDS", "60"))
SEED = int(os.environ.get("SHARPML_SOAK_SEED", "13"))
RESULT = os.environ.get("SHARPML_SOAK_RESULT")


def _config() -> SoakConfig:
    if LONG:
        return SoakConfig(UPLOADERS, SECONDS, SEED, drain_seconds=900)
    # One kill of each at seeded moments: the API's aimed at an upload in flight, the operator's later,
    # while SfM pods run.
    rng = random.Random(SEED)
    kills = [
        Kill(rng.uniform(10, 22), "api", rng.uniform(1, 3), aim=rng.uniform(0.02, 0.25)),
        Kill(rng.uniform(28, 40), "operator", rng.uniform(1, 3)),
    ]
    # One unfinished job per uploader: the SfM queue, which the drain waits for, stays short.
    return SoakConfig(UPLOADERS, SECONDS, SEED, kills=kills, drain_seconds=240, outstanding=1)


@pytest.fixture(scope="module")
def photo_sets(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """The operator tests' scene (reconstructs in seconds) and the same set with one photo intake refuses."""
    out = tmp_path_factory.mktemp("soak-scene")
    write_dataset(out, N_PHOTOS, 640, 480, formats=("jpg",))
    valid = [(p.name, p.read_bytes()) for p in sorted(out.rglob("*.jpg"))]
    invalid = [*valid[:-1], (valid[-1][0], b"\xff\xd8\xff\xe0 not a JPEG after all")]
    return valid, invalid


def test_uploads_survive_killed_api_and_operator(
    control_plane, namespace, data_volume, start_operator, node_agent, photo_sets, tmp_path
):
    config = _config()
    print(
        f"soak: {config.uploaders} uploaders for {config.seconds:.0f} s, seed {config.seed}", file=sys.stderr
    )
    operator = start_operator(**operator_settings())
    port = _free_port()
    api = ApiProcess(
        api_env(control_plane, namespace, data_volume.root, port), port, tmp_path / "api.log"
    ).start()
    soak = Soak(config, control_plane, namespace, data_volume.root, api, operator, *photo_sets)
    try:
        result = soak.run()
    finally:
        api.stop()
    line = summary(result)
    print(line, file=sys.stderr)
    if RESULT:
        write_result(Path(RESULT), result, os.environ.get("SHARPML_SOAK_COMMAND", "make soak"))
    assert result["api_kills"] >= 1 and result["operator_kills"] >= 1, result["kills"]
    assert result["accepted"] >= config.uploaders, line  # the run did work
    assert result["violations"] == [], (
        f"{line}\n"
        + "\n".join(result["violations"])
        + f"\nAPI log:\n{api.log()}\noperator log:\n{operator.log()}"
    )
