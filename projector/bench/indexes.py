"""``projector bench-index``: latency of secondary-index lookups (``GET /tables/{table}/index/{index}/{value}``).

Two workers share a fresh events topic. Every account is opened (``--accounts``,
spread over ``--owners`` owners, so an owner has a few accounts on partitions of
both workers) and a tenth of them closed. Once both workers have applied them,
an open-loop load generator asks worker 1, at a fixed rate, for:

- ``owner (w1's partitions)``: one owner's accounts on the partitions worker 1
  owns, through the internal route one worker asks another (the local scan alone);
- ``owner via w1`` and ``owner via w2``: one owner's accounts, through the public
  route, which asks the other worker for its partitions (forwarded);
- ``status=closed page``: the first page (``--page`` rows) of the closed accounts;
- ``key lookup via w1``: one account by key (local or forwarded), for comparison.

A request's latency runs from the moment it was *scheduled* to its answer (no
coordinated omission); each kind runs ``--warmup`` seconds unmeasured first.
The broker must run; the workers, the topic and the
report come from :mod:`projector.bench.common`.
"""

from __future__ import annotations

import argparse
import asyncio
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


def _envelope(aid: str, version: int, type_: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"{aid}/{version}", "aggregate_id": aid, "aggregate_type": "account", "type": type_,
            "version": version, "data": data}


async def _open_loop(session: aiohttp.ClientSession, urls: list[str], rate: float, seconds: float,
                     seed: int) -> dict[str, Any]:
    """``rate`` requests/s for ``seconds``, each to a random one of ``urls``; latency from the scheduled time."""
    lat: list[float] = []
    errors = 0
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.1
    total = int(rate * seconds)

    async def one(url: str, scheduled: float) -> None:
        nonlocal errors
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            async with session.get(url) as r:
                await r.read()
                ok = r.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            ok = False
        if ok:
            lat.append(loop.time() - scheduled)
        else:
            errors += 1

    await asyncio.gather(*(one(rng.choice(urls), start + i / rate) for i in range(total)))
    return latency_summary(lat, errors, seconds)


async def _applied(session: aiohttp.ClientSession, urls: list[str]) -> float:
    total = 0.0
    for url in urls:
        total += (await fetch_metrics(session, url)).get('projector_events_applied_total{table="accounts"}', 0.0)
    return total


async def _get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as r:
        return r.status, await r.json(content_type=None)


