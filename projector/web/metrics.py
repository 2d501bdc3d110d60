"""``GET /metrics``: the worker's counters through prometheus-client.

:class:`ProjectorCollector` reads the counters the worker keeps anyway
(:class:`projector.core.metrics.Metrics`, the control table, recovery and
build progress, the consumer's positions) when Prometheus scrapes: counting
an event costs nothing more than it did. Each worker has its own
``CollectorRegistry`` (:func:`worker_metrics`; several workers can share one
process in the tests) holding that collector and prometheus-client's process,
GC and platform collectors.

The answer is Prometheus text 0.0.4, or OpenMetrics 1.0.0 when the ``Accept``
header asks for ``application/openmetrics-text``. The names in the Prometheus
text are the ones projector has always written (a counter keeps its
``_total``); OpenMetrics names a counter's family without it, as it must.
"""

from __future__ import annotations

import bisect
import logging
import weakref
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Optional, Sequence

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from projector.core.control import COMMANDS_ENABLED
from projector.core.metrics import BATCH_BUCKETS, LAG_BUCKETS, LAG_PROBE_INTERVAL, Metrics

if TYPE_CHECKING:
    from projector.runtime.app import Projector

log = logging.getLogger(__name__)

#: Upper bounds (seconds) of the ``projector_request_seconds`` histogram's buckets.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: The ``kind`` label of ``projector_request_seconds``: what a request asks for.
REQUEST_KINDS = ("lookup", "listing", "index", "events", "command", "other")
#: The kind of each route (by its path pattern); any other route is ``other``.
ROUTE_KINDS = {
    "/tables/{table}/{key}": "lookup",
    "/tables/{table}": "listing",
    "/tables/{table}/index/{index}/{value}": "index",
    "/aggregates/{id}/events": "events",
    "/commands": "command",
}
#: The histogram in OpenMetrics whose family name this counter's would take (its value is that histogram's _sum).
OPENMETRICS_CLASHES = {"projector_fold_batch_seconds_total"}


class RequestTimes:
    """How long this worker took to answer each request, by kind: the ``projector_request_seconds`` histogram.

    :meth:`observe` is a bisect and two additions; the histogram is read at scrape time.
    """

    def __init__(self) -> None:
        self.buckets = {kind: [0] * (len(REQUEST_BUCKETS) + 1) for kind in REQUEST_KINDS}
        self.seconds = dict.fromkeys(REQUEST_KINDS, 0.0)

    def observe(self, kind: str, seconds: float) -> None:
        if kind not in self.seconds:
            kind = "other"
        self.seconds[kind] += seconds
        self.buckets[kind][bisect.bisect_left(REQUEST_BUCKETS, seconds)] += 1


def request_kind(request: Any) -> str:
    """The kind of an aiohttp request, from the route it matched (``other`` when it matched none)."""
    resource = getattr(request.match_info.route, "resource", None)
    return ROUTE_KINDS.get(getattr(resource, "canonical", ""), "other")


def _gauge(value: Any) -> float:
    return -1 if value is None else int(value) if isinstance(value, bool) else value


def histogram_buckets(counts: Sequence[int], bounds: Sequence[float] = BATCH_BUCKETS) -> list[tuple[str, int]]:
    """Per-bucket counts (``+Inf`` last) as prometheus-client's cumulative ``(le, count)`` pairs."""
    out, running = [], 0
    for bound, count in zip([*(str(b) for b in bounds), "+Inf"], counts):
        running += count
        out.append((bound, running))
    return out


def _histogram(name: str, help_: str, counts: Sequence[int], total: float, bounds: Sequence[float]) -> Metric:
    return HistogramMetricFamily(name, help_, buckets=histogram_buckets(counts, bounds), sum_value=total)


def _labelled(family: Any, items: Iterable[tuple[Sequence[str], float]]) -> Metric:
    """``family`` with one sample per ``(label values, value)`` of ``items``."""
    for values, value in items:
        family.add_metric(values, value)
    return family


