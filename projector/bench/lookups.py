"""``projector bench-lookups``: key-lookup latency while a worker folds at full speed.

Two workers share a fresh events topic. Once both are ready, every account
is opened; then a backlog of demo histories for the accounts of worker 1's
partitions goes to the topic, so worker 1 folds at full speed while worker 2
only answers. Meanwhile an open-loop load generator asks worker 1 for
accounts at a fixed rate: keys worker 1 owns (answered locally) and keys it
does not (forwarded to worker 2). A
request's latency runs from the moment it was *scheduled* to its answer, so
a generator that falls behind is charged for it (no coordinated omission).
Then a closed loop measures the request rate worker 1 sustains on local keys.
With ``--long-polls N``, N clients keep long-polls (``min_version`` no row
reaches, ``timeout_ms=30000``) for forwarded keys outstanding on worker 1
during the open loop, each asking again as soon as it is answered: the
lookups' latency under a long-poll flood.

The broker must run; the workers, the topic and the report come from
:mod:`projector.bench.common`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from projector.bench.common import (
    BenchError,
    Workers,
    fetch_metrics,
    kafka_for_run,
    latency_header,
    latency_line,
    latency_summary,
    log,
    produce,
    report_head,
    run_command,
)
from projector.runtime.config import Settings


async def _open_loop(session: aiohttp.ClientSession, base: str, keys: dict[str, list[str]], rate: float,
                     seconds: float) -> dict[str, Any]:
    """``rate`` requests/s for ``seconds``, alternating the key sets; latency from the scheduled time."""
    kinds = list(keys)
    lat: dict[str, list[float]] = {k: [] for k in kinds}
    errors = {k: 0 for k in kinds}
    rng = random.Random(7)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.1
    total = int(rate * seconds)
    tasks = []

    async def one(kind: str, key: str, scheduled: float) -> None:
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            async with session.get(f"{base}/tables/accounts/{key}") as r:
                await r.read()
                ok = r.status in (200, 404)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            ok = False
        if ok:
            lat[kind].append(loop.time() - scheduled)
        else:
            errors[kind] += 1

    for i in range(total):
        kind = kinds[i % len(kinds)]
        tasks.append(asyncio.ensure_future(one(kind, rng.choice(keys[kind]), start + i / rate)))
    await asyncio.gather(*tasks)
    # (A kind whose every request failed, e.g. forwarded lookups starved by a long-poll flood, still reports.)
    return {k: latency_summary(lat[k], errors[k], (seconds * len(lat[k]) / max(1, total) * len(kinds)) or seconds)
            for k in kinds}


async def _flood(base: str, keys: list[str], clients: int, stop: asyncio.Event) -> dict[str, int]:
    """``clients`` long-polls for ``keys`` kept outstanding on ``base`` until ``stop``; their answers by status."""
    answers: dict[str, int] = {}
    rng = random.Random(13)
    timeout = aiohttp.ClientTimeout(total=40)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=clients)) as session:

        async def client() -> None:
            while not stop.is_set():
                url = f"{base}/tables/accounts/{rng.choice(keys)}?min_version=1000000000&timeout_ms=30000"
                try:
                    async with session.get(url) as r:
                        await r.read()
                        status = str(r.status)
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    status = "error"
                answers[status] = answers.get(status, 0) + 1
                if status != "504":
                    await asyncio.sleep(0.1)  # refused: ask again soon (not in a tight loop)

        tasks = [asyncio.ensure_future(client()) for _ in range(clients)]
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return answers


async def _closed_loop(session: aiohttp.ClientSession, base: str, keys: list[str], seconds: float,
                       concurrency: int) -> dict[str, Any]:
    """As many requests as ``concurrency`` clients get answered in ``seconds``."""
    lat: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    rng = random.Random(11)

    async def client() -> None:
        nonlocal errors
        while loop.time() < end:
            started = loop.time()
            try:
                async with session.get(f"{base}/tables/accounts/{rng.choice(keys)}") as r:
                    await r.read()
                    if r.status in (200, 404):
                        lat.append(loop.time() - started)
                    else:
                        errors += 1
            except (aiohttp.ClientError, asyncio.TimeoutError):
                errors += 1

    began = loop.time()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latency_summary(lat, errors, loop.time() - began)


async def _events_per_second(session: aiohttp.ClientSession, base: str) -> float:
    return (await fetch_metrics(session, base)).get("projector_events_per_second", 0.0)


async def _loop_lag_buckets(session: aiohttp.ClientSession, base: str) -> dict[str, int]:
    """The worker's cumulative event loop lag histogram: {upper bound: count}."""
    return {key.split('"')[1]: int(value) for key, value in (await fetch_metrics(session, base)).items()
            if key.startswith("projector_event_loop_lag_seconds_bucket")}


