"""In-process counters for the worker (exposed over HTTP by :mod:`projector.web.metrics`)."""

from __future__ import annotations

import bisect
import copy
import time
from collections import Counter, deque
from dataclasses import dataclass, field

#: Upper bounds (seconds) of the fold batch latency histogram's buckets.
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Upper bounds (seconds) of the event loop lag histogram's buckets.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
#: How often the lag probe asks the event loop to wake it.
LAG_PROBE_INTERVAL = 0.01
#: The window events/s is measured over.
RATE_WINDOW = 10.0
#: Samples of ``records_seen`` kept, about one a second: 90 s (events/s, the status page's chart).
THROUGHPUT_SAMPLES = 91


@dataclass
class Metrics:
    events_applied: Counter = field(default_factory=Counter)  # by table
    duplicates: int = 0  # events at or below their aggregate's applied version
    duplicates_derived: int = 0  # repartition messages already applied
    command_echoes: int = 0  # duplicates that are the command side's own events coming back
    commands: Counter = field(default_factory=Counter)  # command answers by outcome
    deadletters: Counter = field(default_factory=Counter)  # by reason
    parked_aggregates: int = 0
    releases: int = 0
    records_seen: int = 0
    batches: int = 0
    batch_seconds_total: float = 0.0
    # Where a batch's time goes: planning (decode, fold), Kafka sends until acked, RocksDB writes.
    phase_seconds: Counter = field(default_factory=Counter)
    # Fold batch latency (send, acks, RocksDB) as a histogram: counts per bucket of BATCH_BUCKETS, +Inf last.
    batch_buckets: list = field(default_factory=lambda: [0] * (len(BATCH_BUCKETS) + 1))
    # (unix time, records_seen) about once a second: events/s, and the status page's chart.
    throughput: deque = field(default_factory=lambda: deque(maxlen=THROUGHPUT_SAMPLES))
    # How late the event loop woke a sleeping task: what a request waits before the loop reads it.
    lag_buckets: list = field(default_factory=lambda: [0] * (len(LAG_BUCKETS) + 1))
    lag_seconds_total: float = 0.0
    #: Unix time this worker handled its first record of the events topic (0: none yet).
    first_record_time: float = 0.0
    #: Builds of new read-model versions: history records read, and records skipped, by table.
    build_records: Counter = field(default_factory=Counter)
    build_skipped: Counter = field(default_factory=Counter)

    #: The counters a batch's plan moves: :meth:`snapshot` and :meth:`restore` them when a plan is made again.
    PLAN_COUNTERS = ("events_applied", "duplicates", "duplicates_derived", "command_echoes", "deadletters",
                     "parked_aggregates", "releases", "records_seen", "batches")

    def snapshot(self) -> dict:
        return {name: copy.copy(getattr(self, name)) for name in self.PLAN_COUNTERS}

    def restore(self, snapshot: dict) -> None:
        for name, value in snapshot.items():
            setattr(self, name, copy.copy(value))

    def observe_lag(self, seconds: float) -> None:
        self.lag_seconds_total += seconds
        self.lag_buckets[bisect.bisect_left(LAG_BUCKETS, seconds)] += 1

    def observe_batch(self, seconds: float) -> None:
        self.batch_seconds_total += seconds
        self.batch_buckets[bisect.bisect_left(BATCH_BUCKETS, seconds)] += 1
        self.sample()

    def sample(self, now: float | None = None) -> None:
        """Note ``records_seen`` now, unless it was noted less than a second ago."""
        now = time.time() if now is None else now
        if not self.throughput or now - self.throughput[-1][0] >= 1.0:
            self.throughput.append((round(now, 3), self.records_seen))

    def events_per_second(self, now: float | None = None) -> float:
        """Records handled per second over the last RATE_WINDOW seconds (0 when idle)."""
        now = time.time() if now is None else now
        self.sample(now)
        old = next(((t, n) for t, n in self.throughput if now - t <= RATE_WINDOW), None)
        if old is None or now - old[0] < 0.5:
            return 0.0
        return (self.records_seen - old[1]) / (now - old[0])

