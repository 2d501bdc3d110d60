"""``projector bench-build``: the live fold's throughput while a new read-model version is built beside it.

A raised ``VERSION`` (CONTRACT §6) makes a restarted worker build the new
version from the events topic's first record, in the fetch loop's rounds after
each round of the live fold (:mod:`projector.runtime.builds`: at most a quarter
of the loop while the live fold has work). This bench measures what that costs
the live fold. One worker, one fresh events topic (default 8 partitions):

1. **history**: ``--events`` demo events (default 300,000 over 5,000 accounts)
   are produced; two app ids (A and B, each its own consumer group and
   changelogs) each fold them with the repo's ``tables/`` until no lag, and
   their worker is stopped (SIGTERM);
2. **backlog**: ``--backlog`` more events (default 200,000) are produced while
   both are down: deposits to the accounts still open, each continuing its
   account's versions (:func:`backlog_events`);
3. **run A**: A's worker is started again with the same tables; the live
   fold's throughput on the backlog is timed from its first record until no lag;
4. **run B**: B's worker is started again with a tables folder whose
   ``accounts.py`` has ``VERSION = 2`` and a fold that adds a field
   (:func:`raise_version`), so it builds ``accounts-v2`` from the topic's
   first record while it folds the backlog; timed the same way, plus the
   build's records/s, when it had caught up and when ``GET /tables`` said
   version 2.

Runs A and B start from the same point, one after the other; their ratio is
what the build costs the live fold. The broker must run, or is started when
the default one (127.0.0.1:9092) does not answer (and stopped at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import aiohttp

from projector.bench.common import (
    POLL,
    BenchError,
    Workers,
    ensure_broker,
    kafka_for_run,
    log,
    produce,
    report_head,
    run_command,
    stop_broker,
)
from projector.runtime.config import Settings

#: The read model whose version the bench raises.
TABLE = "accounts"
#: Appended to the read model's module: version 2 of its fold, which adds a field.
VERSION_SOURCE = '''

# --- appended by projector bench-build: version {version} of the fold adds a field ---
VERSION = {version}
_fold_before_v{version} = fold


def fold(state, event):
    return {{**_fold_before_v{version}(state, event), "last_event": event.type}}
'''


# --- the workload (pure) -------------------------------------------------------------


def account_ends(events: Iterable[dict[str, Any]]) -> dict[str, tuple[int, bool]]:
    """Each aggregate's last version and whether it was closed, after ``events`` (in any order)."""
    ends: dict[str, tuple[int, bool]] = {}
    for e in events:
        version, closed = ends.get(e["aggregate_id"], (0, False))
        if e["version"] > version:
            version = e["version"]
        ends[e["aggregate_id"]] = (version, closed or e["type"] == "AccountClosed")
    return ends


def backlog_events(ends: dict[str, tuple[int, bool]], count: int, seed: int = 11) -> Iterator[dict[str, Any]]:
    """``count`` ``MoneyDeposited`` envelopes over the open accounts of ``ends``, interleaved at random.

    Each account's deposits continue its versions (last version + 1, + 2, …);
    a closed account gets none. The same arguments give the same events.
    """
    open_ids = sorted(aid for aid, (_, closed) in ends.items() if not closed)
    if count > 0 and not open_ids:
        raise ValueError("no open account to deposit to")
    rng = random.Random(seed)
    versions = {aid: ends[aid][0] for aid in open_ids}
    for _ in range(count):
        aid = rng.choice(open_ids)
        versions[aid] += 1
        version = versions[aid]
        yield {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"projector-bench-build/{seed}/{aid}/{version}")),
            "aggregate_id": aid,
            "aggregate_type": "account",
            "type": "MoneyDeposited",
            "version": version,
            "data": {"amount": rng.randint(1, 50_000)},
        }


def last_per_partition(events: Iterable[dict[str, Any]], partitions: int) -> dict[int, tuple[str, int]]:
    """The (aggregate id, version) of the last of ``events`` (in produce order) on each partition.

    A partition's records are folded in order: once that row shows that version, the
    partition's whole share of ``events`` is applied.
    """
    from projector.core.partitioning import partition_for

    out = {}
    for e in events:
        out[partition_for(e["aggregate_id"].encode(), partitions)] = (e["aggregate_id"], e["version"])
    return out


def raise_version(source_text: str, version: int) -> str:
    """A read-model module's text with ``VERSION = version`` and a fold that adds ``last_event`` appended."""
    return source_text.rstrip("\n") + "\n" + VERSION_SOURCE.format(version=version)


