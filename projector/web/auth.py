"""Tokens: ``PROJECTOR_API_TOKEN`` for every endpoint but ``/healthz``, ``PROJECTOR_ADMIN_TOKEN`` for writes,
and the peer token for calls between workers.

The check of every request is the ``auth`` middleware (:mod:`projector.web.middleware`);
the views that write ask :func:`is_admin`. A worker calling another one (a forwarded
request, a listing's scan, ``/status?all=1``, a command's answer) sends
``X-Projector-Peer: <peer token>`` (:func:`peer_headers`) and never the client's
``Authorization`` header: the API and admin tokens never leave the worker that got them.
"""

from __future__ import annotations

import hmac
from typing import Any, Optional

from aiohttp import web

#: The header that carries the peer token from one worker to another.
PEER_HEADER = "X-Projector-Peer"
#: Marks a request one worker sends another: the receiver answers it itself, never forwards it again.
FORWARDED_HEADER = "X-Projector-Forwarded"


def bearer(request: web.Request, token: str) -> bool:
    """True when the request carries ``Authorization: Bearer <token>`` (compared in constant time)."""
    given = request.headers.get("Authorization", "")
    # Header bytes that are not UTF-8 arrive as surrogates: compare them as the bytes they were.
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), f"Bearer {token}".encode())


def query_token(request: web.Request, token: str) -> bool:
    """True when the request's ``?token=`` is ``token`` (compared in constant time)."""
    given = request.query.get("token", "").encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, token.encode())


def is_admin(request: web.Request, settings: Any) -> bool:
    """True when no admin token is set, or the request carries it (the peer token never counts)."""
    return settings.admin_token is None or bearer(request, settings.admin_token)


def peer_secret(settings: Any) -> Optional[str]:
    """The peer token of these settings (None when no token is set at all)."""
    return getattr(settings, "peer_secret", None)


def is_peer(request: web.Request, settings: Any) -> bool:
    """True when the request carries this deployment's peer token (compared in constant time)."""
    token = peer_secret(settings)
    if token is None:
        return False
    given = request.headers.get(PEER_HEADER, "").encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, token.encode())


def is_forwarded(request: web.Request, settings: Any) -> bool:
    """True when another worker sent this request: answer it here, never forward it again.

    With a peer token, only a request that carries it; with no token at all (an open
    deployment) the ``X-Projector-Forwarded`` mark alone.
    """
    if peer_secret(settings) is None:
        return FORWARDED_HEADER in request.headers
    return FORWARDED_HEADER in request.headers and is_peer(request, settings)


def peer_headers(settings: Any) -> dict[str, str]:
    """Headers of a call from this worker to another: marked forwarded, with the peer token (if any)."""
    headers = {FORWARDED_HEADER: "1"}
    token = peer_secret(settings)
    if token is not None:
        headers[PEER_HEADER] = token
    return headers
