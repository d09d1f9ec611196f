"""The namespaces this operator process manages (``--namespace``; empty: all of them).

Set once by :mod:`sharpml_operator.cli` before kopf starts; read by what must list the cluster itself
rather than through kopf's watches (the sweep of job directories without a SharpJob).
"""

from __future__ import annotations

NAMESPACES: tuple[str, ...] = ()
