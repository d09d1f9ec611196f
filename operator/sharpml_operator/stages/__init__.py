"""The stages a SharpJob goes through, each one module: structure from motion, training, delivery (in the
pipeline's list: :class:`sharpml_operator.pipeline.Pipeline`)."""

from sharpml_operator.stages.base import Stage
from sharpml_operator.stages.delivery import DeliveryStage
from sharpml_operator.stages.sfm import SfmStage
from sharpml_operator.stages.training import TrainingStage

__all__ = ["DeliveryStage", "SfmStage", "Stage", "TrainingStage"]
