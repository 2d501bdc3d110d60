"""Bearer tokens: ``PROJECTOR_API_TOKEN`` for every endpoint but ``/healthz``, ``PROJECTOR_ADMIN_TOKEN`` for writes.

The check of every request is the ``auth`` middleware (:mod:`projector.web.middleware`);
the views that write ask :func:`is_admin`.
"""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web


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
    """True when no admin token is set, or the request carries it."""
    return settings.admin_token is None or bearer(request, settings.admin_token)
