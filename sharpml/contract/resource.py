"""The SharpJob custom resource's identity, and the labels and annotations SharpML puts on objects."""

from __future__ import annotations

import hashlib

GROUP = "sharpml.com"
VERSION = "v1alpha1"
PLURAL = "sharpjobs"
SINGULAR = "sharpjob"
KIND = "SharpJob"
SHORT_NAME = "sj"
API_VERSION = f"{GROUP}/{VERSION}"
CRD_NAME = f"{PLURAL}.{GROUP}"

#: The operator's finalizer: it stops the job's pods and deletes its files before the object goes.
FINALIZER = f"{GROUP}/cleanup"
#: ``app.kubernetes.io/managed-by`` of everything the operator creates.
MANAGED_BY = "sharpml-operator"
#: ``app.kubernetes.io/created-by`` of SharpJobs the API creates.
CREATED_BY_LABEL = "app.kubernetes.io/created-by"
#: Label selecting one owner's jobs. A digest, because account ids may be longer than a label value
#: (63) and need not be valid label values; ``spec.owner`` is still compared on every read.
OWNER_LABEL = f"{GROUP}/owner-sha224"
#: SHA-256 of an anonymous job's access token (the token itself is only ever in the client's hands).
TOKEN_ANNOTATION = f"{GROUP}/job-token-sha256"
#: On a stage's pod: the SharpJob it works for (uid always; name when it fits a label value).
JOB_UID_LABEL = f"{GROUP}/job-uid"
JOB_NAME_LABEL = f"{GROUP}/job"
#: On a stage's pod: which stage it runs (``sfm``, later ``training``).
STAGE_LABEL = f"{GROUP}/stage"


def owner_label(owner: str) -> str:
    """The value of :data:`OWNER_LABEL` for an account id."""
    return hashlib.sha224(owner.encode()).hexdigest()
