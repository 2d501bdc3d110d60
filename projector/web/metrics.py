"""``GET /metrics``: the worker's counters in Prometheus text format."""

from __future__ import annotations

import logging
from typing import Any

from projector.core.control import COMMANDS_ENABLED
from projector.core.metrics import BATCH_BUCKETS, LAG_BUCKETS, LAG_PROBE_INTERVAL, Metrics

log = logging.getLogger(__name__)


def _gauge(value: Any) -> str:
    return "-1" if value is None else str(int(value) if isinstance(value, bool) else value)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _histogram(name: str, buckets: list, total: float, bounds: tuple = BATCH_BUCKETS) -> list[str]:
    out, running = [], 0
    for bound, count in zip([*bounds, "+Inf"], buckets):
        running += count
        out.append(f'{name}_bucket{{le="{bound}"}} {running}')
    out += [f"{name}_sum {total:.6f}", f"{name}_count {running}"]
    return out


def _recovery_lines(projector) -> list[str]:
    """Changelog recovery progress: records still to restore per changelog partition."""
    recovery = projector.app.tables.recovery
    lines = [
        "# HELP projector_recovery_in_progress 1 while this worker restores tables from their changelogs.",
        "# TYPE projector_recovery_in_progress gauge",
        f"projector_recovery_in_progress {int(bool(recovery.in_recovery))}",
        "# HELP projector_recovery_remaining Changelog records still to restore, per changelog partition.",
        "# TYPE projector_recovery_remaining gauge",
    ]
    try:
        remaining = {**recovery.standby_remaining(), **recovery.active_remaining()}
    except Exception as exc:  # offsets not built yet
        log.debug("recovery offsets not known yet: %r", exc)
        remaining = {}
    for tp, n in sorted(remaining.items()):
        lines.append(f'projector_recovery_remaining{{topic="{_escape(tp.topic)}",partition="{tp.partition}"}} {max(0, n)}')
    progress = getattr(projector, "recovery_progress", None)
    if progress is not None:
        lines += [
            "# HELP projector_recovery_restored_total Changelog records restored into RocksDB (actives and standbys).",
            "# TYPE projector_recovery_restored_total counter",
            f"projector_recovery_restored_total {progress.restored_total}",
            "# HELP projector_recovery_records_per_second Changelog records restored per second, last sample.",
            "# TYPE projector_recovery_records_per_second gauge",
            f"projector_recovery_records_per_second {progress.rate:.1f}",
            "# HELP projector_recovery_eta_seconds Estimated seconds until an active partition is restored.",
            "# TYPE projector_recovery_eta_seconds gauge",
        ]
        for p in progress.partitions:
            if p.kind == "active" and p.eta_seconds is not None:
                lines.append(f'projector_recovery_eta_seconds{{topic="{_escape(p.topic)}",partition="{p.partition}"}} '
                             f"{p.eta_seconds:.1f}")
    return lines


def _build_lines(projector) -> list[str]:
    """New read-model versions being built from history (CONTRACT §6): progress over all partitions."""
    m: Metrics = projector.metrics
    lines = [
        "# HELP projector_build_records_total History records this worker's builders read, by table being built.",
        "# TYPE projector_build_records_total counter",
        *(f'projector_build_records_total{{table="{_escape(t)}"}} {n}' for t, n in sorted(m.build_records.items())),
        "# HELP projector_build_skipped_total History records a build skipped (undecodable, or its fold raised).",
        "# TYPE projector_build_skipped_total counter",
        *(f'projector_build_skipped_total{{table="{_escape(t)}"}} {n}' for t, n in sorted(m.build_skipped.items())),
        "# HELP projector_build_remaining Records left to build over every partition, by read model (-1: unknown).",
        "# TYPE projector_build_remaining gauge",
    ]
    etas = []
    for name in sorted(projector.builds.builds):
        summary = projector.builds.summary(name)
        if summary is None:
            continue
        remaining = summary["remaining"]
        lines.append(f'projector_build_remaining{{table="{_escape(name)}",version="{summary["version"]}"}} '
                     f'{-1 if remaining is None else remaining}')
        if summary["eta_seconds"] is not None:
            etas.append(f'projector_build_eta_seconds{{table="{_escape(name)}",version="{summary["version"]}"}} '
                        f'{summary["eta_seconds"]:.1f}')
    lines += ["# HELP projector_build_eta_seconds Estimated seconds until a build has caught up.",
              "# TYPE projector_build_eta_seconds gauge", *etas]
    return lines


