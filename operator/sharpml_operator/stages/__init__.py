"""The stages a SharpJob goes through, each one module: structure from motion, then training;
delivery joins the pipeline's list (:class:`sharpml_operator.pipeline.Pipeline`) as its own module."""

from sharpml_operator.stages.base import Stage
from sharpml_operator.stages.sfm import SfmStage
from sharpml_operator.stages.training import TrainingStage

__all__ = ["SfmStage", "Stage", "TrainingStage"]
