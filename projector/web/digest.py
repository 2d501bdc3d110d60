"""``GET /tables/{table}/digest``: the digest of each copy of the table's partitions this worker holds (CONTRACT §5).

Active and standby copies alike, each with the changelog offset it is at;
never forwarded: the answer is about this worker's own copies.
``projector verify`` asks every worker and compares the copies of each
partition at one offset (:mod:`projector.verify`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiohttp import web

from projector.runtime.digests import table_digests
from projector.web.responses import json_error, json_response, retry_later

if TYPE_CHECKING:
    from projector.runtime.app import Projector

log = logging.getLogger(__name__)


class DigestViews:
    def __init__(self, projector: "Projector") -> None:
        self.projector = projector

    async def digest(self, request: web.Request) -> web.Response:
        p = self.projector
        name = request.match_info["table"]
        if p.model(name) is None:
            return json_error(404, "unknown_table", table=name)
        # The version that answers (the store's name for it): a brand-new read model has none yet.
        table = p.store.tables.get(name)
        if table is None:
            return retry_later("building", f"read model {name} is being built from the events topic's history; "
                               "no version answers yet")
        try:
            partitions = await table_digests(p.app, p.settings.events_topic, table)
        except Exception as exc:  # a partition database closed under the scan (a stop, a rebalance)
            log.warning("digest of %s failed: %r", name, exc)
            return retry_later("unavailable", f"cannot read this worker's copies of {name} now: {exc}")
        return json_response({"table": name, "partitions": partitions})
