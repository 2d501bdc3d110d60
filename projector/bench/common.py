"""What the ``projector bench*`` commands share: the broker, worker processes, teardown and the report.

The four commands (``projector bench``, ``bench-lookups``, ``bench-scale``
and ``bench-commands``) each start processes against a Kafka broker, measure,
stop what they started and write a JSON report. The pieces they have in common
live here, under public names:

- **the broker**: :func:`ensure_broker` starts the local one
  (``deploy/kafka/kafka.sh``) when none answers, :func:`stop_broker` stops it;
  :class:`Kafka` is an admin client and a group-less consumer for topics and
  offsets; :func:`kafka_for_run` deletes a run's topics on the way out;
  :func:`produce` writes envelopes keyed by aggregate id;
- **processes**: :class:`Workers` starts ``python -m projector worker``
  processes of one app id and waits until they are ready; :func:`stop_process`
  stops one process, only it, by PID; :func:`proc_cpu_seconds` and
  :func:`proc_peak_rss_mib` read what it and its child processes cost;
  :func:`tables_dir_with` makes a read-model folder of some read models only;
- **the report**: :func:`machine_info`, :func:`report_head`,
  :func:`latency_summary` (with :func:`percentile`), :func:`latency_header` and
  :func:`latency_line` for the printed tables, :func:`write_report`, and
  :func:`run_command`, the frame of ``bench-lookups``, ``bench-scale`` and
  ``bench-commands``: a work dir, the run, the report written, the work dir
  removed.

Progress goes to stderr through :func:`log` and :class:`Progress`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Iterable, Optional

import orjson

from projector.runtime.config import Settings, broker_reachable
from projector.runtime.kafka import client_options

if TYPE_CHECKING:
    import aiohttp

REPO = Path(__file__).resolve().parents[2]
KAFKA_SH = REPO / "deploy" / "kafka" / "kafka.sh"
DEFAULT_BROKER = "kafka://127.0.0.1:9092"
#: How long a stopped process may take before it is killed.
STOP_TIMEOUT = 30.0
#: Seconds between two looks at a process, an endpoint or an offset.
POLL = 0.2
#: Records :func:`produce` keeps in flight before it waits for them.
PRODUCE_IN_FLIGHT = 20_000


class BenchError(RuntimeError):
    """The bench cannot run (broker, topic, arguments); the message says why."""


# --- progress on stderr --------------------------------------------------------------


def log(msg: str) -> None:
    Progress.clear_line()
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class Progress:
    """A progress bar on stderr for a long phase: redrawn in place on a terminal, a line every ``every`` s otherwise."""

    _drawn = False  # a bar is on the terminal's last line

    def __init__(self, label: str, total: int, every: float, unit: str = "events") -> None:
        self.label, self.total, self.every, self.unit = label, max(total, 1), every, unit
        self.started = time.monotonic()
        self.last_line = self.started
        self.tty = sys.stderr.isatty()

    def update(self, done: int, extra: str = "") -> None:
        now = time.monotonic()
        frac = min(max(done / self.total, 0.0), 1.0)
        text = f"{done:,}/{self.total:,} {self.unit} ({100 * frac:.0f}%) after {now - self.started:.0f}s{extra}"
        if self.tty:
            bar = "#" * int(frac * 30)
            sys.stderr.write(f"\rbench: {self.label} [{bar:<30}] {text}\x1b[K")
            sys.stderr.flush()
            Progress._drawn = True
        elif now - self.last_line >= self.every:
            self.last_line = now
            log(f"{self.label} {text}")

    @staticmethod
    def clear_line() -> None:
        if Progress._drawn:
            sys.stderr.write("\r\x1b[K")
            Progress._drawn = False


# --- the broker ------------------------------------------------------------------------


def ensure_broker(bootstrap: list[str], broker: str, may_start: bool = True) -> bool:
    """Make sure a broker answers at ``bootstrap``; True when this started one (see :func:`stop_broker`).

    Only the default broker, 127.0.0.1:9092, is started (with
    deploy/kafka/kafka.sh), and only when ``may_start``; otherwise a broker
    that does not answer is a :class:`BenchError` naming ``broker``.
    """
    if any(broker_reachable(hp) for hp in bootstrap):
        return False
    if bootstrap != ["127.0.0.1:9092"] or not may_start:
        raise BenchError(f"no Kafka broker answers at {broker}; start it first")
    log("no broker on 127.0.0.1:9092: starting one (deploy/kafka/kafka.sh start)")
    proc = subprocess.run(["bash", str(KAFKA_SH), "start"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"deploy/kafka/kafka.sh start failed:\n{proc.stdout}{proc.stderr}")
    return True


def stop_broker() -> None:
    """Stop the broker :func:`ensure_broker` started."""
    log("stopping the broker this bench started")
    subprocess.run(["bash", str(KAFKA_SH), "stop"], capture_output=True, text=True)


class Kafka:
    """An admin client and a group-less consumer for offsets."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bootstrap = ",".join(settings.bootstrap_servers)
        self.admin: Any = None
        self.consumer: Any = None

    async def start(self, timeout: float = 60.0) -> None:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.errors import KafkaConnectionError

        deadline = time.monotonic() + timeout
        while True:
            admin = AIOKafkaAdminClient(**client_options(self.settings), request_timeout_ms=15000,
                                        client_id="projector-bench")
            try:
                await admin.start()
                break
            except KafkaConnectionError as exc:
                await admin.close()
                if time.monotonic() > deadline:
                    raise BenchError(f"cannot reach Kafka at {self.bootstrap}: {exc}") from exc
                await asyncio.sleep(1.0)
        self.admin = admin
        self.consumer = AIOKafkaConsumer(**client_options(self.settings), group_id=None,
                                         enable_auto_commit=False, client_id="projector-bench")
        await self.consumer.start()

    async def close(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
        if self.admin is not None:
            await self.admin.close()

    async def partitions(self, topic: str) -> Optional[int]:
        for t in await self.admin.describe_topics([topic]):
            if t["topic"] == topic and t["error_code"] == 0:
                return len(t["partitions"])
        return None

    async def create_topic(self, topic: str, partitions: int, replication_factor: int) -> None:
        from aiokafka.admin import NewTopic

        resp = await self.admin.create_topics(
            [NewTopic(topic, partitions, replication_factor,
                      topic_configs={"retention.ms": "-1", "retention.bytes": "-1"})]
        )
        obj = resp.to_object()
        for row in obj.get("topic_errors") or obj.get("topics") or []:
            if row["error_code"] not in (0, 36):  # 36: already exists
                raise BenchError(f"creating topic {topic!r} failed: error {row['error_code']} "
                                 f"{row.get('error_message') or ''}".strip())
        deadline = time.monotonic() + 30
        while await self.partitions(topic) != partitions:
            if time.monotonic() > deadline:
                raise BenchError(f"topic {topic!r} not visible 30s after creating it")
            await asyncio.sleep(0.2)

    async def offsets(self, topic: str, partitions: int) -> tuple[dict[int, int], dict[int, int]]:
        """(beginning, end) offsets per partition."""
        from aiokafka import TopicPartition

        tps = [TopicPartition(topic, p) for p in range(partitions)]
        begin = await self.consumer.beginning_offsets(tps)
        end = await self.consumer.end_offsets(tps)
        return {tp.partition: o for tp, o in begin.items()}, {tp.partition: o for tp, o in end.items()}

    async def committed(self, group: str, topic: str) -> dict[int, int]:
        """The group's committed offsets on ``topic`` (partitions without a commit are left out)."""
        offsets = await self.admin.list_consumer_group_offsets(group)
        return {tp.partition: om.offset for tp, om in offsets.items() if tp.topic == topic and om.offset >= 0}

    async def internal_lag(self, group: str) -> dict[str, int]:
        """Unconsumed records per internal input topic of ``group`` (``<group>-*`` but changelogs)."""
        names = [t for t in await self.list_topics() if t.startswith(f"{group}-")
                 and not t.endswith(("-changelog", "-__assignor-__leader"))]
        if not names:
            return {}
        offsets = await self.admin.list_consumer_group_offsets(group)
        lag = {}
        for name in sorted(names):
            n = await self.partitions(name)
            if not n:
                continue
            begin, end = await self.offsets(name, n)
            committed = {tp.partition: om.offset for tp, om in offsets.items() if tp.topic == name}
            lag[name] = sum(end[p] - min(max(committed.get(p, begin[p]), begin[p]), end[p]) for p in end)
        return lag

    async def delete_topics(self, names: list[str]) -> None:
        if names:
            await self.admin.delete_topics(names)

    async def list_topics(self) -> list[str]:
        return list(await self.admin.list_topics())


@asynccontextmanager
async def kafka_for_run(settings: Settings, prefix: str) -> AsyncIterator[Kafka]:
    """A started :class:`Kafka`; on the way out every topic whose name starts with ``prefix`` is deleted."""
    kafka = Kafka(settings)
    await kafka.start()
    try:
        yield kafka
    finally:
        try:
            await kafka.delete_topics([n for n in await kafka.list_topics() if n.startswith(prefix)])
        finally:
            await kafka.close()


async def produce(settings: Settings, topic: str, envelopes: Iterable[dict[str, Any]], *, idempotent: bool = False,
                  progress: Optional[Progress] = None) -> int:
    """Produce ``envelopes`` (JSON) keyed by aggregate id, with acks=all; returns how many.

    ``progress`` is updated every :data:`PRODUCE_IN_FLIGHT` records, when they are acknowledged.
    """
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**client_options(settings), acks="all", enable_idempotence=idempotent,
                                linger_ms=20, max_batch_size=256 * 1024)
    await producer.start()
    n = 0
    try:
        pending = []
        for e in envelopes:
            pending.append(await producer.send(topic, key=e["aggregate_id"].encode(), value=orjson.dumps(e)))
            n += 1
            if len(pending) >= PRODUCE_IN_FLIGHT:
                await asyncio.gather(*pending)
                pending.clear()
                if progress is not None:
                    progress.update(n)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return n


