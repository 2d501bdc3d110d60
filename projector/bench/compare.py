"""``projector bench``: end-to-end throughput, projector side by side with its peers.

One run fills one topic with the demo workload
(:func:`projector.demo.generate_histories`), then runs each contestant as a
real subprocess, one after the other, each from offset 0 with its own consumer
group and data dir:

- ``projector``: ``python -m projector worker``;
- ``naive-faust``: ``python -m projector.bench.naive``, one Faust agent doing
  ``table[key] = fold(table[key], event)`` per event;
- ``quix``: ``python -m projector.bench.quix``, Quix Streams with its RocksDB
  state and changelog, the same fold (:mod:`projector.bench.fold`);
- ``raw-aiokafka`` and ``raw-confluent``: ``python -m projector.bench.raw``, a
  plain consumer loop with orjson and a dict fold, no state store: the ceiling.

Quix Streams and confluent-kafka (the ``bench`` extra) are imported only by
the contestants that use them, in their own process; without the extra those
contestants are reported ``crashed``, their log naming what to install.

A contestant is caught up when its consumer group's committed offsets reach the
topic's end offsets on every partition. Its state is then checked against rows
folded here from the generated events, independently of every contestant:
over HTTP for projector and the naive agent, and from the state file the
others write when they are stopped. The report gives wall time (from process start, and from the
first 200 on ``/readyz``), events/s, CPU seconds per million events and peak
RSS, and the ratio of each contestant to projector. A contestant whose state is
wrong is reported ``WRONG``, never fast.

Only processes this module starts are stopped, by PID. The broker, the Kafka
client, the processes' costs and the machine's description come from
:mod:`projector.bench.common`; this module holds the comparison itself.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional
from urllib.parse import quote

import orjson

from projector.bench.common import (
    DEFAULT_BROKER,
    POLL,
    BenchError,
    Kafka,
    Progress,
    ensure_broker,
    free_port,
    log,
    machine_info,
    proc_cpu_seconds,
    proc_peak_rss_mib,
    produce,
    stop_broker,
    stop_process,
    tables_dir_with,
    worker_vars,
)
from projector.core.errors import ReadModelError
from projector.runtime.config import Settings
from projector.runtime.errors import ConfigError
from projector.runtime.kafka import settings_for

CONTESTANTS = ("projector", "naive-faust", "quix", "raw-aiokafka", "raw-confluent")
#: The state check reads at least this many accounts when it samples.
MIN_SAMPLE = 500
#: After the offsets are caught up, how long a wrong state may take to settle.
STATE_GRACE = 15.0
#: Issue 8's goals: projector's events/s over each peer's, measured in one run.
GOALS = (("naive-faust", 8.0), ("quix", 2.0), ("raw-aiokafka", 0.40))
#: The figures other commands measure (BENCHMARKS.md has a section for each).
OTHER_FIGURES = (
    ("restore rate from the changelog, time to ready after kill -9, rebalance pause, 1/2/4 workers",
     "projector bench-scale", "Scale-out, recovery and rebalances"),
    ("key-lookup latency, local and forwarded, while a worker folds", "projector bench-lookups",
     "Key lookups while a worker folds"),
    ("command round trip, and how soon the row shows it", "projector bench-commands", "Command round trip"),
    ("control propagation to every worker",
     "pytest tests/integration/test_control.py -k three_workers -s", "Control propagation"),
)


# --- configuration --------------------------------------------------------------


@dataclass
class BenchConfig:
    broker: str = field(default_factory=lambda: os.environ.get("PROJECTOR_BROKER") or DEFAULT_BROKER)
    topic: Optional[str] = None
    partitions: int = 8
    events: int = 1_000_000
    accounts: int = 10_000
    seed: int = 1
    timeout: float = 1800.0
    #: ``None``: check every account; N: check a random sample of max(N, 500).
    sample: Optional[int] = None
    contestants: tuple[str, ...] = CONTESTANTS
    #: ``None``: projector folds every read model of tables/; else only these (and still its aggregate index).
    tables: Optional[tuple[str, ...]] = None
    output: Optional[Path] = None
    keep_topics: bool = False
    keep_data: bool = False
    replication_factor: int = 1
    #: Start deploy/kafka/kafka.sh when the default broker does not answer.
    start_broker: bool = True
    progress_every: float = 5.0


# --- the expected state ---------------------------------------------------------


def expected_accounts(envelopes: Any) -> dict[str, dict[str, Any]]:
    """The accounts rows ``{"version", "value"}`` after ``envelopes``, folded here.

    Written from CONTRACT §4 alone, like the oracle of
    tests/integration/test_worker_slice.py: it does not use projector's folds.
    """
    rows: dict[str, dict[str, Any]] = {}
    for e in envelopes:
        fold_into(rows, e)
    return rows


def fold_into(rows: dict[str, dict[str, Any]], e: dict[str, Any]) -> None:
    aid, data, etype = e["aggregate_id"], e["data"], e["type"]
    if etype == "AccountOpened":
        value = {"owner": data["owner"], "currency": data["currency"], "balance": 0,
                 "status": "open", "deposits": 0, "withdrawals": 0}
    else:
        value = dict(rows[aid]["value"])
        if etype == "MoneyDeposited":
            value["balance"] += data["amount"]
            value["deposits"] += 1
        elif etype == "MoneyWithdrawn":
            value["balance"] -= data["amount"]
            value["withdrawals"] += 1
        elif etype == "AccountClosed":
            value["status"] = "closed"
    rows[aid] = {"version": e["version"], "value": value}


# --- results ----------------------------------------------------------------------


@dataclass
class Result:
    contestant: str
    #: ok | WRONG | unchecked | timeout | crashed | error
    state: str = "error"
    events: int = 0
    seconds: Optional[float] = None
    seconds_from_ready: Optional[float] = None
    ready_after: Optional[float] = None
    events_per_s: Optional[float] = None
    events_per_s_from_ready: Optional[float] = None
    #: CPU (user + system) of the process when it was seen caught up, before
    #: the state check's HTTP reads; ``cpu_seconds_at_stop`` includes them.
    cpu_seconds: Optional[float] = None
    cpu_seconds_at_stop: Optional[float] = None
    cpu_s_per_million: Optional[float] = None
    peak_rss_mib: Optional[float] = None
    accounts_checked: int = 0
    mismatches: int = 0
    first_mismatches: list[str] = field(default_factory=list)
    state_settled_after_offsets: Optional[float] = None
    committed_events: int = 0
    #: Records not yet consumed by the group on its own internal input topics
    #: (``<group>-*``, not changelogs) when the events topic was caught up.
    internal_lag_at_catch_up: dict[str, int] = field(default_factory=dict)
    group: str = ""
    pid: Optional[int] = None
    stopped: str = ""
    detail: str = ""
    log: str = ""

    @property
    def ok(self) -> bool:
        return self.state in ("ok", "unchecked")

    def checked(self, bad: list[str], sample: list[str]) -> None:
        """Record a state check of ``sample``: ``bad`` lists the accounts that differ from the expected rows."""
        self.accounts_checked = len(sample)
        self.mismatches = len(bad)
        self.first_mismatches = bad[:5]
        self.state = "WRONG" if bad else "ok"
        if bad:
            self.detail = f"{len(bad)} of {len(sample)} accounts differ from the expected state; first: {bad[:3]}"

    def stop(self, proc: subprocess.Popen) -> None:
        """Sample the contestant's CPU and peak RSS, then stop it (only it, by PID)."""
        self.cpu_seconds_at_stop = proc_cpu_seconds(proc.pid)
        self.peak_rss_mib = proc_peak_rss_mib(proc.pid)
        self.stopped = stop_process(proc)