def versioned_tables(dest: Path, version: int = 2, source: Optional[Path] = None) -> Path:
    """A copy at ``dest`` of the read-model folder ``source`` (default: the worker's) whose
    ``accounts`` read model is at ``version`` (:func:`raise_version`); checked by loading it."""
    from projector.core.catalog import default_tables_dir, load_catalog

    source = source or default_tables_dir()
    catalog = load_catalog(source)
    model = catalog.get(TABLE)
    if model is None:
        raise BenchError(f"no read model {TABLE} in {source}")
    target = Path(model.module.__file__).name
    dest.mkdir(parents=True, exist_ok=True)
    for module in catalog.modules:
        path = Path(module.__file__)
        text = path.read_text()
        (dest / path.name).write_text(raise_version(text, version) if path.name == target else text)
    loaded = load_catalog(dest).get(TABLE)
    if loaded is None or loaded.version != version:
        raise BenchError(f"{dest}: {TABLE} did not load at version {version}")
    return dest


# --- watching one worker ---------------------------------------------------------------


def _lag(m: dict[str, float]) -> tuple[Optional[float], int]:
    """(total lag of the events partitions, how many partitions report one)."""
    lags = [v for k, v in m.items() if k.startswith("projector_consumer_lag{")]
    return (sum(lags) if lags else None), len(lags)


async def _tables(session: aiohttp.ClientSession, url: str) -> Optional[dict[str, Any]]:
    """``GET /tables``' entry of :data:`TABLE`, or None when the worker does not answer."""
    try:
        async with session.get(f"{url}/tables") as r:
            if r.status != 200:
                return None
            body = await r.json(content_type=None)
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return None
    return next((t for t in body.get("tables", []) if t.get("name") == TABLE), None)


async def _row_version(session: aiohttp.ClientSession, url: str, key: str) -> Optional[int]:
    try:
        async with session.get(f"{url}/tables/{TABLE}/{key}") as r:
            body = await r.json(content_type=None)
            return body.get("version") if r.status == 200 else None
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return None


async def _watch(session: aiohttp.ClientSession, group: Workers, records: int, last: dict[int, tuple[str, int]], *,
                 build: Optional[str] = None, timeout: float = 900) -> dict[str, Any]:
    """Start the group's worker ``w1`` and follow it until it handled ``records`` records with no lag
    and the rows of ``last`` (:func:`last_per_partition`) show their versions: every record is
    applied, not only read (a batch is counted when it is planned, before it is written). With
    ``build`` (the table being built), until ``GET /tables`` says the version switched too.

    Returns the times (Unix) of its start, first record, no lag, every record applied, the build
    having caught up and the switch, and the samples ``(time, records, build records)``.
    """
    started = time.time()
    url = group.start("w1")
    deadline = time.monotonic() + timeout
    out: dict[str, Any] = {"started": started, "first_record": None, "no_lag": None, "applied": None,
                           "caught_up": None, "switched": None, "samples": []}
    pending = dict(last)
    last_tables = 0.0
    while True:
        if group.procs["w1"].poll() is not None:
            raise BenchError(f"{group.app_id}/w1 exited; see {group.log_path('w1')}")
        m = (await group.metrics(session, ["w1"]))["w1"]
        now = time.time()
        if m:
            seen = m.get("projector_records_total", 0.0)
            built = m.get(f'projector_build_records_total{{table="{build}"}}', 0.0) if build else 0.0
            out["samples"].append((now, seen, built))
            first = m.get("projector_first_record_time_seconds") or None
            out["first_record"] = out["first_record"] or first
            lag, covered = _lag(m)
            if out["no_lag"] is None and first and seen >= records and lag == 0 and covered == group.partitions:
                out["no_lag"] = now
            if out["no_lag"] is not None and out["applied"] is None:
                for partition, (key, version) in list(pending.items()):
                    if (await _row_version(session, url, key) or 0) >= version:
                        del pending[partition]
                if not pending:
                    out["applied"] = now = time.time()
                    log(f"  {group.app_id}: {int(seen):,} records applied, no lag, {now - first:.1f} s after "
                        f"its first record" + (f"; {int(built):,} records built so far" if build else ""))
            if build:
                remaining = m.get(f'projector_build_remaining{{table="{TABLE}",version="2"}}')
                if now - last_tables >= 0.5 or remaining == 0:
                    last_tables = now
                    entry = await _tables(session, url)
                    if entry is not None:
                        if out["caught_up"] is None and (entry.get("building") is None or remaining == 0
                                                          or (entry["building"] or {}).get("remaining") == 0):
                            out["caught_up"] = now
                            log(f"  {group.app_id}: the build has caught up ({int(built):,} records built)")
                        if entry.get("version") == 2:
                            out["switched"] = now
                            out["caught_up"] = out["caught_up"] or now
                            log(f"  {group.app_id}: GET /tables says {TABLE} version 2 after {now - started:.1f} s")
        if out["applied"] is not None and (not build or out["switched"] is not None):
            out["metrics"] = {k: v for k, v in m.items() if k.startswith((
                "projector_records_total", "projector_events_applied_total", "projector_duplicates_total",
                "projector_deadletter_total", "projector_build_records_total", "projector_build_skipped_total"))}
            return out
        if time.monotonic() > deadline:
            raise BenchError(f"{group.app_id}: not done in {timeout:.0f} s (see {group.log_path('w1')})")
        await asyncio.sleep(POLL)


