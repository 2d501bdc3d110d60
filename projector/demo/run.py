"""``projector demo``: the broker (if none runs), one worker, demo data, until Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson

from projector.demo.data import generate_histories, produce_events
from projector.runtime.config import Settings, broker_reachable
from projector.runtime.topics import ensure_topics

REPO = Path(__file__).resolve().parents[2]
KAFKA_SH = REPO / "deploy" / "kafka" / "kafka.sh"




def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read() or b"{}")


def run_demo(settings: Settings, accounts: int, events: int, seed: int) -> int:
    started_broker = False
    worker: subprocess.Popen | None = None
    stop = False

    def on_signal(signum, frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        if not any(broker_reachable(hp) for hp in settings.bootstrap_servers):
            if settings.bootstrap_servers != ["127.0.0.1:9092"]:
                print(f"demo: no broker answers at {settings.broker}; start it first", file=sys.stderr)
                return 1
            print("demo: starting the local Kafka broker (deploy/kafka/kafka.sh start)")
            subprocess.run([str(KAFKA_SH), "start"], check=True)
            started_broker = True
        else:
            print(f"demo: using the broker already running at {settings.broker}")

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = settings.data_dir / "worker.log"
        print(f"demo: starting a worker on {settings.url} (log: {log_path})")
        with open(log_path, "ab") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "projector", "worker"], stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy()
            )
        envelopes = list(generate_histories(accounts, events, seed))
        asyncio.run(ensure_topics(settings))
        asyncio.run(produce_events(settings, envelopes))
        print(f"demo: produced {len(envelopes)} events for {accounts} accounts to topic {settings.events_topic!r}")

        last = {}
        for env in envelopes:
            last[env["aggregate_id"]] = env["version"]
        sample = envelopes[-1]["aggregate_id"]
        url = f"{settings.url}/tables/accounts/{sample}"
        deadline = time.monotonic() + 180
        while not stop:
            if worker.poll() is not None:
                print(f"demo: the worker exited with {worker.returncode}; see {log_path}", file=sys.stderr)
                return 1
            try:
                status, body = _get(url)
            except (OSError, ValueError):
                status, body = 0, {}
            if status == 200 and body.get("version") == last[sample]:
                break
            if time.monotonic() > deadline:
                print(f"demo: {url} did not show version {last[sample]} within 180s; see {log_path}", file=sys.stderr)
                return 1
            time.sleep(0.5)
        if stop:
            return 130
        print()
        print(f"  {url}")
        print(f"  -> {orjson.dumps(body).decode()}")
        print()
        print("Try:")
        owner = body.get("value", {}).get("owner", "owner-0000")
        print(f"  curl {settings.url}/tables")
        print(f"  curl {url}")
        print(f"  curl {settings.url}/tables/owners/{owner}")
        print(f"  curl {settings.url}/tables/currencies/EUR")
        print(f"  curl '{settings.url}/aggregates/{sample}/events?from_version=1&limit=5'")
        print(f"  curl {settings.url}/metrics")
        print(f"  curl {settings.url}/control")
        print(f"  curl -X PUT {settings.url}/control/accounts.max_withdrawal -d 500")
        print(f"  curl {settings.url}/healthz")
        print()
        print("demo: serving until Ctrl-C")
        while not stop:
            if worker.poll() is not None:
                print(f"demo: the worker exited with {worker.returncode}; see {log_path}", file=sys.stderr)
                return 1
            time.sleep(0.5)
        return 0
    finally:
        if worker is not None and worker.poll() is None:
            print("demo: stopping the worker")
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        if started_broker:
            print("demo: stopping the broker it started")
            subprocess.run([str(KAFKA_SH), "stop"], check=False)
