"""The SharpML operator: reconciles SharpJob custom resources through their stages (kopf).

Start it with ``sharpml-operator`` (:mod:`sharpml_operator.cli`). The kopf handlers are thin
(:mod:`sharpml_operator.handlers`); what a job does next is decided in :mod:`sharpml_operator.pipeline`
from the stages in :mod:`sharpml_operator.stages`. The resource's identity and phases come from the
core's contract (:mod:`sharpml.contract`).
"""
