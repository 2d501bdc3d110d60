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
  killed again and restarted without it: time to ready;
- **rebalance pause**: 2 workers fold a fresh copy of the topic, and a 3rd one
  joins halfway; the longest stretch with no record handled by any worker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Optional

import aiohttp

from projector.bench.compare import BenchError, Kafka, free_port, log, machine_info, stop_process
from projector.bench.lookups import _produce
from projector.runtime.config import Settings

POLL = 0.2


class Group:
    """Worker processes of one app id on the bench topic."""

    def __init__(self, settings: Settings, topic: str, partitions: int, workdir: Path, tag: str) -> None:
        self.settings, self.topic, self.partitions, self.workdir, self.tag = settings, topic, partitions, workdir, tag
        self.procs: dict[str, subprocess.Popen] = {}
        self.urls: dict[str, str] = {}

    def start(self, name: str) -> None:
        port = int(self.urls[name].rsplit(":", 1)[1]) if name in self.urls else free_port()
        env = dict(os.environ, PROJECTOR_BROKER=self.settings.broker, PROJECTOR_APP_ID=self.tag,
                   PROJECTOR_EVENTS_TOPIC=self.topic, PROJECTOR_CONTROL_TOPIC=f"{self.tag}-control",
                   PROJECTOR_DATA_DIR=str(self.workdir / self.tag / name), PROJECTOR_WEB_PORT=str(port),
                   PROJECTOR_WEB_HOST="127.0.0.1", PROJECTOR_PARTITIONS=str(self.partitions))
        env.pop("PROJECTOR_API_TOKEN", None)
        log_file = open(self.workdir / f"{self.tag}-{name}.log", "ab")
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "projector", "worker"], env=env,
                                            stdout=log_file, stderr=subprocess.STDOUT)
        self.urls[name] = f"http://127.0.0.1:{port}"

    def kill9(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop(self, name: Optional[str] = None) -> None:
        for n in ([name] if name else list(self.procs)):
            stop_process(self.procs[n])

    async def ready(self, session: aiohttp.ClientSession, names: list[str], timeout: float = 600) -> float:
        """Wait until every named worker answers /readyz with 200; returns when that happened."""
        deadline = time.monotonic() + timeout
        for name in names:
            while True:
                if self.procs[name].poll() is not None:
                    raise BenchError(f"{self.tag}/{name} exited; see {self.workdir}/{self.tag}-{name}.log")
                try:
                    async with session.get(f"{self.urls[name]}/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise BenchError(f"{self.tag}/{name} not ready in {timeout:.0f} s")
                await asyncio.sleep(POLL)
        return time.monotonic()

    async def metrics(self, session: aiohttp.ClientSession, names: list[str]) -> dict[str, dict[str, float]]:
        out = {}
        for name in names:
            values: dict[str, float] = {}
            try:
                async with session.get(f"{self.urls[name]}/metrics") as r:
                    for line in (await r.text()).splitlines():
                        if line and not line.startswith("#"):
                            key, _, value = line.rpartition(" ")
                            values[key] = float(value)
            except aiohttp.ClientError:
                pass
            out[name] = values
        return out


def _lag(metrics: dict[str, dict[str, float]]) -> Optional[float]:
    lags = [v for m in metrics.values() for k, v in m.items() if k.startswith("projector_consumer_lag{")]
    return sum(lags) if lags else None


async def _fold_all(session: aiohttp.ClientSession, group: Group, names: list[str], events: int,
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
            raise BenchError(f"{group.tag}: not done in {timeout:.0f} s (records {seen}, lag {lag})")
        await asyncio.sleep(POLL)


async def _run(args: argparse.Namespace, settings: Settings, workdir: Path) -> dict[str, Any]:
    from projector.demo.data import generate_histories

    run = f"sc{uuid.uuid4().hex[:6]}"
    topic = f"{run}-events"
    kafka = Kafka(settings)
    await kafka.start()
    groups: list[Group] = []
    report: dict[str, Any] = {"tool": "projector bench-scale", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                              "machine": machine_info(), "broker": settings.broker, "events": args.events,
                              "accounts": args.accounts, "partitions": args.partitions}
    try:
        await kafka.create_topic(topic, args.partitions, 1)
        log(f"producing {args.events} events over {args.accounts} accounts")
        await _produce(settings, topic, list(generate_histories(args.accounts, args.events, seed=3)))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            throughput = {}
            first: Optional[Group] = None
            for n in args.workers:
                group = Group(settings, topic, args.partitions, workdir, f"{run}-w{n}")
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

            async def restart(kill: bool, wipe: bool) -> dict[str, Any]:
                """Stop (SIGTERM) or kill -9 the 1-worker run's worker, maybe delete its data, start it again."""
                if kill:
                    first.kill9("w1")
                else:
                    first.stop("w1")
                if wipe:
                    shutil.rmtree(workdir / first.tag / "w1")
                started = time.monotonic()
                first.start("w1")
                ready = await first.ready(session, ["w1"]) - started
                restored = (await first.metrics(session, ["w1"]))["w1"].get("projector_recovery_restored_total", 0)
                return {"seconds_to_ready": round(ready, 1), "changelog_records_restored": int(restored)}

            for key, what, kill, wipe in (
                ("restore_without_local_state", "SIGTERM, restart with the data dir deleted", False, True),
                ("restart_after_kill_9_with_local_state", "kill -9, restart from the same data dir", True, False),
                ("restart_after_kill_9_without_local_state", "kill -9, restart with the data dir deleted", True, True),
            ):
                log(what)
                report[key] = await restart(kill, wipe)
                log(f"  {report[key]}")
            r = report["restore_without_local_state"]
            r["records_per_second_including_startup"] = (
                round(r["changelog_records_restored"] / r["seconds_to_ready"]) if r["seconds_to_ready"] else None)
            first.stop()

            log("rebalance pause: 2 workers fold, a 3rd joins halfway")
            group = Group(settings, topic, args.partitions, workdir, f"{run}-rb")
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
        try:
            await kafka.delete_topics([n for n in await kafka.list_topics() if n.startswith(run)])
        finally:
            await kafka.close()


def cmd_bench_scale(args: argparse.Namespace) -> None:
    settings = Settings.from_env({**os.environ, **({"PROJECTOR_BROKER": args.broker} if args.broker else {})})
    workdir = Path(tempfile.mkdtemp(prefix="projector-scale-"))
    try:
        report = asyncio.run(_run(args, settings, workdir))
    except BenchError as exc:
        sys.exit(f"projector bench-scale: {exc} (logs in {workdir})")
    if not args.keep_data:
        shutil.rmtree(workdir, ignore_errors=True)
    out = Path(args.output or f"bench-results/scale-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\n{report['events']} events, {report['accounts']} accounts, {report['partitions']} partitions; report: {out}")
    for n, row in report["throughput"].items():
        print(f"  {n} worker(s): {row['events_per_second']:>7} events/s ({row['seconds']} s from the first record to no lag)")
    r = report["restore_without_local_state"]
    print(f"  restart without local state: ready in {r['seconds_to_ready']} s, "
          f"{r['changelog_records_restored']} changelog records restored")
    k = report["restart_after_kill_9_with_local_state"]
    print(f"  restart after kill -9 with local state: ready in {k['seconds_to_ready']} s")
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
