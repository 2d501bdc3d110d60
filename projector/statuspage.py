"""The status page at ``/`` and the ``/status`` JSON behind it (issue 5; being written)."""

from __future__ import annotations

from typing import Any


def install(app: Any, projector: Any) -> None:
    """Add the route(s) of this module to the aiohttp ``app``."""