def _lag_quantiles(before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
    """p50 and p99 of the loop lag between two snapshots, as the bucket bound (ms) they fall under."""
    delta = {bound: after[bound] - before.get(bound, 0) for bound in after}
    total = delta.get("+Inf", 0)
    out: dict[str, Any] = {"samples": total}
    for name, q in (("p50_ms_at_most", 0.5), ("p99_ms_at_most", 0.99)):
        bound = next((b for b, n in delta.items() if total and n >= q * total), None)
        out[name] = None if bound is None else ("inf" if bound == "+Inf" else float(bound) * 1000)
    return out


async def _classify(session: aiohttp.ClientSession, base: str, keys: list[str]) -> dict[str, list[str]]:
    """Keys worker 1 answers itself, and keys it forwards (the answer names the owner)."""
    out: dict[str, list[str]] = {"local": [], "forwarded": []}
    for key in keys:
        async with session.get(f"{base}/tables/accounts/{key}") as r:
            await r.read()
            out["forwarded" if "X-Projector-Served-By" in r.headers else "local"].append(key)
    return out


async def _wait_row(session: aiohttp.ClientSession, url: str, key: str) -> None:
    async with session.get(f"{url}/tables/accounts/{key}?min_version=1&timeout_ms=30000") as r:
        if r.status != 200:
            raise BenchError(f"account {key} not applied in 30 s: {await r.text()}")


async def _run(args: argparse.Namespace, settings: Settings, workdir: Path) -> dict[str, Any]:
    from projector.core.partitioning import partition_for
    from projector.demo.data import generate_histories

    tag = f"lk{uuid.uuid4().hex[:8]}"
    topic = f"{tag}-events"
    async with kafka_for_run(settings, tag) as kafka:
        await kafka.create_topic(topic, args.partitions, 1)
        with Workers(settings, topic, args.partitions, workdir, tag) as workers:
            urls = [workers.start(name) for name in ("w1", "w2")]
            histories = list(generate_histories(args.accounts, args.events, seed=1))
            opened = [e for e in histories if e["version"] == 1]
            timeout = aiohttp.ClientTimeout(total=30)
            connector = aiohttp.TCPConnector(limit=256)
            async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
                await workers.ready(session, ["w1", "w2"], timeout=180)
                log(f"opening {len(opened)} accounts")
                await produce(settings, topic, opened)
                last = opened[-1]["aggregate_id"]
                await _wait_row(session, urls[0], last)
                keys = await _classify(session, urls[0], sorted(e["aggregate_id"] for e in opened)[: args.keys])
                log(f"{len(keys['local'])} local and {len(keys['forwarded'])} forwarded keys")
                mine = {partition_for(k.encode(), args.partitions) for k in keys["local"]}
                backlog = [e for e in histories if e["version"] > 1
                           and partition_for(e["aggregate_id"].encode(), args.partitions) in mine]
                log(f"producing a backlog of {len(backlog)} events for worker 1's partitions {sorted(mine)}")
                await produce(settings, topic, backlog)
                backlog_size = len(backlog)
                # The generator must not stall: a million envelopes kept alive cost a
                # full garbage collection of up to a second now and then, and every
                # request scheduled meanwhile would be charged for it.
                del histories, opened, backlog
                gc.collect()
                gc.freeze()
                while await _events_per_second(session, urls[0]) < 100:
                    await asyncio.sleep(0.5)
                fold_rate_before = await _events_per_second(session, urls[0])
                log(f"open loop: {args.rate} requests/s for {args.seconds} s while worker 1 folds")
                lag_before = await _loop_lag_buckets(session, urls[0])
                stop_flood = asyncio.Event()
                flood = None
                if args.long_polls:
                    log(f"{args.long_polls} long-polls kept outstanding on worker 1 (forwarded keys)")
                    flood = asyncio.ensure_future(_flood(urls[0], keys["forwarded"], args.long_polls, stop_flood))
                    await asyncio.sleep(2)  # let them park
                under_load = await _open_loop(session, urls[0], keys, args.rate, args.seconds)
                stop_flood.set()
                long_poll_answers = await flood if flood is not None else {}
                loop_lag = _lag_quantiles(lag_before, await _loop_lag_buckets(session, urls[0]))
                fold_rate_during = await _events_per_second(session, urls[0])
                log("closed loop: the request rate worker 1 sustains on local keys, while folding")
                sustained = await _closed_loop(session, urls[0], keys["local"], args.seconds, args.concurrency)
                fold_rate_after = await _events_per_second(session, urls[0])
                idle_w2 = await _events_per_second(session, urls[1])
            return {
                **report_head("projector bench-lookups", settings),
                "events": args.events, "accounts": args.accounts, "partitions": args.partitions,
                "rate": args.rate, "seconds": args.seconds, "concurrency": args.concurrency,
                "open_loop": under_load,
                "long_polls": args.long_polls, "long_poll_answers": long_poll_answers,
                "sustained_local": sustained,
                "worker1_event_loop_lag_during_open_loop": loop_lag,
                "worker1_events_per_second": [fold_rate_before, fold_rate_during, fold_rate_after],
                "worker2_events_per_second": idle_w2,
                "backlog": backlog_size,
            }


def cmd_bench_lookups(args: argparse.Namespace) -> None:
    report, out = run_command("projector bench-lookups", "lookups", args, _run)
    print(f"\nkey lookups on worker 1 while both workers fold ({report['events']} events, "
          f"{report['partitions']} partitions); report: {out}")
    print(latency_header(24))
    for name, row in [*((f"{k} @ {args.rate}/s", v) for k, v in report["open_loop"].items()),
                      (f"sustained (c={args.concurrency})", report["sustained_local"])]:
        print(latency_line(name, row, 24))
    print(f"worker 1 folding its {report['backlog']}-event backlog (events/s, 10 s window): "
          f"before {report['worker1_events_per_second'][0]:.0f}, "
          f"after the open loop {report['worker1_events_per_second'][1]:.0f}, "
          f"after the closed loop {report['worker1_events_per_second'][2]:.0f}; "
          f"worker 2: {report['worker2_events_per_second']:.0f}")
    if report["long_polls"]:
        print(f"during the open loop, {report['long_polls']} long-polls kept outstanding on worker 1; "
              f"their answers by status: {report['long_poll_answers']}")
    lag = report["worker1_event_loop_lag_during_open_loop"]
    print(f"worker 1's event loop lag during the open loop: p50 <= {lag['p50_ms_at_most']} ms, "
          f"p99 <= {lag['p99_ms_at_most']} ms ({lag['samples']} samples)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", default=None, help="bootstrap servers (default $PROJECTOR_BROKER); the broker must run")
    p.add_argument("--events", type=int, default=1_000_000,
                   help="events of the demo histories; those of worker 1's partitions are its backlog")
    p.add_argument("--accounts", type=int, default=5000)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--keys", type=int, default=2000, help="accounts the lookups pick from")
    p.add_argument("--rate", type=float, default=500.0, help="open-loop requests/s")
    p.add_argument("--seconds", type=float, default=15.0, help="length of each phase")
    p.add_argument("--concurrency", type=int, default=16, help="clients of the closed loop")
    p.add_argument("--long-polls", type=int, default=0,
                   help="long-polls kept outstanding on worker 1 (forwarded keys) during the open loop")
    p.add_argument("--output", default=None)
    p.add_argument("--keep-data", action="store_true")