@dataclass
class Contestant:
    name: str
    group: str
    argv: list[str]
    env: dict[str, str]
    url: str
    data_dir: Path
    log_path: Path
    #: Over HTTP (projector, the naive agent): a row's URL, and (status, body, key) -> the
    #: row as {"version", "value"}, or an error text.
    row_url: Optional[Callable[[str], str]] = None
    parse_row: Optional[Callable[[int, Any, str], Any]] = None
    #: Contestants without HTTP write their rows here when stopped (``{"rows": {key: row}}``).
    state_file: Optional[Path] = None
    #: ... and touch this file (content: ``time.time()``) at their first record.
    ready_file: Optional[Path] = None


def _projector_row(status: int, body: Any, key: str) -> Any:
    if status != 200:
        return f"HTTP {status} {body}"
    if not isinstance(body, dict) or body.get("table") != "accounts" or body.get("key") != key:
        return f"unexpected body {body}"
    return {"version": body.get("version"), "value": body.get("value")}


def _naive_row(status: int, body: Any, key: str) -> Any:
    if status != 200:
        return f"HTTP {status} {body}"
    if not isinstance(body, dict) or body.get("key") != key:
        return f"unexpected body {body}"
    return {"version": body.get("version"), "value": body.get("value")}


async def produce_workload(settings: Settings, topic: str, config: BenchConfig,
                           expected: dict[str, dict[str, Any]]) -> int:
    """Produce the demo histories keyed by aggregate id, idempotently; fold ``expected`` on the way."""
    from projector.demo.data import generate_histories

    def folded() -> Iterator[dict[str, Any]]:
        for env in generate_histories(config.accounts, config.events, config.seed):
            fold_into(expected, env)
            yield env

    return await produce(settings, topic, folded(), idempotent=True,
                         progress=Progress("producing", config.events, config.progress_every))


