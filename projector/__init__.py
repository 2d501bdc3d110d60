"""projector: event sourcing and CQRS on Kafka.

One topic holds every aggregate's events, keyed by aggregate id. Faust agents
fold them into changelog-backed RocksDB tables, the read models declared in
the repository's ``tables/`` folder, and built-in web views serve them.
"""

__version__ = "0.1.0"
