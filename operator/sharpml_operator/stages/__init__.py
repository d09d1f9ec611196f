"""The stages a SharpJob goes through, each one module: structure from motion now; training and
delivery join the pipeline (:data:`sharpml_operator.pipeline.STAGES`) as their own modules."""

from sharpml_operator.stages.base import Stage
from sharpml_operator.stages.sfm import SfmStage

__all__ = ["SfmStage", "Stage"]