def prometheus_text(projector) -> str:
    """The worker's metrics in Prometheus text format."""
    m: Metrics = projector.metrics
    lines = [
        "# HELP projector_events_applied_total Events applied to each read model.",
        "# TYPE projector_events_applied_total counter",
    ]
    for model in projector.catalog.all:
        lines.append(f'projector_events_applied_total{{table="{_escape(model.name)}"}} {m.events_applied[model.name]}')
    lines += [
        "# HELP projector_duplicates_total Events skipped as duplicates (at or below the applied version).",
        "# TYPE projector_duplicates_total counter",
        f"projector_duplicates_total {m.duplicates}",
        "# HELP projector_command_echoes_total Duplicates that are events the command side appended and "
        "applied at once, read back from the events topic.",
        "# TYPE projector_command_echoes_total counter",
        f"projector_command_echoes_total {m.command_echoes}",
        "# HELP projector_commands_total Commands this worker decided as the writer of their partition, by outcome.",
        "# TYPE projector_commands_total counter",
        *(f'projector_commands_total{{outcome="{_escape(k)}"}} {v}' for k, v in sorted(m.commands.items())),
        "# HELP projector_deadletter_total Records sent to the dead-letter topic, by reason.",
        "# TYPE projector_deadletter_total counter",
    ]
    for reason, count in sorted(m.deadletters.items()):
        lines.append(f'projector_deadletter_total{{reason="{_escape(reason)}"}} {count}')
    lines += [
        "# HELP projector_records_total Records of the events topic handled by this worker.",
        "# TYPE projector_records_total counter",
        f"projector_records_total {m.records_seen}",
        "# HELP projector_parked_total Aggregates parked by a version gap.",
        "# TYPE projector_parked_total counter",
        f"projector_parked_total {m.parked_aggregates}",
        "# HELP projector_fold_batches_total Batches folded.",
        "# TYPE projector_fold_batches_total counter",
        f"projector_fold_batches_total {m.batches}",
        "# HELP projector_fold_batch_seconds_total Time spent sending and writing fold batches.",
        "# TYPE projector_fold_batch_seconds_total counter",
        f"projector_fold_batch_seconds_total {m.batch_seconds_total:.6f}",
        "# HELP projector_fold_batch_seconds Fold batch latency: Kafka sends until acked, then RocksDB.",
        "# TYPE projector_fold_batch_seconds histogram",
        *_histogram("projector_fold_batch_seconds", m.batch_buckets, m.batch_seconds_total),
        "# HELP projector_first_record_time_seconds Unix time of the first events-topic record this worker "
        "handled (0: none yet).",
        "# TYPE projector_first_record_time_seconds gauge",
        f"projector_first_record_time_seconds {m.first_record_time:.3f}",
        "# HELP projector_event_loop_lag_seconds How late the worker's event loop woke a task that slept "
        f"{LAG_PROBE_INTERVAL * 1000:g} ms: the wait a request sees before the worker reads it.",
        "# TYPE projector_event_loop_lag_seconds histogram",
        *_histogram("projector_event_loop_lag_seconds", m.lag_buckets, m.lag_seconds_total, LAG_BUCKETS),
        "# HELP projector_events_per_second Records of the events topic handled per second, over the last 10 s.",
        "# TYPE projector_events_per_second gauge",
        f"projector_events_per_second {m.events_per_second():.1f}",
        "# HELP projector_parked_requests Requests waiting for a row version (min_version).",
        "# TYPE projector_parked_requests gauge",
        f"projector_parked_requests {projector.rows.parked}",
        "# HELP projector_command_answers_dropped_total Command answers not sent: their reply_to is no worker of "
        "this group.",
        "# TYPE projector_command_answers_dropped_total counter",
        f"projector_command_answers_dropped_total {int(getattr(projector.commands, 'dropped_answers', 0) or 0)}",
        "# HELP projector_batch_phase_seconds_total Time spent per phase of a batch.",
        "# TYPE projector_batch_phase_seconds_total counter",
        *(f'projector_batch_phase_seconds_total{{phase="{p}"}} {v:.6f}' for p, v in sorted(m.phase_seconds.items())),
        "# HELP projector_consumer_lag Records of each assigned partition not yet read.",
        "# TYPE projector_consumer_lag gauge",
    ]
    for topic, partition, lag in projector.consumer_lag():
        lines.append(f'projector_consumer_lag{{topic="{_escape(topic)}",partition="{partition}"}} {lag}')
    lines += _recovery_lines(projector)
    lines += _build_lines(projector)
    broker = projector.broker
    lines += [
        "# HELP projector_broker_reachable 1 while this worker reaches Kafka, 0 while it cannot (it then serves "
        "reads from local state).",
        "# TYPE projector_broker_reachable gauge",
        f"projector_broker_reachable {int(broker.reachable)}",
        "# HELP projector_broker_reachable_changed_timestamp_seconds Unix time Kafka last became reachable or "
        "unreachable (or the worker started).",
        "# TYPE projector_broker_reachable_changed_timestamp_seconds gauge",
        f"projector_broker_reachable_changed_timestamp_seconds {broker.since:.3f}",
    ]
    control = projector.control
    lines += [
        "# HELP projector_control_offset Offset of the last control record this worker applied (-1: none).",
        "# TYPE projector_control_offset gauge",
        f"projector_control_offset {control.offset}",
        "# HELP projector_control_entries Entries in this worker's control table.",
        "# TYPE projector_control_entries gauge",
        f"projector_control_entries {len(control.entries)}",
        "# HELP projector_control_records_total Control records applied or skipped.",
        "# TYPE projector_control_records_total counter",
        f"projector_control_records_total {control.records}",
        "# HELP projector_control_gaps_total Offset ranges skipped between control records (compaction, transaction markers, or records not delivered).",
        "# TYPE projector_control_gaps_total counter",
        f"projector_control_gaps_total {control.gaps}",
        "# HELP projector_control_filled_total Control records applied late into a skipped range (delivered late or re-read).",
        "# TYPE projector_control_filled_total counter",
        f"projector_control_filled_total {control.filled}",
        "# HELP projector_control_missing_offsets Offsets of the control topic not yet applied nor known to be empty.",
        "# TYPE projector_control_missing_offsets gauge",
        f"projector_control_missing_offsets {sum(b - a for a, b in control.missing)}",
        "# HELP projector_control_invalid_total Control records skipped (or settings ignored), by reason.",
        "# TYPE projector_control_invalid_total counter",
        *(f'projector_control_invalid_total{{reason="{_escape(r)}"}} {n}' for r, n in sorted(control.invalid.items())),
        "# HELP projector_commands_enabled The commands.enabled switch as this worker reads it (1: enabled).",
        "# TYPE projector_commands_enabled gauge",
        f"projector_commands_enabled {int(control.commands_enabled)}",
        "# HELP projector_control_setting Each numeric or true/false control setting the read models declare, "
        "as this worker applies it (-1: no value).",
        "# TYPE projector_control_setting gauge",
        *(f'projector_control_setting{{key="{_escape(key)}"}} {_gauge(control.setting(key))}'
          for key, setting in sorted(control.settings.items())
          if key != COMMANDS_ENABLED and setting.type in ("integer", "number", "boolean")),
    ]
    return "\n".join(lines) + "\n"
