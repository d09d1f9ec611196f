"""Webhook URLs point at the public internet only: checked when a job is submitted.

The address policy (which hosts and addresses a webhook may reach, and the allow-list
``SHARPML_WEBHOOK_ALLOWED_HOSTS``) is the core's :mod:`sharpml.netguard`, which the operator applies
again at send time, connecting to exactly the address it checked (DNS can change in between). Here a
refusal becomes a 422 problem naming ``webhook_url``.
"""

from __future__ import annotations

from collections.abc import Iterable

from sharpml import netguard
from sharpml_api.problems import field_problem

FIELD = "webhook_url"


def check_webhook_url(
    url: str, allowed: Iterable[str] = (), resolve: netguard.Resolver = netguard.resolve
) -> None:
    """Raise a 422 problem naming ``webhook_url`` unless ``url`` reaches only public addresses.

    A host the allow-list names is accepted without resolving it. Blocking (it resolves the host): run
    it in a worker thread."""
    allowed = tuple(allowed)
    try:
        host, _ = netguard.target(url)
        if host in allowed:
            return
        netguard.check(url, allowed, resolve)
    except netguard.Refused as exc:
        raise field_problem(
            422, "invalid-options", "Invalid options", FIELD, exc.rule, f"{FIELD}: {exc}"
        ) from None