# --- processes ---------------------------------------------------------------------------


def ephemeral_ports() -> range:
    """The ports the kernel gives outgoing connections (``ip_local_port_range``)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return range(low, high + 1)


#: Ports already handed out by this process.
_GIVEN: set[int] = set()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def claim_ports(ports: list[int]) -> bool:
    """Take ``ports`` for this process if none was handed out before and all are free now."""
    if any(p in _GIVEN for p in ports) or not all(_port_free(p) for p in ports):
        return False
    _GIVEN.update(ports)
    return True


def free_port(pair_offset: int = 0) -> int:
    """A free TCP port on 127.0.0.1 (and port+pair_offset free too, when asked), outside the ephemeral range.

    A port from the ephemeral range (what binding port 0 gives) can be taken
    as the local port of any outgoing connection (a Kafka client's, say)
    between now and the moment the server binds it: a worker started minutes
    later then fails with "address already in use". Ports below the range are
    never handed out that way; each is given once per process.
    """
    return free_ports([0, pair_offset] if pair_offset else [0])


def free_ports(offsets: list[int]) -> int:
    """A base port such that base + each of ``offsets`` is free, all outside the ephemeral range (see :func:`free_port`)."""
    ephemeral = ephemeral_ports()
    reach = max(offsets)
    pool = range(max(1024, ephemeral.start - 12000), ephemeral.start - reach)
    if ephemeral.start - 12000 < 1024:  # a range that starts low: take ports above it
        pool = range(ephemeral.stop, 65536 - reach)
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(500):
        base = rng.choice(pool)
        if claim_ports([base + offset for offset in offsets]):
            return base
    raise RuntimeError(f"no free ports at offsets {offsets} found in {pool}")


def _stat_fields(pid: int) -> Optional[list[str]]:
    """The fields of /proc/<pid>/stat from field 3 (state) on, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process descended from it that runs now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def proc_cpu_seconds(pid: int) -> Optional[float]:
    """User + system CPU seconds of ``pid`` and all its descendants, in seconds.

    Each running process counts its threads (utime, stime); children that
    have exited and were waited for count through their parent's cutime and
    cstime. None if ``pid`` itself is gone.
    """
    total = 0
    for i, p in enumerate(process_tree(pid)):
        fields = _stat_fields(p)
        if fields is None:
            if i == 0:
                return None
            continue
        # fields[0] is field 3 (state); utime, stime, cutime, cstime are fields 14 to 17.
        total += sum(int(f) for f in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def proc_peak_rss_mib(pid: int) -> Optional[float]:
    """VmHWM (peak resident set size) of ``pid`` plus that of each running descendant, in MiB."""
    total, found = 0, False
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
                    found = True
        except OSError:
            pass
    return total / 1024 if found else None


def tables_dir_with(names: Iterable[str], dest: Path, source: Optional[Path] = None) -> Path:
    """A read-model folder at ``dest`` with only the read models ``names`` of ``source`` (default: the
    worker's own), and the modules that declare no read model (upcasters, settings). Raises ValueError
    naming the read models there are when a name is not one of them."""
    from projector.core.catalog import default_tables_dir, load_catalog

    source = source or default_tables_dir()
    catalog = load_catalog(source)
    wanted = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    unknown = [n for n in wanted if catalog.get(n) is None]
    if unknown or not wanted:
        raise ValueError(f"--tables: no read model {', '.join(unknown) or '(none given)'} in {source}; "
                         f"there are: {', '.join(m.name for m in catalog.all)}")
    keep = {Path(catalog.get(n).module.__file__).name for n in wanted}
    dest.mkdir(parents=True, exist_ok=True)
    for module in catalog.modules:
        path = Path(module.__file__)
        if path.name in keep or not hasattr(module, "NAME"):
            shutil.copy2(path, dest / path.name)
    load_catalog(dest)  # a re-keyed model without its SOURCE says so here
    return dest


def stop_process(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> str:
    """SIGTERM ``proc`` (only it, by PID); SIGKILL when it outlives ``timeout``."""
    if proc.poll() is not None:
        return f"already exited ({proc.returncode})"
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
        return "stopped (SIGTERM)"
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return f"killed (SIGKILL after {timeout:.0f}s)"


def worker_vars(broker: str, app_id: str, topic: str, partitions: int, data_dir: Path, port: int,
                control_topic: Optional[str] = None) -> dict[str, str]:
    """The ``PROJECTOR_*`` variables of one worker on 127.0.0.1:``port``; the control topic defaults to ``<app_id>-control``."""
    return {
        "PROJECTOR_BROKER": broker,
        "PROJECTOR_APP_ID": app_id,
        "PROJECTOR_EVENTS_TOPIC": topic,
        "PROJECTOR_CONTROL_TOPIC": control_topic or f"{app_id}-control",
        "PROJECTOR_PARTITIONS": str(partitions),
        "PROJECTOR_DATA_DIR": str(data_dir),
        "PROJECTOR_WEB_HOST": "127.0.0.1",
        "PROJECTOR_WEB_PORT": str(port),
    }


def parse_metrics(text: str) -> dict[str, float]:
    """A Prometheus exposition as ``{"name{labels}": value}``, in the order of its lines; comments skipped."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


async def fetch_metrics(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """``GET {url}/metrics``, parsed (:func:`parse_metrics`)."""
    async with session.get(f"{url}/metrics") as r:
        return parse_metrics(await r.text())


class Workers:
    """``python -m projector worker`` processes of one app id (one consumer group) on one events topic.

    Worker ``name`` keeps its data in ``<workdir>/<app_id>/<name>`` and writes
    its output to ``<workdir>/<app_id>-<name>.log``; it serves on a port of
    its own, the same one when it is started again. Leaving a ``with`` block
    stops them all.
    """

    def __init__(self, settings: Settings, topic: str, partitions: int, workdir: Path, app_id: str,
                 env: Optional[dict[str, str]] = None) -> None:
        self.settings, self.topic, self.partitions, self.workdir, self.app_id = settings, topic, partitions, workdir, app_id
        #: More environment variables for the workers started from now on (``PROJECTOR_TABLES_DIR``, say).
        self.env: dict[str, str] = dict(env or {})
        self.procs: dict[str, subprocess.Popen] = {}
        self.urls: dict[str, str] = {}

    def data_dir(self, name: str) -> Path:
        return self.workdir / self.app_id / name

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{self.app_id}-{name}.log"

    def start(self, name: str) -> str:
        """Start worker ``name``; returns its URL."""
        port = int(self.urls[name].rsplit(":", 1)[1]) if name in self.urls else free_port()
        env = dict(os.environ, **worker_vars(self.settings.broker, self.app_id, self.topic, self.partitions,
                                             self.data_dir(name), port), **self.env)
        env.pop("PROJECTOR_API_TOKEN", None)
        env.pop("PROJECTOR_API_TOKEN_FILE", None)
        with open(self.log_path(name), "ab") as log_file:
            self.procs[name] = subprocess.Popen([sys.executable, "-m", "projector", "worker"], env=env,
                                                stdout=log_file, stderr=subprocess.STDOUT)
        self.urls[name] = f"http://127.0.0.1:{port}"
        return self.urls[name]

    def kill9(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop(self, name: Optional[str] = None) -> None:
        """Stop worker ``name``, or every one, each by its PID."""
        for n in ([name] if name else list(self.procs)):
            stop_process(self.procs[n])

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    async def ready(self, session: aiohttp.ClientSession, names: list[str], timeout: float = 600) -> float:
        """Wait until every named worker answers /readyz with 200; returns when that happened."""
        import aiohttp

        deadline = time.monotonic() + timeout
        for name in names:
            while True:
                if self.procs[name].poll() is not None:
                    raise BenchError(f"{self.app_id}/{name} exited; see {self.log_path(name)}")
                try:
                    async with session.get(f"{self.urls[name]}/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise BenchError(f"{self.app_id}/{name} not ready in {timeout:.0f} s")
                await asyncio.sleep(POLL)
        return time.monotonic()

    async def metrics(self, session: aiohttp.ClientSession, names: list[str]) -> dict[str, dict[str, float]]:
        """Each named worker's /metrics (:func:`parse_metrics`); empty for one that does not answer."""
        import aiohttp

        out = {}
        for name in names:
            try:
                out[name] = await fetch_metrics(session, self.urls[name])
            except aiohttp.ClientError:
                out[name] = {}
        return out


# --- the report ---------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    mem_total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = round(int(line.split()[1]) / 1024)
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = None
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for dist in ("faust-streaming", "aiokafka", "rocksdict", "orjson", "quixstreams", "confluent-kafka"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = None
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": affinity,
        "memory_mib": mem_total,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": list(os.getloadavg()),
        "packages": versions,
    }


def report_head(tool: str, settings: Settings) -> dict[str, Any]:
    """The first fields of a ``bench-*`` report: the command, when, on what machine, against which broker."""
    return {"tool": tool, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine_info(),
            "broker": settings.broker}


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank; ``values`` must not be empty."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def latency_summary(latencies: list[float], errors: int, seconds: float) -> dict[str, Any]:
    """Requests, errors, rate over ``seconds``, and p50/p99/max of ``latencies`` (seconds) in ms."""
    ms = [x * 1000 for x in latencies]
    return {
        "requests": len(latencies) + errors,
        "errors": errors,
        "rate": round((len(latencies) + errors) / seconds, 1),
        "p50_ms": round(statistics.median(ms), 2) if ms else None,
        "p99_ms": round(percentile(ms, 0.99), 2) if ms else None,
        "max_ms": round(max(ms), 2) if ms else None,
    }


def latency_header(width: int) -> str:
    """The header of a table of :func:`latency_summary` rows whose names are ``width`` wide."""
    return f"{'':>{width}} {'rate/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>7}"


def latency_line(name: str, row: dict[str, Any], width: int) -> str:
    """One :func:`latency_summary` row under :func:`latency_header`."""
    return (f"{name:>{width}} {row['rate']:>8} {row['p50_ms']!s:>8} {row['p99_ms']!s:>8} "
            f"{row['max_ms']!s:>8} {row['errors']:>7}")


def settings_for_broker(broker: Optional[str]) -> Settings:
    """The settings of this environment, with ``broker`` (when given) instead of $PROJECTOR_BROKER."""
    return Settings.from_env({**os.environ, **({"PROJECTOR_BROKER": broker} if broker else {})})


def write_report(report: dict[str, Any], output: Optional[str], kind: str) -> Path:
    """Write ``report`` as indented JSON to ``output``, by default ``bench-results/<kind>-<local time>.json``."""
    out = Path(output or f"bench-results/{kind}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return out


def run_command(prog: str, kind: str, args: argparse.Namespace,
                run: Callable[[argparse.Namespace, Settings, Path], Awaitable[dict[str, Any]]]) -> tuple[dict[str, Any], Path]:
    """Run a ``bench-*`` command: ``run(args, settings, workdir)`` in a fresh work dir; returns (report, its path).

    ``args`` has ``broker``, ``output`` and ``keep_data``. The work dir
    (the workers' data and logs) is removed at the end unless ``--keep-data``,
    or the run failed with a :class:`BenchError`: then it is kept for its logs,
    the command exits with ``prog: <the error> (logs in <workdir>)``.
    """
    settings = settings_for_broker(args.broker)
    workdir = Path(tempfile.mkdtemp(prefix=f"projector-{kind}-"))
    keep = args.keep_data
    try:
        report = asyncio.run(run(args, settings, workdir))
    except BenchError as exc:
        keep = keep or any(workdir.iterdir())
        sys.exit(f"{prog}: {exc}" + (f" (logs in {workdir})" if keep else ""))
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return report, write_report(report, args.output, kind)