def _counter(name: str, help_: str, labels: Sequence[str], items: Iterable[tuple[Sequence[str], float]]) -> Metric:
    return _labelled(CounterMetricFamily(name, help_, labels=labels), items)


def _gauges(name: str, help_: str, labels: Sequence[str], items: Iterable[tuple[Sequence[str], float]]) -> Metric:
    return _labelled(GaugeMetricFamily(name, help_, labels=labels), items)


class ProjectorCollector(Collector):
    """projector's own metrics, read from the worker when Prometheus scrapes."""

    def __init__(self, projector: "Projector", requests: Optional[RequestTimes] = None) -> None:
        self.projector = projector
        self.requests = requests if requests is not None else RequestTimes()

    def describe(self) -> list[Metric]:
        # Nothing to reserve: the registry need not call collect() when the collector is registered.
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self._folding()
        yield from self._serving()
        yield from self._recovery()
        yield from self._builds()
        yield from self._broker()
        yield from self._control()

    def _folding(self) -> Iterator[Metric]:
        p = self.projector
        m: Metrics = p.metrics
        yield _counter("projector_events_applied_total", "Events applied to each read model.", ["table"],
                       (([model.name], m.events_applied[model.name]) for model in p.catalog.all))
        yield CounterMetricFamily("projector_duplicates_total",
                                  "Events skipped as duplicates (at or below the applied version).", m.duplicates)
        yield CounterMetricFamily("projector_command_echoes_total",
                                  "Duplicates that are events the command side appended and applied at once, read "
                                  "back from the events topic.", m.command_echoes)
        yield _counter("projector_commands_total",
                       "Commands this worker decided as the writer of their partition, by outcome.", ["outcome"],
                       (([k], v) for k, v in sorted(m.commands.items())))
        yield _counter("projector_deadletter_total", "Records sent to the dead-letter topic, by reason.", ["reason"],
                       (([k], v) for k, v in sorted(m.deadletters.items())))
        yield CounterMetricFamily("projector_records_total", "Records of the events topic handled by this worker.",
                                  m.records_seen)
        yield CounterMetricFamily("projector_parked_total", "Aggregates parked by a version gap.", m.parked_aggregates)
        yield GaugeMetricFamily("projector_parked_aggregates",
                                "Aggregates parked now (until an operator releases them), in the events partitions "
                                "this worker processes.", self._parked_aggregates())
        yield CounterMetricFamily("projector_fold_batches_total", "Batches folded.", m.batches)
        yield CounterMetricFamily("projector_fold_batch_seconds_total", "Time spent sending and writing fold batches.",
                                  m.batch_seconds_total)
        yield _histogram("projector_fold_batch_seconds", "Fold batch latency: Kafka sends until acked, then RocksDB.",
                         m.batch_buckets, m.batch_seconds_total, BATCH_BUCKETS)
        yield GaugeMetricFamily("projector_first_record_time_seconds",
                                "Unix time of the first events-topic record this worker handled (0: none yet).",
                                m.first_record_time)
        yield _histogram("projector_event_loop_lag_seconds",
                         f"How late the worker's event loop woke a task that slept {LAG_PROBE_INTERVAL * 1000:g} ms: "
                         "the wait a request sees before the worker reads it.",
                         m.lag_buckets, m.lag_seconds_total, LAG_BUCKETS)
        yield GaugeMetricFamily("projector_events_per_second",
                                "Records of the events topic handled per second, over the last 10 s.",
                                round(m.events_per_second(), 1))
        yield _counter("projector_batch_phase_seconds_total", "Time spent per phase of a batch.", ["phase"],
                       (([k], v) for k, v in sorted(m.phase_seconds.items())))
        yield _gauges("projector_consumer_lag", "Records of each assigned partition not yet read.",
                      ["topic", "partition"],
                      (([topic, str(partition)], lag) for topic, partition, lag in p.consumer_lag()))

    def _parked_aggregates(self) -> float:
        try:
            return self.projector.parked_aggregates()
        except Exception as exc:  # a partition's database not open yet, or closed meanwhile
            log.debug("parked aggregates not counted: %r", exc)
            return -1

    def _serving(self) -> Iterator[Metric]:
        p = self.projector
        ready, _ = p.readiness()
        yield GaugeMetricFamily("projector_ready", "1 while this worker is ready (GET /readyz answers 200), else 0.",
                                int(bool(ready)))
        family = HistogramMetricFamily("projector_request_seconds",
                                       "Time to answer an HTTP request, by kind: lookup (a row by key), listing, "
                                       "index, events (an aggregate's events), command, other.", labels=["kind"])
        for kind in REQUEST_KINDS:
            family.add_metric([kind], histogram_buckets(self.requests.buckets[kind], REQUEST_BUCKETS),
                              self.requests.seconds[kind])
        yield family
        yield GaugeMetricFamily("projector_parked_requests", "Requests waiting for a row version (min_version).",
                                p.rows.parked)
        yield CounterMetricFamily("projector_command_answers_dropped_total",
                                  "Command answers not sent: their reply_to is no worker of this group.",
                                  int(getattr(p.commands, "dropped_answers", 0) or 0))

    def _recovery(self) -> Iterator[Metric]:
        """Changelog recovery progress: records still to restore per changelog partition."""
        p = self.projector
        recovery = p.app.tables.recovery
        yield GaugeMetricFamily("projector_recovery_in_progress",
                                "1 while this worker restores tables from their changelogs.",
                                int(bool(recovery.in_recovery)))
        try:
            remaining = {**recovery.standby_remaining(), **recovery.active_remaining()}
        except Exception as exc:  # offsets not built yet
            log.debug("recovery offsets not known yet: %r", exc)
            remaining = {}
        yield _gauges("projector_recovery_remaining", "Changelog records still to restore, per changelog partition.",
                      ["topic", "partition"],
                      (([tp.topic, str(tp.partition)], max(0, n)) for tp, n in sorted(remaining.items())))
        progress = getattr(p, "recovery_progress", None)
        if progress is None:
            return
        yield CounterMetricFamily("projector_recovery_restored_total",
                                  "Changelog records restored into RocksDB (actives and standbys).",
                                  progress.restored_total)
        yield GaugeMetricFamily("projector_recovery_records_per_second",
                                "Changelog records restored per second, last sample.", round(progress.rate, 1))
        yield _gauges("projector_recovery_eta_seconds", "Estimated seconds until an active partition is restored.",
                      ["topic", "partition"],
                      (([x.topic, str(x.partition)], round(x.eta_seconds, 1)) for x in progress.partitions
                       if x.kind == "active" and x.eta_seconds is not None))

    def _builds(self) -> Iterator[Metric]:
        """New read-model versions being built from history (CONTRACT §6): progress over all partitions."""
        p = self.projector
        m: Metrics = p.metrics
        yield _counter("projector_build_records_total",
                       "History records this worker's builders read, by table being built.", ["table"],
                       (([t], n) for t, n in sorted(m.build_records.items())))
        yield _counter("projector_build_skipped_total",
                       "History records a build skipped (undecodable, or its fold raised).", ["table"],
                       (([t], n) for t, n in sorted(m.build_skipped.items())))
        remaining = GaugeMetricFamily("projector_build_remaining",
                                      "Records left to build over every partition, by read model (-1: unknown).",
                                      labels=["table", "version"])
        eta = GaugeMetricFamily("projector_build_eta_seconds", "Estimated seconds until a build has caught up.",
                                labels=["table", "version"])
        for name in sorted(p.builds.builds):
            summary = p.builds.summary(name)
            if summary is None:
                continue
            labels = [name, str(summary["version"])]
            remaining.add_metric(labels, _gauge(summary["remaining"]))
            if summary["eta_seconds"] is not None:
                eta.add_metric(labels, round(summary["eta_seconds"], 1))
        yield remaining
        yield eta

    def _broker(self) -> Iterator[Metric]:
        broker = self.projector.broker
        yield GaugeMetricFamily("projector_broker_reachable",
                                "1 while this worker reaches Kafka, 0 while it cannot (it then serves reads from "
                                "local state).", int(broker.reachable))
        yield GaugeMetricFamily("projector_broker_reachable_changed_timestamp_seconds",
                                "Unix time Kafka last became reachable or unreachable (or the worker started).",
                                broker.since)

    def _control(self) -> Iterator[Metric]:
        control = self.projector.control
        yield GaugeMetricFamily("projector_control_offset",
                                "Offset of the last control record this worker applied (-1: none).", control.offset)
        yield GaugeMetricFamily("projector_control_entries", "Entries in this worker's control table.",
                                len(control.entries))
        yield CounterMetricFamily("projector_control_records_total", "Control records applied or skipped.",
                                  control.records)
        yield CounterMetricFamily("projector_control_gaps_total",
                                  "Offset ranges skipped between control records (compaction, transaction markers, "
                                  "or records not delivered).", control.gaps)
        yield CounterMetricFamily("projector_control_filled_total",
                                  "Control records applied late into a skipped range (delivered late or re-read).",
                                  control.filled)
        yield GaugeMetricFamily("projector_control_missing_offsets",
                                "Offsets of the control topic not yet applied nor known to be empty.",
                                sum(b - a for a, b in control.missing))
        yield _counter("projector_control_invalid_total",
                       "Control records skipped (or settings ignored), by reason.", ["reason"],
                       (([r], n) for r, n in sorted(control.invalid.items())))
        yield GaugeMetricFamily("projector_commands_enabled",
                                "The commands.enabled switch as this worker reads it (1: enabled).",
                                int(control.commands_enabled))
        yield _gauges("projector_control_setting",
                      "Each numeric or true/false control setting the read models declare, as this worker applies it "
                      "(-1: no value).", ["key"],
                      (([key], _gauge(control.setting(key))) for key, setting in sorted(control.settings.items())
                       if key != COMMANDS_ENABLED and setting.type in ("integer", "number", "boolean")))


