"""Who may read a job: its owner (bearer JWT, or the anonymous job token), or whoever holds a signed link.

A link (:mod:`sharpml.links`) grants one scope of one job until its expiry: ``view`` (the viewer page and,
read-only, the job's status and events) or one artifact's file. It is presented as the query parameters
``exp``, ``kid`` and ``sig``; a request carrying any of them is judged by the link alone (a bad one is 403,
an expired one 410, whatever else it carries), so a link never widens what a token grants or the reverse.
Answers to a link's holder never carry links that outlive it: a share link cannot be extended by reading
the status it grants.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sharpml.links import PARAMS, LinkError, LinkSettings, verify
from sharpml_api.problems import ApiProblem

_KINDS = {403: ("link-invalid", "Link not valid"), 410: ("link-expired", "Link expired")}


@dataclass(frozen=True)
class Grant:
    """Why a request may read a job: ``expires`` is None for its owner, else the link's expiry."""

    expires: int | None = None


OWNER = Grant()


def link_params(query: Mapping[str, str]) -> dict[str, str] | None:
    """The link parameters of a request's query, or None when it carries none of them."""
    found = {p: query[p] for p in PARAMS if p in query}
    return found or None


def check_link(links: LinkSettings, job_id: str, scope: str, params: Mapping[str, str]) -> Grant:
    """The grant a link gives for ``scope`` of ``job_id``; 403 (altered, another job's or file's, unknown
    key, links not configured) or 410 (genuine, expired) problem otherwise."""
    try:
        return Grant(expires=verify(links.keys, job_id, scope, params))
    except LinkError as exc:
        kind, title = _KINDS[exc.status]
        raise ApiProblem(exc.status, kind, title, str(exc)) from None
