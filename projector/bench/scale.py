"""``projector bench-scale``: throughput with 1, 2 and 4 workers, recovery, and what a rebalance costs.

On one topic of demo histories (default 300,000 events, 5,000 accounts, 8
partitions) it measures, each with a fresh app id (its own consumer group and
changelogs):

- **throughput** with 1, 2 and 4 workers folding the whole topic, timed from
  their first record until their lag is 0;
- **recovery**: the 1-worker run's worker restarted with its data dir deleted,
  so it restores every table from the changelogs: time to ready, changelog
  records restored and the rate;
- **kill -9**: the same worker killed and restarted from its data dir, then
  killed again and restarted without it: time to ready. The worker is a
  static member of its group (PROJECTOR_INSTANCE_ID, by default): restarted
  within the session timeout, it takes its partitions back without a
  rebalance. For the comparison, the restart from the data dir is measured
  again without static membership (``PROJECTOR_INSTANCE_ID=none``): the group
  waits out the dead member's session before it rebalances;
- **rebalance pause**: 2 workers fold a fresh copy of the topic, and a 3rd one
  joins halfway; the longest stretch with no record handled by any worker.

The broker must run; the workers (:class:`projector.bench.common.Workers`),
the topic and the report come from :mod:`projector.bench.common`.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Optional

import aiohttp

from projector.bench.common import POLL, BenchError, Workers, kafka_for_run, log, produce, report_head, run_command
from projector.runtime.config import Settings


def _lag(metrics: dict[str, dict[str, float]]) -> Optional[float]:
    lags = [v for m in metrics.values() for k, v in m.items() if k.startswith("projector_consumer_lag{")]
    return sum(lags) if lags else None


async def _fold_all(session: aiohttp.ClientSession, group: Workers, names: list[str], events: int,
                    timeout: float = 1800) -> float:
    """Seconds from the group's first handled record until it has handled every record and has no lag.

    Workers start folding as soon as they get partitions, before their web
    server answers, so the start is the earliest ``projector_first_record_time_seconds``.
    """
    for name in names:
        group.start(name)
    deadline = time.monotonic() + timeout
    while True:
        m = await group.metrics(session, names)
        now = time.time()
        seen = sum(x.get("projector_records_total", 0) for x in m.values())
        lag = _lag(m)
        covered = sum(1 for x in m.values() for k in x if k.startswith("projector_consumer_lag{"))
        firsts = [x["projector_first_record_time_seconds"] for x in m.values()
                  if x.get("projector_first_record_time_seconds")]
        if firsts and seen >= events and lag == 0 and covered == group.partitions:
            await group.ready(session, names)
            return now - min(firsts)
        if time.monotonic() > deadline:
            raise BenchError(f"{group.app_id}: not done in {timeout:.0f} s (records {seen}, lag {lag})")
        await asyncio.sleep(POLL)


async def _run(args: argparse.Namespace, settings: Settings, workdir: Path) -> dict[str, Any]:
    from projector.demo.data import generate_histories

    run = f"sc{uuid.uuid4().hex[:6]}"
    topic = f"{run}-events"
    async with kafka_for_run(settings, run) as kafka:
        groups: list[Workers] = []
        report: dict[str, Any] = {**report_head("projector bench-scale", settings), "events": args.events,
                                  "accounts": args.accounts, "partitions": args.partitions}
        try:
            await kafka.create_topic(topic, args.partitions, 1)
            log(f"producing {args.events} events over {args.accounts} accounts")
            await produce(settings, topic, list(generate_histories(args.accounts, args.events, seed=3)))
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
                throughput = {}
                first: Optional[Workers] = None
                for n in args.workers:
                    group = Workers(settings, topic, args.partitions, workdir, f"{run}-w{n}")
                    groups.append(group)
                    names = [f"w{i}" for i in range(1, n + 1)]
                    log(f"{n} worker(s) fold the topic")
                    seconds = await _fold_all(session, group, names, args.events)
                    throughput[n] = {"seconds": round(seconds, 1), "events_per_second": round(args.events / seconds)}
                    log(f"  {throughput[n]}")
                    if first is None:
                        first = group
                    else:
                        group.stop()
                report["throughput"] = throughput
                assert first is not None

                async def restart(kill: bool, wipe: bool, static: bool = True) -> dict[str, Any]:
                    """Stop (SIGTERM) or kill -9 the 1-worker run's worker, maybe delete its data, start it again.

                    ``static=False``: the worker runs without static group membership, before the kill too.
                    """
                    if not static:  # a dynamic member first: SIGTERM (it leaves the group), start it so
                        first.stop("w1")
                        first.env["PROJECTOR_INSTANCE_ID"] = "none"
                        first.start("w1")
                        await first.ready(session, ["w1"])
                    if kill:
                        first.kill9("w1")
                    else:
                        first.stop("w1")
                    if wipe:
                        shutil.rmtree(first.data_dir("w1"))
                    started = time.monotonic()
                    first.start("w1")
                    ready = await first.ready(session, ["w1"]) - started
                    restored = (await first.metrics(session, ["w1"]))["w1"].get("projector_recovery_restored_total", 0)
                    first.env.pop("PROJECTOR_INSTANCE_ID", None)
                    return {"seconds_to_ready": round(ready, 1), "changelog_records_restored": int(restored),
                            "static_membership": static}

                for key, what, kill, wipe, static in (
                    ("restore_without_local_state", "SIGTERM, restart with the data dir deleted", False, True, True),
                    ("restart_after_kill_9_with_local_state", "kill -9, restart from the same data dir", True, False,
                     True),
                    ("restart_after_kill_9_without_local_state", "kill -9, restart with the data dir deleted", True, True,
                     True),
                    ("restart_after_kill_9_with_local_state_without_static_membership",
                     "kill -9, restart from the same data dir, without static membership (PROJECTOR_INSTANCE_ID=none)",
                     True, False, False),
                ):
                    log(what)
                    report[key] = await restart(kill, wipe, static)
                    log(f"  {report[key]}")
                r = report["restore_without_local_state"]
                r["records_per_second_including_startup"] = (
                    round(r["changelog_records_restored"] / r["seconds_to_ready"]) if r["seconds_to_ready"] else None)
                first.stop()

                log("rebalance pause: 2 workers fold, a 3rd joins halfway")
                group = Workers(settings, topic, args.partitions, workdir, f"{run}-rb")
                groups.append(group)
                for name in ("w1", "w2"):
                    group.start(name)
                await group.ready(session, ["w1", "w2"])
                samples: list[tuple[float, float]] = []
                joined_at: Optional[float] = None
                while True:
                    m = await group.metrics(session, list(group.procs))
                    seen = sum(x.get("projector_records_total", 0) for x in m.values())
                    now = time.monotonic()
                    samples.append((now, seen))
                    if joined_at is None and seen >= args.events / 2:
                        group.start("w3")
                        joined_at = now
                    if joined_at is not None and _lag(m) == 0 and seen >= args.events:
                        break
                    await asyncio.sleep(POLL)
                pause, stall_from = 0.0, None
                for (t0, n0), (t1, n1) in zip(samples, samples[1:]):
                    if t0 < (joined_at or 0):
                        continue
                    if n1 == n0:
                        stall_from = t0 if stall_from is None else stall_from
                        pause = max(pause, t1 - stall_from)
                    else:
                        stall_from = None
                report["rebalance_pause_seconds"] = round(pause, 1)
                log(f"  longest stretch without progress after the 3rd worker joined: {pause:.1f} s")
                group.stop()
            return report
        finally:
            for group in groups:
                group.stop()


def cmd_bench_scale(args: argparse.Namespace) -> None:
    report, out = run_command("projector bench-scale", "scale", args, _run)
    print(f"\n{report['events']} events, {report['accounts']} accounts, {report['partitions']} partitions; report: {out}")
    for n, row in report["throughput"].items():
        print(f"  {n} worker(s): {row['events_per_second']:>7} events/s ({row['seconds']} s from the first record to no lag)")
    r = report["restore_without_local_state"]
    print(f"  restart without local state: ready in {r['seconds_to_ready']} s, "
          f"{r['changelog_records_restored']} changelog records restored")
    k = report["restart_after_kill_9_with_local_state"]
    d = report["restart_after_kill_9_with_local_state_without_static_membership"]
    print(f"  restart after kill -9 with local state: ready in {k['seconds_to_ready']} s "
          f"({d['seconds_to_ready']} s without static membership)")
    k = report["restart_after_kill_9_without_local_state"]
    print(f"  restart after kill -9 without local state: ready in {k['seconds_to_ready']} s, "
          f"{k['changelog_records_restored']} changelog records restored")
    print(f"  rebalance when a 3rd worker joins 2: longest stretch without progress {report['rebalance_pause_seconds']} s")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", default=None, help="bootstrap servers (default $PROJECTOR_BROKER); the broker must run")
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--accounts", type=int, default=5000)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="group sizes to time")
    p.add_argument("--output", default=None)
    p.add_argument("--keep-data", action="store_true")