# --- the bench ----------------------------------------------------------------------


class Bench:
    def __init__(self, config: BenchConfig) -> None:
        self.config = config
        try:
            self.settings = settings_for(config.broker)
        except ConfigError as exc:
            raise BenchError(f"--broker: {exc}") from None
        self.bootstrap = self.settings.bootstrap_servers
        if config.events < config.accounts or config.accounts < 1:
            raise BenchError("need --accounts >= 1 and --events >= --accounts")
        if config.timeout <= 0:
            raise BenchError("--timeout must be positive")
        unknown = set(config.contestants) - set(CONTESTANTS)
        if unknown or not config.contestants:
            raise BenchError(f"unknown contestants {sorted(unknown)}; choose from {', '.join(CONTESTANTS)}")
        self.tag = uuid.uuid4().hex[:8]
        #: The read-model folder of ``--tables``, made here so a wrong name stops the bench before it starts anything.
        self.tables_dir: Optional[Path] = None
        if config.tables is not None:
            scratch = Path(tempfile.mkdtemp(prefix=f"projector-bench-{self.tag}-tables-"))
            try:
                self.tables_dir = tables_dir_with(config.tables, scratch)
            except (ValueError, ReadModelError) as exc:
                shutil.rmtree(scratch, ignore_errors=True)
                # A ValueError names --tables itself; a ReadModelError is about the folder made from it.
                where = "" if isinstance(exc, ValueError) else f"--tables {','.join(config.tables)}: "
                raise BenchError(f"{where}{exc}") from None
        self.topic = config.topic or f"bench-{self.tag}-events"
        self.started = _dt.datetime.now(_dt.timezone.utc)
        stamp = self.started.strftime("%Y%m%dT%H%M%SZ")
        self.output = Path(config.output) if config.output else Path("bench-results") / f"bench-{stamp}.json"
        self.workdir: Optional[Path] = None
        self.started_broker = False
        self.created_topic = False
        self.kafka = Kafka(self.settings)
        self.procs: list[subprocess.Popen] = []
        self.app_ids: list[str] = []
        self.extra_topics: list[str] = []
        self.notes: list[str] = []
        self.interrupted = False
        self.machine = machine_info()

    # - broker -

    def ensure_broker(self) -> None:
        self.started_broker = ensure_broker(self.bootstrap, self.config.broker, self.config.start_broker)

    def stop_broker(self) -> None:
        if self.started_broker:
            stop_broker()

    # - workload -

    async def prepare_topic(self) -> tuple[int, int, Optional[dict[str, dict[str, Any]]], Optional[float]]:
        """(partitions, events on the topic, expected rows or None, seconds spent producing)."""
        cfg = self.config
        partitions = await self.kafka.partitions(self.topic)
        if partitions is None:
            log(f"creating topic {self.topic} ({cfg.partitions} partitions)")
            await self.kafka.create_topic(self.topic, cfg.partitions, cfg.replication_factor)
            self.created_topic = cfg.topic is None
            partitions = cfg.partitions
            expected: dict[str, dict[str, Any]] = {}
            log(f"producing {cfg.events} events for {cfg.accounts} accounts (seed {cfg.seed})")
            t0 = time.monotonic()
            n = await produce_workload(self.settings, self.topic, cfg, expected)
            produce_seconds = time.monotonic() - t0
            log(f"produced {n} events in {produce_seconds:.1f}s")
            begin, end = await self.kafka.offsets(self.topic, partitions)
            on_topic = sum(end[p] - begin[p] for p in end)
            if on_topic != n:
                raise BenchError(f"produced {n} events but topic {self.topic} holds {on_topic}")
            return partitions, on_topic, expected, produce_seconds
        begin, end = await self.kafka.offsets(self.topic, partitions)
        on_topic = sum(end[p] - begin[p] for p in end)
        if on_topic == 0:
            raise BenchError(f"topic {self.topic} exists but holds no events")
        if partitions != cfg.partitions:
            self.notes.append(f"topic {self.topic} has {partitions} partitions (not --partitions {cfg.partitions}); "
                              "both contestants use the topic's count")
        if on_topic == cfg.events:
            note = (f"reusing topic {self.topic} ({on_topic} events): the state is checked against "
                    f"generate_histories(accounts={cfg.accounts}, events={cfg.events}, seed={cfg.seed}); it is only "
                    "right if the topic was filled with these same --events/--accounts/--seed")
            self.notes.append(note)
            log(note)
            from projector.demo.data import generate_histories

            expected = expected_accounts(generate_histories(cfg.accounts, cfg.events, cfg.seed))
            return partitions, on_topic, expected, None
        note = (f"reusing topic {self.topic}: it holds {on_topic} events, not --events {cfg.events}, so the "
                "expected state is unknown and the state is not checked (pass the --events/--accounts/--seed "
                "that filled it to check it)")
        self.notes.append(note)
        log(note)
        return partitions, on_topic, None, None

    # - contestants -

    def contestant(self, name: str, partitions: int) -> Contestant:
        app_id = f"bench-{self.tag}-{'naive' if name == 'naive-faust' else name}"
        self.app_ids.append(app_id)
        port = free_port()
        assert self.workdir is not None
        data_dir = self.workdir / name / "data"
        data_dir.mkdir(parents=True)
        self.output.parent.mkdir(parents=True, exist_ok=True)
        log_path = self.output.with_name(f"{self.output.stem}.{name}.log")
        env = dict(os.environ)
        env.pop("PROJECTOR_API_TOKEN", None)
        env.pop("PROJECTOR_ADMIN_TOKEN", None)
        env.pop("PROJECTOR_API_TOKEN_FILE", None)
        env.pop("PROJECTOR_ADMIN_TOKEN_FILE", None)
        broker = ",".join(f"kafka://{hp}" for hp in self.bootstrap)
        url = f"http://127.0.0.1:{port}"
        if name == "projector":
            control = f"bench-{self.tag}-control"
            self.extra_topics += [control]
            if self.created_topic:
                self.extra_topics.append(f"{self.topic}.deadletter")
            env.update(worker_vars(broker, app_id, self.topic, partitions, data_dir, port, control))
            env["PROJECTOR_REPLICATION_FACTOR"] = str(self.config.replication_factor)
            if self.tables_dir is not None:
                env["PROJECTOR_TABLES_DIR"] = str(self.tables_dir)
            argv = [sys.executable, "-m", "projector", "worker"]
            return Contestant(name, app_id, argv, env, url, data_dir, log_path,
                              lambda key: f"{url}/tables/accounts/{quote(key, safe='')}", _projector_row)
        if name == "naive-faust":
            argv = [sys.executable, "-m", "projector.bench.naive", "--broker", broker, "--topic", self.topic,
                    "--partitions", str(partitions), "--app-id", app_id, "--data-dir", str(data_dir),
                    "--web-port", str(port)]
            return Contestant(name, app_id, argv, env, url, data_dir, log_path,
                              lambda key: f"{url}/row/{quote(key, safe='')}", _naive_row)
        state_file = data_dir.parent / "state.json"
        ready_file = data_dir.parent / "first-record"
        common = ["--broker", broker, "--topic", self.topic, "--group", app_id,
                  "--state-file", str(state_file), "--ready-file", str(ready_file)]
        if name == "quix":
            argv = [sys.executable, "-m", "projector.bench.quix", *common, "--data-dir", str(data_dir)]
        else:
            argv = [sys.executable, "-m", "projector.bench.raw", "--client", name.removeprefix("raw-"), *common]
        return Contestant(name, app_id, argv, env, "", data_dir, log_path,
                          state_file=state_file, ready_file=ready_file)

    async def run_contestant(self, c: Contestant, partitions: int, begin: dict[int, int], end: dict[int, int],
                             expected: Optional[dict[str, dict[str, Any]]], sample: list[str]) -> Result:
        import aiohttp

        cfg = self.config
        total = sum(end[p] - begin[p] for p in end)
        result = Result(c.name, events=total, group=c.group, log=str(c.log_path))
        web = f"web {c.url}, " if c.url else ""
        log(f"[{c.name}] starting (group {c.group}, {web}log {c.log_path})")
        with open(c.log_path, "wb") as logf:
            t0, wall_t0 = time.monotonic(), time.time()
            proc = subprocess.Popen(c.argv, env=c.env, stdout=logf, stderr=subprocess.STDOUT,
                                    cwd=str(c.data_dir.parent))
        self.procs.append(proc)
        result.pid = proc.pid
        deadline = t0 + cfg.timeout
        ready_at: Optional[float] = None
        caught_at: Optional[float] = None
        progress = Progress(f"[{c.name}] committed", total, cfg.progress_every)
        done = 0
        last_error = ""
        timeout = aiohttp.ClientTimeout(total=10)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                while True:
                    now = time.monotonic()
                    if proc.poll() is not None:
                        result.state = "crashed"
                        result.detail = (f"exited with {proc.returncode} after {now - t0:.1f}s; "
                                         f"log tail:\n{_tail(c.log_path)}")
                        break
                    if now > deadline:
                        result.state = "timeout"
                        result.detail = (f"not caught up within --timeout {cfg.timeout:.0f}s: "
                                         f"{done}/{total} events committed")
                        break
                    if ready_at is None and c.ready_file is not None:
                        ready_at = _first_record_at(c.ready_file, t0, wall_t0)
                        if ready_at is not None:
                            log(f"[{c.name}] first record after {ready_at - t0:.1f}s")
                    elif ready_at is None:
                        try:
                            async with session.get(f"{c.url}/readyz", timeout=aiohttp.ClientTimeout(total=2)) as r:
                                if r.status == 200:
                                    ready_at = time.monotonic()
                                    log(f"[{c.name}] ready after {ready_at - t0:.1f}s")
                        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                            pass
                    try:
                        committed = await self.kafka.committed(c.group, self.topic)
                        done = sum(min(max(committed.get(p, begin[p]), begin[p]), end[p]) - begin[p] for p in end)
                        if all(committed.get(p, begin[p]) >= end[p] for p in end):
                            # Caught up means every table: the re-keyed ones too, which
                            # follow through the contestant's internal repartition topics.
                            internal = await self.kafka.internal_lag(c.group)
                            if not any(internal.values()):
                                caught_at = time.monotonic()
                                result.cpu_seconds = proc_cpu_seconds(proc.pid)
                                result.committed_events = done
                                break
                    except Exception as exc:  # the group may not exist yet; keep polling
                        last_error = f"{type(exc).__name__}: {exc}"
                    extra = f" (offsets: {last_error})" if done == 0 and last_error else ""
                    progress.update(done, extra)
                    await asyncio.sleep(POLL)

                if caught_at is not None:
                    log(f"[{c.name}] caught up: {total} events committed after {caught_at - t0:.1f}s")
                    try:
                        result.internal_lag_at_catch_up = await self.kafka.internal_lag(c.group)
                    except Exception as exc:  # informational only
                        log(f"[{c.name}] could not read its internal topics' lag: {type(exc).__name__}: {exc}")
                    behind = {t: n for t, n in result.internal_lag_at_catch_up.items() if n}
                    if behind:
                        note = (f"{c.name}: when the events topic was caught up, its internal topics still had "
                                f"unconsumed records (not part of the timed work): {behind}")
                        self.notes.append(note)
                        log(note)
                    result.seconds = caught_at - t0
                    if ready_at is not None:
                        result.ready_after = ready_at - t0
                        result.seconds_from_ready = max(caught_at - ready_at, 0.0)
                    if c.state_file is not None:
                        # Its rows are in the file it writes when stopped.
                        result.stop(proc)
                        self.check_state_file(c, proc, expected, sample, result)
                    elif expected is None:
                        result.state = "unchecked"
                    else:
                        await self.check_state(session, c, proc, expected, sample, caught_at, deadline, result)
        finally:
            if proc.poll() is None:
                result.stop(proc)
            elif not result.stopped:
                result.stopped = stop_process(proc)
            if result.cpu_seconds is None:
                result.cpu_seconds = result.cpu_seconds_at_stop
            self.procs.remove(proc)
        if result.state in ("ok", "unchecked") and result.seconds:
            result.events_per_s = total / result.seconds
            if result.seconds_from_ready:
                result.events_per_s_from_ready = total / result.seconds_from_ready
        if result.cpu_seconds is not None and total:
            result.cpu_s_per_million = result.cpu_seconds * 1_000_000 / total
        log(f"[{c.name}] {result.state}; {result.stopped}")
        if result.state not in ("ok", "unchecked"):
            log(f"[{c.name}] {result.detail}")
        return result

    async def check_state(self, session: Any, c: Contestant, proc: subprocess.Popen,
                          expected: dict[str, dict[str, Any]], sample: list[str], caught_at: float,
                          deadline: float, result: Result) -> None:
        """Compare ``sample`` rows with ``expected``; give a wrong state STATE_GRACE s to settle."""
        grace_end = min(caught_at + STATE_GRACE, deadline)
        first_pass = True
        while True:
            started = time.monotonic()
            bad = await self.mismatches(session, c, expected, sample)
            result.checked(bad, sample)
            if not bad:
                if not first_pass:
                    # The offsets were committed before the rows were right:
                    # time the contestant by the check that passed.
                    result.state_settled_after_offsets = started - caught_at
                    result.seconds += started - caught_at
                    if result.seconds_from_ready is not None:
                        result.seconds_from_ready += started - caught_at
                return
            if time.monotonic() >= grace_end or proc.poll() is not None:
                return
            first_pass = False
            await asyncio.sleep(1.0)

    def check_state_file(self, c: Contestant, proc: subprocess.Popen, expected: Optional[dict[str, dict[str, Any]]],
                         sample: list[str], result: Result) -> None:
        """Compare the rows a stopped contestant wrote to its state file with ``expected``."""
        assert c.state_file is not None
        try:
            rows = orjson.loads(c.state_file.read_bytes())["rows"]
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
            result.state = "error"
            result.detail = (f"no readable state file {c.state_file} after it stopped ({result.stopped}): "
                             f"{type(exc).__name__}: {exc}; log tail:\n{_tail(c.log_path)}")
            return
        if expected is None:
            result.state = "unchecked"
            return
        result.checked(sorted(f"{k}: got {rows.get(k)}, expected {expected[k]}"
                              for k in sample if rows.get(k) != expected[k]), sample)

    async def mismatches(self, session: Any, c: Contestant, expected: dict[str, dict[str, Any]],
                         sample: list[str]) -> list[str]:
        import aiohttp

        assert c.row_url is not None and c.parse_row is not None
        row_url, parse_row = c.row_url, c.parse_row
        sem = asyncio.Semaphore(8)
        bad: list[str] = []

        async def one(key: str) -> None:
            async with sem:
                try:
                    async with session.get(row_url(key)) as r:
                        raw = await r.read()
                        status = r.status
                    body = orjson.loads(raw) if raw else None
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError, orjson.JSONDecodeError) as exc:
                    bad.append(f"{key}: {type(exc).__name__}: {exc}")
                    return
                row = parse_row(status, body, key)
                if row != expected[key]:
                    bad.append(f"{key}: got {row}, expected {expected[key]}")

        await asyncio.gather(*(one(k) for k in sample))
        return sorted(bad)

    # - the run -

    def _interrupt(self, task: "asyncio.Task[Any]") -> None:
        # Cancel only the bench's own task: Kafka clients' tasks stay alive,
        # so the cleanup in its ``finally`` blocks can still talk to the broker.
        if not self.interrupted:
            self.interrupted = True
            log("interrupted: stopping what this run started")
            task.cancel()

    async def run_async(self) -> dict[str, Any]:
        cfg = self.config
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._interrupt, task)
            except (NotImplementedError, RuntimeError):  # not the main thread
                pass
        await self.kafka.start()
        try:
            partitions, total, expected, produce_seconds = await self.prepare_topic()
            begin, end = await self.kafka.offsets(self.topic, partitions)
            sample: list[str] = []
            if expected is not None:
                keys = sorted(expected)
                if cfg.sample is not None and cfg.sample < len(keys):
                    n = max(cfg.sample, min(MIN_SAMPLE, len(keys)))
                    keys = sorted(random.Random(cfg.seed).sample(keys, n))
                sample = keys
            results = []
            for name in cfg.contestants:
                c = self.contestant(name, partitions)
                results.append(await self.run_contestant(c, partitions, begin, end, expected, sample))
            _, end_after = await self.kafka.offsets(self.topic, partitions)
            if end_after != end:
                self.notes.append(f"topic {self.topic} grew during the run (another producer?): "
                                  f"{sum(end.values())} -> {sum(end_after.values())} end offset sum")
            return self.report(partitions, total, expected, sample, produce_seconds, results)
        finally:
            try:
                if not cfg.keep_topics:
                    await asyncio.wait_for(asyncio.shield(self.cleanup_topics()), 30)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                log("could not delete this run's topics in time")
            finally:
                try:
                    await asyncio.wait_for(asyncio.shield(self.kafka.close()), 30)
                except (asyncio.TimeoutError, asyncio.CancelledError):
                    pass

    async def cleanup_topics(self) -> None:
        try:
            # Faust names its topics <app id>-*; Quix puts the group inside (changelog__<group>--...).
            names = [t for t in await self.kafka.list_topics()
                     if any(a in t for a in self.app_ids) or t in self.extra_topics
                     or (self.created_topic and t == self.topic)]
            await self.kafka.delete_topics(names)
            log(f"deleted {len(names)} topics of this run")
        except Exception as exc:  # cleanup never hides the results
            log(f"could not delete this run's topics: {type(exc).__name__}: {exc}")

    def report(self, partitions: int, total: int, expected: Optional[dict], sample: list[str],
               produce_seconds: Optional[float], results: list[Result]) -> dict[str, Any]:
        cfg = self.config
        base = next((r for r in results if r.contestant == "projector" and r.ok), None)
        ratios: dict[str, Any] = {}
        for r in results:
            if base is None or not r.events_per_s or not base.events_per_s:
                ratios[r.contestant] = None
                continue
            ratios[r.contestant] = {
                "events_per_s": r.events_per_s / base.events_per_s,
                "events_per_s_from_ready": (r.events_per_s_from_ready / base.events_per_s_from_ready
                                            if r.events_per_s_from_ready and base.events_per_s_from_ready else None),
                "cpu_s_per_million": (r.cpu_s_per_million / base.cpu_s_per_million
                                      if r.cpu_s_per_million and base.cpu_s_per_million else None),
                "peak_rss_mib": (r.peak_rss_mib / base.peak_rss_mib
                                 if r.peak_rss_mib and base.peak_rss_mib else None),
            }
        goals = []
        by_name = {r.contestant: r for r in results}
        for peer, goal in GOALS:
            r = by_name.get(peer)
            if r is None:
                continue
            ratio = (base.events_per_s / r.events_per_s
                     if base is not None and base.events_per_s and r.events_per_s else None)
            goals.append({"peer": peer, "projector_over_peer": ratio, "goal": goal,
                          "met": None if ratio is None else ratio >= goal})
        machine = dict(self.machine)
        machine["loadavg_at_end"] = list(os.getloadavg())
        return {
            "started_at": self.started.isoformat(),
            "broker": ",".join(self.bootstrap),
            "broker_started_by_bench": self.started_broker,
            "topic": self.topic,
            "topic_filled_by_bench": produce_seconds is not None,
            "partitions": partitions,
            "events": total,
            "projector_tables": list(cfg.tables) if cfg.tables is not None else "all",
            "workload": {"events": cfg.events, "accounts": cfg.accounts, "seed": cfg.seed,
                         "produced": produce_seconds is not None, "produce_seconds": produce_seconds},
            "state_check": {
                "table": "accounts",
                "checked": expected is not None,
                "accounts_checked": len(sample),
                "accounts_total": len(expected) if expected is not None else None,
            },
            "timeout_s": cfg.timeout,
            "machine": machine,
            "results": [asdict(r) for r in results],
            "ratio_to_projector": ratios,
            "goals": goals,
            "other_figures": [{"measures": m, "command": c, "benchmarks_md_section": sec}
                              for m, c, sec in OTHER_FIGURES],
            "notes": self.notes,
        }

    def cleanup(self) -> None:
        for proc in list(self.procs):
            stop_process(proc)
        self.procs.clear()
        if self.tables_dir is not None:
            shutil.rmtree(self.tables_dir, ignore_errors=True)
        if self.workdir is None:
            pass
        elif not self.config.keep_data:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            log(f"kept the contestants' data in {self.workdir}")
        self.stop_broker()

    def run(self) -> dict[str, Any]:
        try:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"projector-bench-{self.tag}-"))
            self.ensure_broker()
            try:
                report = asyncio.run(self.run_async())
            except asyncio.CancelledError:
                if self.interrupted:
                    raise KeyboardInterrupt from None
                raise
        finally:
            self.cleanup()
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.output.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        report["output"] = str(self.output)
        return report


