"""The status page (issue 5, item 6): /status JSON, and / rendered by a real headless chromium.

Needs Debian's chromium at /usr/bin/chromium: ``deploy/browser.sh`` installs it
(``make test`` runs it first). Set PROJECTOR_UPDATE_SCREENSHOT=1 to copy the
screenshot to docs/status.png.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import struct
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
from support import REPO, get, http, produce, wait_for

from projector.core.partitioning import partition_for
from projector.demo.data import generate_histories

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CONTROL_KEY = "statuspage.demo"


def require_chromium() -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run deploy/browser.sh (make test runs it) to install Debian's chromium")


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Run headless chromium once, with a fresh profile, and let the page's JS run 8 s of virtual time."""
    profile = Path(tmp_path) / f"chromium-profile-{time.monotonic_ns()}"
    profile.mkdir(parents=True)
    cmd = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=8000", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=60)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"chromium did not finish within 60 s: {' '.join(cmd)}") from exc
    assert proc.returncode == 0, (
        f"chromium exited with {proc.returncode}: {' '.join(cmd)}\n{proc.stderr.decode(errors='replace')[-3000:]}"
    )
    return proc


def status(url: str, all_workers: bool = False, token: str | None = None) -> dict:
    code, body = get(f"{url}/status" + ("?all=1" if all_workers else ""), token=token, timeout=10)
    assert code == 200, (code, body)
    return body


def card_of(dom: str, worker_url: str) -> str:
    """The HTML of one worker's card in the rendered page."""
    marker = f'class="card worker" data-worker="{worker_url}"'
    start = dom.find(marker)
    assert start >= 0, f"no card for {worker_url} in the rendered page"
    end = dom.find('class="card worker"', start + len(marker))
    return dom[start:] if end < 0 else dom[start:end]


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def renamed(envelopes: list[dict], prefix: str) -> list[dict]:
    """The same histories under other aggregate ids (so they are new aggregates, not duplicates)."""
    out = []
    for e in envelopes:
        aid = e["aggregate_id"].replace("acc-", prefix)
        out.append({**e, "id": f"{prefix}{e['id']}", "aggregate_id": aid})
    return out


class Feeder(threading.Thread):
    """Produces envelopes at a steady pace (about 1,000 a second) from a thread."""

    def __init__(self, bootstrap: str, topic: str, envelopes: list[dict]) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.envelopes = bootstrap, topic, envelopes
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._feed())
        except BaseException as exc:  # reported by finish()
            self.error = exc

    async def _feed(self) -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
        await producer.start()
        try:
            for i in range(0, len(self.envelopes), 100):
                futures = [
                    await producer.send(self.topic, key=e["aggregate_id"].encode(), value=orjson.dumps(e))
                    for e in self.envelopes[i:i + 100]
                ]
                await asyncio.gather(*futures)
                await asyncio.sleep(0.1)
        finally:
            await producer.stop()

    def finish(self) -> None:
        self.join(timeout=120)
        assert not self.is_alive(), "the feeder did not finish"
        if self.error is not None:
            raise AssertionError(f"producing the live events failed: {self.error!r}")