class _OpenMetricsView:
    """The registry without the families OpenMetrics cannot hold next to another of the same name."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            if family.type == "counter" and f"{family.name}_total" in OPENMETRICS_CLASHES:
                continue
            yield family


class WorkerMetrics:
    """One worker's registry: :class:`ProjectorCollector`, and the process, GC and platform collectors."""

    def __init__(self, projector: "Projector") -> None:
        self.requests = RequestTimes()
        self.collector = ProjectorCollector(projector, self.requests)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def exposition(self, accept: Optional[str] = None) -> tuple[bytes, str]:
        """The metrics in the format ``accept`` asks for, and its content type (Prometheus text 0.0.4 by default)."""
        encoder, content_type = choose_encoder(accept or "")
        if content_type.startswith("application/openmetrics-text"):
            return encoder(_OpenMetricsView(self.registry)), content_type
        return encoder(self.registry), content_type


_WORKERS: "weakref.WeakKeyDictionary[Any, WorkerMetrics]" = weakref.WeakKeyDictionary()


def worker_metrics(projector: "Projector") -> WorkerMetrics:
    """The worker's :class:`WorkerMetrics`, made on first use (the middleware and ``/metrics`` share it)."""
    found = _WORKERS.get(projector)
    if found is None:
        found = _WORKERS[projector] = WorkerMetrics(projector)
    return found


def prometheus_text(projector: "Projector") -> str:
    """The worker's metrics in Prometheus text format 0.0.4."""
    return worker_metrics(projector).exposition()[0].decode()
