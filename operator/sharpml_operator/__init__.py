"""The SharpML operator: reconciles SharpJob custom resources into sandboxed SfM pods (kopf).

Start it with ``sharpml-operator`` (see :mod:`sharpml_operator.cli`); the handlers live in
:mod:`sharpml_operator.handlers`.
"""

GROUP = "sharpml.com"
VERSION = "v1alpha1"
PLURAL = "sharpjobs"
KIND = "SharpJob"
API_VERSION = f"{GROUP}/{VERSION}"