def _at(samples: list[tuple[float, float, float]], when: float) -> tuple[float, float, float]:
    """The last sample at or before ``when`` (the first one if none)."""
    best = samples[0]
    for s in samples:
        if s[0] <= when:
            best = s
    return best


def summarize(watch: dict[str, Any], backlog: int, history: int) -> dict[str, Any]:
    """The figures of one run from :func:`_watch`'s times and samples."""
    first, no_lag = watch["first_record"], watch["applied"]
    live_seconds = no_lag - first
    out: dict[str, Any] = {
        "seconds_to_first_record": round(first - watch["started"], 1),
        "live_seconds": round(live_seconds, 1),
        "live_seconds_to_no_lag": round(watch["no_lag"] - first, 1),
        "live_events_per_second": round(backlog / live_seconds) if live_seconds > 0 else None,
    }
    out["metrics_at_end"] = watch.get("metrics", {})
    samples = watch["samples"]
    if watch["switched"] is None or not samples:
        return out
    built_total = samples[-1][2]
    began = next((t for t, _, b in samples if b > 0), first)
    _, _, built_at_no_lag = _at(samples, no_lag)
    caught_up = watch["caught_up"]
    _, _, built_at_caught_up = _at(samples, caught_up)
    out.update({
        "build_records": int(built_total),
        "records_in_topic": history + backlog,
        "build_records_per_second_while_live_busy": round(built_at_no_lag / live_seconds) if live_seconds > 0 else None,
        "build_records_per_second_after": (round((built_at_caught_up - built_at_no_lag) / (caught_up - no_lag))
                                           if caught_up > no_lag else None),
        "build_records_per_second_overall": (round(built_at_caught_up / (caught_up - began))
                                             if caught_up > began else None),
        "build_caught_up_seconds_after_start": round(caught_up - watch["started"], 1),
        "switch_seconds_after_start": round(watch["switched"] - watch["started"], 1),
        "switch_seconds_after_first_record": round(watch["switched"] - first, 1),
    })
    return out


async def _check_rows(session: aiohttp.ClientSession, url: str, expected: dict[str, int], version: int) -> list[str]:
    """Rows of :data:`TABLE` whose version differs from ``expected``, or (version 2) that lack ``last_event``."""
    wrong = []
    for aid, want in expected.items():
        async with session.get(f"{url}/tables/{TABLE}/{aid}") as r:
            body = await r.json(content_type=None)
        if r.status != 200 or body.get("version") != want or (
                version == 2 and "last_event" not in (body.get("value") or {})):
            wrong.append(f"{aid}: HTTP {r.status} {body}")
    return wrong


# --- the run ---------------------------------------------------------------------------------


async def _run(args: argparse.Namespace, settings: Settings, workdir: Path) -> dict[str, Any]:
    from projector.core.catalog import default_tables_dir
    from projector.demo.data import generate_histories

    started_broker = ensure_broker(settings.bootstrap_servers, settings.broker)
    try:
        return await _bench(args, settings, workdir, default_tables_dir(), generate_histories)
    finally:
        if started_broker:
            stop_broker()