def _first_record_at(ready_file: Path, t0: float, wall_t0: float) -> Optional[float]:
    """When (on the monotonic clock of ``t0``) a contestant noted its first record, if it has."""
    try:
        noted = float(ready_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return t0 + max(noted - wall_t0, 0.0)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Run the bench; return the report (also written as JSON to ``report["output"]``)."""
    return Bench(config).run()


# --- presentation -----------------------------------------------------------------


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(report: dict[str, Any]) -> str:
    header = ("contestant", "events", "seconds", "s from ready", "events/s", "CPU s/M ev", "peak RSS MiB",
              "state", "events/s vs projector")
    rows = [header]
    for r in report["results"]:
        ratio = (report["ratio_to_projector"].get(r["contestant"]) or {}).get("events_per_s")
        state = r["state"]
        if state == "WRONG":
            state = f"WRONG ({r['mismatches']}/{r['accounts_checked']})"
        elif state == "ok":
            state = f"ok ({r['accounts_checked']} checked)"
        fast = r["state"] in ("ok", "unchecked")
        rows.append((
            r["contestant"],
            str(r["events"]),
            _fmt(r["seconds"] if fast else None, ".1f"),
            _fmt(r["seconds_from_ready"] if fast else None, ".1f"),
            _fmt(r["events_per_s"], ",.0f"),
            _fmt(r["cpu_s_per_million"], ".1f"),
            _fmt(r["peak_rss_mib"], ".0f"),
            state,
            "-" if ratio is None else f"{ratio:.2f}x",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i in (0, 7) else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    m = report["machine"]
    tables = report.get("projector_tables", "all")
    head = (f"topic {report['topic']}: {report['events']} events, {report['partitions']} partitions, "
            f"projector folds {'every read model' if tables == 'all' else 'only ' + ', '.join(tables)} "
            "and its aggregate index; "
            f"broker {report['broker']}; machine: {m['nproc']} cpus, {m['memory_mib']} MiB, Python {m['python']}, "
            f"load average {m['loadavg_at_start'][0]:.1f} at start, {m['loadavg_at_end'][0]:.1f} at end")
    out = [head, "", *lines, ""]
    for g in report.get("goals", []):
        ratio = g["projector_over_peer"]
        verdict = "-" if ratio is None else ("met" if g["met"] else "NOT met")
        out.append(f"goal: projector / {g['peer']} events/s = {'-' if ratio is None else f'{ratio:.2f}x'} "
                   f"(goal >= {g['goal']:g}x): {verdict}")
    out.append("other figures (BENCHMARKS.md has each, with its latest numbers):")
    for f in report.get("other_figures", []):
        out.append(f"  {f['measures']}: {f['command']}")
    for note in report["notes"]:
        out.append(f"note: {note}")
    return "\n".join(out)


# --- command line ---------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", default=os.environ.get("PROJECTOR_BROKER") or DEFAULT_BROKER,
                   help="bootstrap servers (default: $PROJECTOR_BROKER or kafka://127.0.0.1:9092; the default "
                        "broker is started with deploy/kafka/kafka.sh when none answers, and stopped at the end)")
    p.add_argument("--topic", help="events topic (default: a fresh bench-<random>-events, deleted at the end); an "
                                   "existing topic with data is reused without producing")
    p.add_argument("--partitions", type=int, default=8, help="partitions of a topic the bench creates (default 8)")
    p.add_argument("--events", type=int, default=BenchConfig.events)
    p.add_argument("--accounts", type=int, default=BenchConfig.accounts)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="seconds each contestant may take to catch up (default 1800)")
    p.add_argument("--sample", type=int, default=None,
                   help=f"check a random sample of this many accounts (at least {MIN_SAMPLE}) instead of all")
    p.add_argument("--contestants", default=",".join(CONTESTANTS),
                   help=f"comma-separated, run in this order (default {','.join(CONTESTANTS)})")
    p.add_argument("--tables", help="comma-separated read models projector folds (default: every one in tables/); "
                   "--tables accounts does the same work as the peers, plus projector's aggregate index")
    p.add_argument("--output", type=Path, help="JSON report path (default bench-results/bench-<timestamp>.json)")
    p.add_argument("--keep-topics", action="store_true", help="keep the topics this run created")
    p.add_argument("--keep-data", action="store_true", help="keep the contestants' RocksDB data dirs")


def cmd_bench(args: argparse.Namespace) -> None:
    config = BenchConfig(
        broker=args.broker,
        topic=args.topic,
        partitions=args.partitions,
        events=args.events,
        accounts=args.accounts,
        seed=args.seed,
        timeout=args.timeout,
        sample=args.sample,
        contestants=tuple(c.strip() for c in args.contestants.split(",") if c.strip()),
        tables=tuple(t.strip() for t in args.tables.split(",")) if args.tables is not None else None,
        output=args.output,
        keep_topics=args.keep_topics,
        keep_data=args.keep_data,
        replication_factor=int(os.environ.get("PROJECTOR_REPLICATION_FACTOR") or 1),
    )
    if config.partitions < 1:
        sys.exit("projector bench: --partitions must be at least 1")
    try:
        report = run_bench(config)
    except BenchError as exc:
        sys.exit(f"projector bench: {exc}")
    except KeyboardInterrupt:
        sys.exit("projector bench: interrupted; stopped what it started")
    print(format_table(report))
    print(f"\nreport: {report['output']}")
    sys.exit(0 if all(r["state"] in ("ok", "unchecked") for r in report["results"]) else 1)
