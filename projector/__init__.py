"""projector: event sourcing and CQRS on Kafka.

One topic holds every aggregate's events, keyed by aggregate id. Faust agents
fold them into changelog-backed RocksDB tables, the read models declared in
the repository's ``tables/`` folder, and built-in web views serve them.

The layers, each importing only from the ones before it:

- :mod:`projector.core`: events, read models, folds, the engine and the
  command deciders; no Faust, aiokafka or aiohttp;
- :mod:`projector.runtime`: the Faust app, batch delivery, stores, the
  changelog sink, recovery, topics and Kafka clients;
- :mod:`projector.web`: the web views every worker serves;
- :mod:`projector.worker` (a worker: runtime and web), :mod:`projector.demo`,
  :mod:`projector.bench` and :mod:`projector.cli`.

A read model module's decider raises :class:`Rejected` or
:class:`InvalidCommand`, imported from here.
"""

from projector.core.errors import InvalidCommand, Rejected

__all__ = ["InvalidCommand", "Rejected", "__version__"]

__version__ = "0.1.0"