async def _run(args: argparse.Namespace, settings: Settings, workdir: Path) -> dict[str, Any]:
    from projector.core.partitioning import partition_for

    tag = f"ix{uuid.uuid4().hex[:8]}"
    topic = f"{tag}-events"
    owners = [f"owner-{i:05d}" for i in range(args.owners)]
    accounts = {f"acc-{i:07d}": owners[i % len(owners)] for i in range(args.accounts)}
    closed = sorted(accounts)[::10]
    async with kafka_for_run(settings, tag) as kafka:
        await kafka.create_topic(topic, args.partitions, 1)
        with Workers(settings, topic, args.partitions, workdir, tag) as workers:
            urls = [workers.start(name) for name in ("w1", "w2")]
            timeout = aiohttp.ClientTimeout(total=30)
            async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=256)) as session:
                await workers.ready(session, ["w1", "w2"], timeout=180)
                log(f"opening {len(accounts)} accounts of {len(owners)} owners, closing {len(closed)}")
                events = [_envelope(aid, 1, "AccountOpened", {"owner": owner, "currency": "EUR"})
                          for aid, owner in accounts.items()]
                events += [_envelope(aid, 2, "AccountClosed", {}) for aid in closed]
                await produce(settings, topic, events)
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 120
                while await _applied(session, urls) < len(events):
                    if loop.time() > deadline:
                        raise BenchError(f"the {len(events)} events were not applied in 120 s")
                    await asyncio.sleep(0.5)
                # w1's partitions: the ones its internal route answers (409 not_owner for the others).
                mine = []
                for p in range(args.partitions):
                    status, _ = await _get_json(session, f"{urls[0]}/internal/index/accounts/owner?partitions={p}"
                                                          f"&value={owners[0]}")
                    if status == 200:
                        mine.append(p)
                if not 0 < len(mine) < args.partitions:
                    raise BenchError(f"worker 1 owns partitions {mine} of {args.partitions}: not a split of two")
                # Check the answers before timing them.
                for owner in owners[:20]:
                    want = sorted(a for a, o in accounts.items() if o == owner)
                    for url in urls:
                        while True:
                            status, body = await _get_json(session, f"{url}/tables/accounts/index/owner/{owner}")
                            got = [r["key"] for r in body.get("rows", [])] if status == 200 else body
                            if got == want:
                                break
                            if loop.time() > deadline:
                                raise BenchError(f"{url}: owner {owner}: expected {want}, got {got}")
                            log(f"{url}: owner {owner}: expected {want}, got {got}; asking again")
                            await asyncio.sleep(1)
                sample = owners[: args.sample]
                partitions = ",".join(map(str, mine))
                kinds = {
                    "owner (w1's partitions)": [f"{urls[0]}/internal/index/accounts/owner?partitions={partitions}"
                                                f"&value={o}" for o in sample],
                    "owner via w1": [f"{urls[0]}/tables/accounts/index/owner/{o}" for o in sample],
                    "owner via w2": [f"{urls[1]}/tables/accounts/index/owner/{o}" for o in sample],
                    f"status=closed page of {args.page}": [
                        f"{urls[0]}/tables/accounts/index/status/closed?limit={args.page}"],
                    "key lookup via w1": [f"{urls[0]}/tables/accounts/{a}" for a in sorted(accounts)[: args.sample]],
                }
                results = {}
                for n, (name, kind_urls) in enumerate(kinds.items()):
                    log(f"open loop: {name}, {args.rate} requests/s for {args.seconds} s (after {args.warmup} s)")
                    await _open_loop(session, kind_urls, args.rate, args.warmup, seed=100 + n)
                    results[name] = await _open_loop(session, kind_urls, args.rate, args.seconds, seed=n)
            per_owner = args.accounts / args.owners
            return {
                **report_head("projector bench-index", settings),
                "accounts": args.accounts, "owners": args.owners, "accounts_per_owner": per_owner,
                "closed": len(closed), "partitions": args.partitions, "worker1_partitions": mine,
                "rate": args.rate, "seconds": args.seconds, "warmup": args.warmup, "page": args.page,
                "partition_of_first_owner_accounts": sorted(
                    {partition_for(a.encode(), args.partitions) for a, o in accounts.items() if o == owners[0]}),
                "results": results,
            }


def cmd_bench_index(args: argparse.Namespace) -> None:
    report, out = run_command("projector bench-index", "index", args, _run)
    print(f"\nindex lookups on two workers ({report['accounts']} accounts, {report['owners']} owners, "
          f"{report['partitions']} partitions, worker 1 owns {report['worker1_partitions']}); report: {out}")
    width = max(len(name) for name in report["results"])
    print(latency_header(width))
    for name, row in report["results"].items():
        print(latency_line(name, row, width))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", default=None, help="bootstrap servers (default $PROJECTOR_BROKER); the broker must run")
    p.add_argument("--accounts", type=int, default=10_000)
    p.add_argument("--owners", type=int, default=2_000, help="owners the accounts are spread over, round robin")
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--sample", type=int, default=500, help="owners (and accounts) the lookups pick from")
    p.add_argument("--page", type=int, default=100, help="rows of the status=closed page")
    p.add_argument("--rate", type=float, default=100.0, help="open-loop requests/s of each kind")
    p.add_argument("--seconds", type=float, default=15.0, help="length of each kind's open loop")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of each kind's load before it is measured")
    p.add_argument("--output", default=None)
    p.add_argument("--keep-data", action="store_true")