def test_status_json_and_page_in_headless_chromium(worker_factory, names, kafka_bootstrap, tmp_path):
    require_chromium()
    envelopes = list(generate_histories(120, 2400, seed=11))
    assert {partition_for(e["aggregate_id"].encode(), 4) for e in envelopes} == {0, 1, 2, 3}
    w1 = worker_factory("w1", partitions=4)
    w2 = worker_factory("w2", partitions=4)
    w1.wait_ready()
    w2.wait_ready()
    produce(kafka_bootstrap, names["events"], [(e["aggregate_id"].encode(), orjson.dumps(e)) for e in envelopes])
    assert http("PUT", f"{w1.url}/control/{CONTROL_KEY}", {"x": 1})[0] == 202

    def settled():
        ws = [status(w.url) for w in (w1, w2)]
        parts = [set(s["partitions"]) for s in ws]
        return (
            all(s["ready"] for s in ws)
            and parts[0] | parts[1] == {0, 1, 2, 3}
            and not parts[0] & parts[1]
            and sum(s["events_applied"]["accounts"] for s in ws) >= len(envelopes)
            and all(CONTROL_KEY in s["control"]["entries"] for s in ws)
            and all(lag["lag"] == 0 for s in ws for lag in s["lag"])
            and ws
        )

    wait_for(settled, 120, "both workers ready, owning 0..3 between them, every event applied", interval=0.5)

    # --- /status: this worker only ------------------------------------------------
    one = status(w1.url)
    assert one["worker"] == w1.url
    assert set(one) >= {"worker", "ready", "detail", "partitions", "partitions_total", "lag", "events_applied",
                        "records_total", "deadletters", "control", "throughput", "time"}
    assert one["partitions_total"] == 4
    samples = one["throughput"]
    assert len(samples) >= 2 and all(len(pair) == 2 for pair in samples)
    assert [t for t, _ in samples] == sorted(t for t, _ in samples) and samples[-1][1] <= one["records_total"]
    assert one["ready"] is True and one["detail"] == "ready"
    assert {lag["partition"] for lag in one["lag"]} == set(one["partitions"])
    assert set(one["events_applied"]) >= {"accounts", "owners", "currencies"}
    assert one["records_total"] > 0 and one["deadletters"] == {}
    assert one["control"]["entries"][CONTROL_KEY] == {"x": 1} and one["control"]["offset"] >= 0
    assert abs(one["time"] - time.time()) < 60

    # --- /status?all=1: every worker, asked through either one --------------------
    for w in (w1, w2):
        every = status(w.url, all_workers=True)
        assert every["served_by"] == w.url
        by_url = {s["worker"]: s for s in every["workers"]}
        assert set(by_url) == {w1.url, w2.url}, every
        assert not any("error" in s for s in every["workers"]), every
        p1, p2 = set(by_url[w1.url]["partitions"]), set(by_url[w2.url]["partitions"])
        assert p1 and p2 and not p1 & p2 and p1 | p2 == {0, 1, 2, 3}
        for s in by_url.values():
            assert s["events_applied"]["accounts"] > 0
    assert get(f"{w1.url}/status?all=maybe")[0] == 400

    # --- the page itself: one self-contained HTML document ------------------------
    with urllib.request.urlopen(f"{w1.url}/", timeout=10) as r:
        assert r.status == 200 and r.headers.get_content_type() == "text/html"
        html = r.read().decode()
    assert "<script" in html and "<style" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "the page must not load external assets"
    assert "<link" not in html

    # --- what chromium renders, while more events flow (so the chart moves) --------
    feeder = Feeder(kafka_bootstrap, names["events"], renamed(list(generate_histories(200, 8000, seed=12)), "acc-live-"))
    feeder.start()
    started = time.monotonic()
    dom = chromium(tmp_path, "--dump-dom", f"{w1.url}/").stdout.decode()
    dump_seconds = time.monotonic() - started
    assert 'id="loading"' not in dom, f"the page never rendered the status:\n{dom[:3000]}"
    final = {s["worker"]: s for s in status(w1.url, all_workers=True)["workers"]}
    for w in (w1, w2):
        card = card_of(dom, w.url)
        assert '<span class="badge ok">ready</span>' in card, card
        shown = {int(p) for p in re.findall(r'class="chip partition[^"]*" data-partition="(\d+)"', card)}
        assert shown == set(final[w.url]["partitions"]), (w.name, shown, final[w.url]["partitions"])
        applied = dict(re.findall(r'<tr><td>(accounts)</td><td class="num">([\d,]+)</td></tr>', card))
        assert int(applied["accounts"].replace(",", "")) > 0, card
        assert CONTROL_KEY in card and '{"x":1}' in card, card
        assert re.search(r'<svg class="chart" data-worker="' + re.escape(w.url), card), "no chart"
        assert "<polyline" in card, "the chart has no line"

    # --- a screenshot -----------------------------------------------------------------
    time.sleep(max(0.0, 6.0 - (time.monotonic() - started)))
    shot = tmp_path / "status.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,1000", f"{w1.url}/")
    feeder.finish()
    data = shot.read_bytes()
    assert png_size(data) == (1280, 1000), png_size(data)
    assert len(data) > 20_000, f"the screenshot is only {len(data)} bytes: an empty page?"
    if os.environ.get("PROJECTOR_UPDATE_SCREENSHOT") == "1":
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copyfile(shot, REPO / "docs" / "status.png")
    print(f"chromium --dump-dom took {dump_seconds:.1f} s")


def test_status_all_passes_the_token_on_and_lists_a_dead_worker(worker_factory):
    token = "status-page-token"
    env = {"PROJECTOR_API_TOKEN": token}
    w1 = worker_factory("w1", partitions=4, extra_env=env)
    w2 = worker_factory("w2", partitions=4, extra_env=env)
    w1.wait_ready()
    w2.wait_ready()

    assert get(f"{w1.url}/status")[0] == 401
    assert get(f"{w1.url}/status?all=1")[0] == 401
    req = urllib.request.Request(f"{w1.url}/", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers.get_content_type() == "text/html"
    # A browser opens the page with ?token= (it cannot send a header); only the page takes it.
    with urllib.request.urlopen(f"{w1.url}/?token={token}", timeout=10) as r:
        assert r.headers.get_content_type() == "text/html"
    assert get(f"{w1.url}/?token=wrong")[0] == 401
    assert get(f"{w1.url}/")[0] == 401
    assert get(f"{w1.url}/status?token={token}")[0] == 401, "data routes take the token as a header only"

    def both_listed():
        every = status(w1.url, all_workers=True, token=token)
        by_url = {s["worker"]: s for s in every["workers"]}
        return set(by_url) == {w1.url, w2.url} and not any("error" in s for s in every["workers"]) and every

    wait_for(both_listed, 60, "w1's /status?all=1 to list both workers, w2 answering with the token passed on")

    # A worker that stops answering (kill -9: it stays in the group until its
    # session times out) is listed with an error; the answer is still 200.
    w2.kill9()
    every = status(w1.url, all_workers=True, token=token)
    by_url = {s["worker"]: s for s in every["workers"]}
    assert "error" not in by_url[w1.url]
    if w2.url in by_url:  # unless a rebalance already took it out of the group
        assert "error" in by_url[w2.url], by_url[w2.url]
