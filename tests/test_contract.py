"""The SharpJob contract is the one source: the CRD, the core's SfM defaults, the operator's pod
arguments and the README's configuration tables all agree with it."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import yaml

from sharpml import settings
from sharpml.contract import (
    API_VERSION,
    PIPELINE,
    PROCESSING_DEFAULTS,
    TERMINAL,
    TRAINING_BACKENDS,
    TRAINING_DEFAULTS,
    TRANSITIONS,
    TTL_SECONDS_AFTER_FINISHED,
    ConditionType,
    JobSpec,
    Phase,
    may_move,
)
from sharpml.contract import resource as identity
from sharpml.contract.status import StatusPatch
from sharpml.settings import REGISTRY

REPO = Path(__file__).resolve().parents[1]
CRD = yaml.safe_load((REPO / "crds" / "sharpjobs.sharpml.com.yaml").read_text())
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]


def test_crd_identity_is_the_contracts() -> None:
    assert CRD["metadata"]["name"] == identity.CRD_NAME
    assert CRD["spec"]["group"] == identity.GROUP
    names = CRD["spec"]["names"]
    assert (names["kind"], names["plural"], names["singular"]) == (
        identity.KIND,
        identity.PLURAL,
        identity.SINGULAR,
    )
    assert names["shortNames"] == [identity.SHORT_NAME]
    (version,) = CRD["spec"]["versions"]
    assert f"{CRD['spec']['group']}/{version['name']}" == API_VERSION


def test_crd_phases_and_defaults_are_the_contracts() -> None:
    assert SCHEMA["status"]["properties"]["phase"]["enum"] == [str(p) for p in Phase]
    processing = SCHEMA["spec"]["properties"]["processing"]["properties"]
    assert {k: v["default"] for k, v in processing.items()} == PROCESSING_DEFAULTS
    assert SCHEMA["spec"]["properties"]["ttlSecondsAfterFinished"]["default"] == TTL_SECONDS_AFTER_FINISHED


def test_crd_training_options_are_the_trainers() -> None:
    """spec.training's defaults and bounds are the trainer's settings: a SharpJob can ask for exactly
    what the trainer accepts, and nothing else."""
    training = SCHEMA["spec"]["properties"]["training"]["properties"]
    assert {k: v["default"] for k, v in training.items() if "default" in v} == TRAINING_DEFAULTS
    assert training["backend"]["enum"] == list(TRAINING_BACKENDS) and "default" not in training["backend"]
    for field, setting in (
        ("steps", "SHARPML_TRAIN_STEPS"),
        ("maxGaussians", "SHARPML_TRAIN_MAX_GAUSSIANS"),
        ("maxImageSize", "SHARPML_TRAIN_MAX_IMAGE_SIZE"),
    ):
        declared = REGISTRY[setting]
        bounds = (training[field]["minimum"], training[field]["maximum"])
        assert bounds == (declared.minimum, declared.maximum)
    status = SCHEMA["status"]["properties"]["training"]["properties"]
    assert status["backend"]["enum"] == list(TRAINING_BACKENDS)


def test_cluster_runs_the_clis_measured_sfm_defaults() -> None:
    """The CRD's defaults, the SfM pod's arguments and the core's SfmOptions are one configuration."""
    pytest.importorskip("pycolmap")
    from sharpml_operator.podspec import sfm_args
    from sharpml_operator.settings import Settings

    from sharpml.sfm import SfmOptions

    core = SfmOptions()
    args = sfm_args(JobSpec.read({}), Settings.from_env({}))
    flags = dict(zip(args[1::2], args[2::2], strict=True))
    assert flags["--max-image-size"] == str(core.max_image_size) == "1600"
    assert flags["--matcher"] == core.matcher and flags["--mapper"] == core.mapper
    assert flags["--scene-image-size"] == str(core.scene_image_size) == str(TRAINING_DEFAULTS["maxImageSize"])


def test_lifecycle_table() -> None:
    assert set(TRANSITIONS) == set(Phase)
    assert all(not TRANSITIONS[p] for p in TERMINAL)
    for old, new in itertools.pairwise(PIPELINE):
        assert may_move(old, new), (old, new)
    for phase in set(Phase) - TERMINAL:
        assert may_move(phase, Phase.FAILED) and may_move(phase, Phase.CANCELLED)
    assert not may_move(Phase.COMPLETE, Phase.QUEUED) and not may_move(Phase.QUEUED, Phase.COMPLETE)


def test_entering_phases_sets_conditions_and_finished_at() -> None:
    patch = StatusPatch({})
    for phase in (Phase.QUEUED, Phase.RECONSTRUCTING, Phase.RECONSTRUCTED):
        patch.enter(phase, "Step", f"now {phase}", 1)
    conds = {c["type"]: c for c in patch["conditions"]}
    assert conds[ConditionType.RECONSTRUCTED]["status"] == "True"
    assert conds[ConditionType.READY]["status"] == "False" and "finishedAt" not in patch.get("timestamps", {})
    failed = StatusPatch(patch.view())
    failed.enter(Phase.FAILED, "Boom", "it broke", 1)
    conds = {c["type"]: c for c in failed["conditions"]}
    # A finished stage stays finished; the failure is its own condition.
    assert conds[ConditionType.RECONSTRUCTED]["status"] == "True"
    assert conds[ConditionType.FAILED]["status"] == "True" and conds[ConditionType.FAILED]["reason"] == "Boom"
    assert "finishedAt" in failed["timestamps"] and failed["queuePosition"] is None
    done = StatusPatch(patch.view())
    done.enter(Phase.COMPLETE, "Complete", "done", 1)
    assert {c["type"]: c["status"] for c in done["conditions"]}[ConditionType.READY] == "True"


def test_readme_configuration_tables_are_generated_from_the_registry() -> None:
    readme = (REPO / "README.md").read_text()
    assert settings.render(readme) == readme, "run: python -m sharpml.settings --write README.md"
    documented = {c for c, _, _ in settings._blocks(readme)}
    assert documented == set(settings.COMPONENTS)


def test_every_variable_the_code_reads_is_in_the_registry() -> None:
    used: set[str] = set()
    for folder in ("sharpml", "api", "operator"):
        for path in (REPO / folder).rglob("*.py"):
            if path.name == "settings.py" and path.parent.name == "sharpml":
                continue  # the registry itself
            used |= set(re.findall(r"\"(SHARPML_[A-Z0-9_]+)\"", path.read_text()))
    assert used - set(settings.REGISTRY) == set()
    assert set(settings.REGISTRY) - used == set(), "declared but never read"


def test_a_bad_value_names_the_variable_and_the_rule() -> None:
    with pytest.raises(settings.ConfigError, match=r"SHARPML_API_PORT='70000': must be at most 65535"):
        settings.value({"SHARPML_API_PORT": "70000"}, "SHARPML_API_PORT")
    with pytest.raises(settings.ConfigError, match=r"SHARPML_SFM_MEMORY_LIMIT='8 GB': must be a Kubernetes"):
        settings.value({"SHARPML_SFM_MEMORY_LIMIT": "8 GB"}, "SHARPML_SFM_MEMORY_LIMIT")
