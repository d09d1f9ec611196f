"""Which failures are a dependency's outage: the one home of "this is the server's side, not the request's".

The apiserver (job store and rate-limit store) failing in any way the Kubernetes client reports —
an API error status, or the connection itself: refused, reset, timed out (urllib3's ``MaxRetryError``,
``ProtocolError``, ``ReadTimeoutError``, Python's ``ConnectionError`` / ``TimeoutError``) — and the
data volume failing (any other ``OSError``: missing mount, read-only, full, I/O error) are outages.
Each is answered 503 with ``Retry-After`` by the app's error handlers (:mod:`sharpml_api.errors`),
whichever route met it, and they are the only failures of an upload that hand its rate-limit slots
back (:mod:`sharpml_api.submit`): a request that failed on its input, or on an unexpected error of
ours that a client could trigger again and again, keeps them.
"""

from __future__ import annotations

import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from sharpml_api.problems import ApiProblem, cluster_unavailable, storage_unavailable
from sharpml_api.ratelimit import StoreContention

#: What the Kubernetes client raises when the apiserver cannot be used.
CLUSTER_ERRORS: tuple[type[BaseException], ...] = (
    ApiException,
    StoreContention,
    urllib3.exceptions.HTTPError,  # MaxRetryError, ProtocolError, timeouts, TLS errors
    ConnectionError,
    TimeoutError,
)
#: Every exception type that may be an outage (the error handlers are registered for these).
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (*CLUSTER_ERRORS, OSError)


def outage_problem(exc: BaseException) -> ApiProblem | None:
    """The 503 problem for an outage, or None when ``exc`` is not one."""
    if isinstance(exc, ApiProblem):
        return exc if exc.outage else None
    if isinstance(exc, CLUSTER_ERRORS):
        return cluster_unavailable("the cluster is unavailable; try again later")
    if isinstance(exc, OSError):
        return storage_unavailable("the data volume is unavailable; try again later")
    return None
