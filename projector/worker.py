"""The wiring: a worker is the runtime (:mod:`projector.runtime`) with the web views (:mod:`projector.web`).

The one module that knows both layers: it builds the :class:`Projector`,
hands it the web layer's middlewares and routes, and lets the command side
answer other workers over HTTP. ``projector worker`` runs it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any, Optional

from projector.core.catalog import Catalog, load_catalog
from projector.core.engine import tables_of
from projector.core.errors import ReadModelError, SchemaError
from projector.core.lifecycle import TableState
from projector.core.schemas import Schemas
from projector.runtime.app import Projector
from projector.runtime.builds import plan_worker_tables
from projector.runtime.config import Settings
from projector.runtime.errors import BrokerError, TopicError
from projector.runtime.topics import prepare_worker_topics
from projector.web.forwarding import Peers
from projector.web.middleware import web_application_options
from projector.web.routes import install_routes

log = logging.getLogger(__name__)

#: The longest a clean stop (SIGTERM) of a worker should take, in seconds; a supervisor must
#: wait longer before it kills the worker (deploy/k8s: the StatefulSet's
#: terminationGracePeriodSeconds). Not a timer the worker runs, but its bounded steps at
#: their limits: the batch being folded finishes within half the session timeout (10 s),
#: requests in flight get up to the web server's 60 s shutdown timeout (waiting reads are
#: answered 503 at once, a forward gives up after FORWARD_TIMEOUT), and the last commit and
#: the producer's flush the rest. A clean stop usually takes a few seconds.
STOP_DEADLINE = 90.0


def build_worker(settings: Settings, catalog: Optional[Catalog] = None, partitions: Optional[int] = None,
                 states: Optional[dict[str, TableState]] = None) -> Projector:
    """One worker with its web views, ready for Faust's ``Worker`` to run."""
    peers: Peers  # this worker's HTTP session to the others: forwarded reads, and command answers

    async def send_answers(url: str, items: list[dict[str, Any]]) -> None:
        await peers.post(url, "/internal/command-answers", items)

    def install_web(app: Any, projector: Projector) -> None:
        install_routes(app, projector, peers)

    projector = Projector(
        settings, catalog, partitions,
        web_options=web_application_options, install_web=install_web, send_answers=send_answers, states=states,
    )
    peers = Peers(projector)
    return projector


def run_worker(settings: Settings, loglevel: str) -> None:
    """Check the read models, create the topics, then run one worker until it is stopped (exits on a bad setup)."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    try:
        catalog = load_catalog()
        Schemas.from_modules(catalog.modules)
    except (ReadModelError, SchemaError) as exc:
        sys.exit(f"projector: {exc}")
    log.info("Kafka at %s (%s)", settings.broker, settings.security.describe())
    # Every topic must exist, with the events topic's partition count, before
    # Faust joins the group, or its first assignment leaves some out.
    async def prepare() -> tuple[Settings, int, dict[str, TableState]]:
        states = await plan_worker_tables(settings, catalog)
        tables = [name for name, _ in tables_of(catalog, states)]
        ready, partitions = await prepare_worker_topics(settings, [d.name for d in catalog.derived], tables)
        return ready, partitions, states

    try:
        settings, partitions, states = asyncio.run(prepare())
    except (BrokerError, TopicError) as exc:
        sys.exit(f"projector: {exc}")
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        sys.exit(f"projector: cannot create PROJECTOR_DATA_DIR {settings.data_dir}: {exc}")
    projector = build_worker(settings, catalog, partitions, states)
    from faust.worker import Worker

    worker = Worker(projector.app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
