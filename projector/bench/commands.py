"""``projector bench-commands``: the command round trip, and how soon its result can be read.

Two workers share a fresh events topic. Accounts are opened, then clients
send deposits and withdrawals through random workers. For each command it
measures:

- the round trip: from ``POST /commands`` to its 200 (the command goes to the
  command topic, the writer of its partition decides it, appends its events,
  records them, and the answer comes back);
- the visibility: from that 200 until ``GET /tables/accounts/{id}?min_version=<version>``
  on a random worker (the other one half the time, so forwarded) shows the
  new version.

First one client, one command at a time (latency without queueing), then
several clients at once (the rate the command side sustains).

The broker must run; the workers, the topic and the report come from
:mod:`projector.bench.common`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from projector.bench.common import (
    BenchError,
    Workers,
    kafka_for_run,
    latency_header,
    latency_line,
    latency_summary,
    log,
    report_head,
    run_command,
)
from projector.runtime.config import Settings


async def _round(session: aiohttp.ClientSession, urls: list[str], rng: random.Random, accounts: list[str],
                 n: int, tag: str, out: dict[str, list[float]], errors: dict[str, int]) -> None:
    aid = rng.choice(accounts)
    kind = "Deposit" if rng.random() < 0.6 else "Withdraw"
    command = {"command_id": f"{tag}-{n}", "aggregate_type": "account", "aggregate_id": aid, "type": kind,
               "data": {"amount": rng.randint(1, 50)}}
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with session.post(f"{rng.choice(urls)}/commands", data=orjson.dumps(command)) as r:
            body = orjson.loads(await r.read())
            status = r.status
    except (aiohttp.ClientError, asyncio.TimeoutError):
        errors["command"] += 1
        return
    answered = loop.time()
    if status == 422:  # insufficient funds: a decided command all the same, with nothing to read
        out["command"].append(answered - started)
        return
    if status != 200:
        errors["command"] += 1
        return
    out["command"].append(answered - started)
    try:
        url = f"{rng.choice(urls)}/tables/accounts/{aid}?min_version={body['version']}&timeout_ms=10000"
        async with session.get(url) as r:
            await r.read()
            ok = r.status == 200
    except (aiohttp.ClientError, asyncio.TimeoutError):
        ok = False
    if ok:
        out["visible"].append(loop.time() - answered)
    else:
        errors["visible"] += 1


async def _phase(urls: list[str], accounts: list[str], clients: int, count: int, seconds: float,
                 tag: str) -> dict[str, Any]:
    out: dict[str, list[float]] = {"command": [], "visible": []}
    errors = {"command": 0, "visible": 0}
    counter = iter(range(count))
    loop = asyncio.get_running_loop()
    began = loop.time()
    end = began + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def client(i: int) -> None:
            rng = random.Random(i + 17)
            for n in counter:
                if loop.time() > end:
                    return
                await _round(session, urls, rng, accounts, n, tag, out, errors)

        await asyncio.gather(*(client(i) for i in range(clients)))
    took = loop.time() - began
    return {"clients": clients, "command": latency_summary(out["command"], errors["command"], took),
            "visible": latency_summary(out["visible"], errors["visible"], took)}


async def _run(args: argparse.Namespace, settings: Settings, workdir: Path) -> dict[str, Any]:
    tag = f"cm{uuid.uuid4().hex[:8]}"
    topic = f"{tag}-events"
    async with kafka_for_run(settings, tag) as kafka:
        await kafka.create_topic(topic, args.partitions, 1)
        with Workers(settings, topic, args.partitions, workdir, tag) as workers:
            urls = [workers.start(name) for name in ("w1", "w2")]
            accounts = [f"bench-{i:04d}" for i in range(args.accounts)]
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
                await workers.ready(session, ["w1", "w2"], timeout=180)
                log(f"opening {len(accounts)} accounts through the command side")
                for aid in accounts:
                    body = {"command_id": f"open-{aid}", "aggregate_type": "account", "aggregate_id": aid,
                            "type": "OpenAccount",
                            "data": {"owner": "bench", "currency": "EUR", "initial_deposit": 1000}}
                    for _ in range(100):  # a writer answers not_ready until it has caught up; the worker retries
                        async with session.post(f"{urls[0]}/commands", data=orjson.dumps(body)) as r:
                            if r.status == 200:
                                break
                        await asyncio.sleep(0.2)
                    else:
                        raise BenchError(f"could not open {aid}")
            log(f"one client, one command at a time: {args.commands} commands")
            single = await _phase(urls, accounts, 1, args.commands, args.seconds * 4, f"{tag}-s")
            log(f"{args.clients} clients for {args.seconds} s")
            many = await _phase(urls, accounts, args.clients, 10**9, args.seconds, f"{tag}-m")
            return {
                **report_head("projector bench-commands", settings),
                "partitions": args.partitions, "accounts": args.accounts,
                "one_client": single,
                "concurrent": many,
            }


def cmd_bench_commands(args: argparse.Namespace) -> None:
    report, out = run_command("projector bench-commands", "commands", args, _run)
    print(f"\ncommand round trip and visibility, two workers, {report['partitions']} partitions; report: {out}")
    print(latency_header(34))
    for phase in ("one_client", "concurrent"):
        r = report[phase]
        for what, label in (("command", "POST /commands to 200"), ("visible", "200 to row at that version")):
            print(latency_line(f"{label} (c={r['clients']})", r[what], 34))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", default=None, help="bootstrap servers (default $PROJECTOR_BROKER); the broker must run")
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--accounts", type=int, default=200)
    p.add_argument("--commands", type=int, default=1000, help="commands of the one-client phase")
    p.add_argument("--clients", type=int, default=16, help="clients of the concurrent phase")
    p.add_argument("--seconds", type=float, default=15.0, help="length of the concurrent phase")
    p.add_argument("--output", default=None)
    p.add_argument("--keep-data", action="store_true")