async def _bench(args: argparse.Namespace, settings: Settings, workdir: Path, tables: Path, generate: Any
                 ) -> dict[str, Any]:
    run = f"bb{uuid.uuid4().hex[:6]}"
    topic = f"{run}-events"
    report: dict[str, Any] = {**report_head("projector bench-build", settings), "events": args.events,
                              "backlog": args.backlog, "accounts": args.accounts, "partitions": args.partitions,
                              "workers": 1}
    v2 = versioned_tables(workdir / "tables-v2", 2, tables)
    async with kafka_for_run(settings, run) as kafka:
        await kafka.create_topic(topic, args.partitions, 1)
        history = list(generate(args.accounts, args.events, seed=3))
        ends = account_ends(history)
        log(f"producing {len(history):,} events over {args.accounts:,} accounts")
        await produce(settings, topic, history)
        backlog = list(backlog_events(ends, args.backlog))
        expected = {aid: version for aid, (version, _) in ends.items()}
        for e in backlog:
            expected[e["aggregate_id"]] = e["version"]
        history_last = last_per_partition(history, args.partitions)
        backlog_last = last_per_partition(backlog, args.partitions)
        sample = dict(random.Random(5).sample(sorted(expected.items()), min(20, len(expected))))
        groups = {key: Workers(settings, topic, args.partitions, workdir, f"{run}-{key.lower()}",
                               env={"PROJECTOR_TABLES_DIR": str(tables)}) for key in ("A", "B")}
        timeout = aiohttp.ClientTimeout(total=30)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                for key, group in groups.items():
                    log(f"app id {group.app_id} ({key}): one worker folds the history")
                    w = await _watch(session, group, len(history), history_last)
                    report[f"history_{key}_events_per_second"] = round(len(history) / (w["applied"] - w["first_record"]))
                    group.stop("w1")
                log(f"producing a backlog of {len(backlog):,} deposits while both workers are down")
                await produce(settings, topic, backlog)

                log("run A: the worker restarts with the same tables and folds the backlog")
                a = await _watch(session, groups["A"], len(backlog), backlog_last)
                report["without_build"] = summarize(a, len(backlog), len(history))
                report["without_build"]["rows_wrong"] = await _check_rows(session, groups["A"].urls["w1"], sample, 1)
                groups["A"].stop("w1")

                log(f"run B: the worker restarts with {TABLE} at VERSION = 2 and folds the backlog while it builds")
                groups["B"].env["PROJECTOR_TABLES_DIR"] = str(v2)
                b = await _watch(session, groups["B"], len(backlog), backlog_last, build=f"{TABLE}-v2")
                report["with_build"] = summarize(b, len(backlog), len(history))
                report["with_build"]["rows_wrong"] = await _check_rows(session, groups["B"].urls["w1"], sample, 2)
                groups["B"].stop("w1")
        finally:
            for group in groups.values():
                group.stop()
    without, with_ = report["without_build"]["live_events_per_second"], report["with_build"]["live_events_per_second"]
    report["live_ratio_with_build"] = round(with_ / without, 2) if without and with_ else None
    return report


def cmd_bench_build(args: argparse.Namespace) -> None:
    report, out = run_command("projector bench-build", "build", args, _run)
    a, b = report["without_build"], report["with_build"]
    print(f"\n{report['events']:,} events of history, then a backlog of {report['backlog']:,}; "
          f"{report['accounts']:,} accounts, {report['partitions']} partitions, one worker; report: {out}")
    print(f"  live fold on the backlog, no build:         {a['live_events_per_second']:>7} events/s ({a['live_seconds']} s)")
    print(f"  live fold on the backlog, {TABLE}-v2 builds: {b['live_events_per_second']:>7} events/s ({b['live_seconds']} s)"
          f"  ratio {report['live_ratio_with_build']}")
    print(f"  the build: {b.get('build_records', 0):,} records; "
          f"{b.get('build_records_per_second_while_live_busy')} records/s while the live fold had a backlog, "
          f"{b.get('build_records_per_second_after')} records/s after, "
          f"{b.get('build_records_per_second_overall')} records/s overall")
    print(f"  caught up {b.get('build_caught_up_seconds_after_start')} s after the restart; "
          f"GET /tables said version 2 after {b.get('switch_seconds_after_start')} s")
    for key, row in (("no build", a), ("build", b)):
        if row["rows_wrong"]:
            print(f"  WRONG rows ({key}): {row['rows_wrong'][:3]}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", default=None, help="bootstrap servers (default $PROJECTOR_BROKER); the default local "
                   "broker is started when none answers")
    p.add_argument("--events", type=int, default=300_000, help="events of history before the restart")
    p.add_argument("--backlog", type=int, default=200_000, help="deposits produced while the worker is down")
    p.add_argument("--accounts", type=int, default=5000)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--output", default=None)
    p.add_argument("--keep-data", action="store_true")
