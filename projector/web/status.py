"""The status page at ``/`` and the ``/status`` JSON behind it.

Routes (installed by :mod:`projector.web.routes`; all behind the bearer-token
middleware of :mod:`projector.web.middleware`, like every route but
``/healthz``):

``GET /status``
    This worker, as JSON::

        {"worker": "http://127.0.0.1:6066",   # its URL (PROJECTOR_WEB_HOST/PORT)
         "ready": true, "detail": "ready",     # as /readyz sees it
         "partitions": [0, 2],                 # active partitions of the events topic
         "partitions_total": 8,                # partitions of the events topic
         "lag": [{"partition": 0, "lag": 12}], # records not yet read, per assigned partition
         "events_applied": {"<table>": 5000, ...},  # per read model, since the worker started
         "records_total": 5000,                # events-topic records handled since it started
         "deadletters": {"version_gap": 1},    # dead letters sent, by reason
         "control": {"offset": 3, "entries": {...}},  # the control table as GET /control
         "broker": {"reachable": true, "since": "2026-01-01T00:00:00Z"},  # as /readyz: Kafka reachable now, since when
         "group": {"instance_id": "host-6066", "generation": 7, "assignments": 2},  # in the consumer group:
                                               # PROJECTOR_INSTANCE_ID (null: none), the group's generation,
                                               # assignments received since the worker started (rebalances)
         "builds": {"<table>": {"version": 2, "remaining": 1200, "eta_seconds": 3.5, ...}},  # new versions
                                               # being built from history (GET /tables' "building")
         "warnings": ["the events topic ... deletes events (retention.ms=...)"],  # e.g. its retention
         "throughput": [[1767225510.0, 0], ...],      # [unix time, records_total], one a second,
                                               # the last 90 s, oldest first
         "time": 1767225600.123}               # unix seconds when the answer was made

``GET /status?all=1`` (also ``true``/``yes``/``on``; ``0``/``false``/``no``/``off``/empty mean this worker only; any other value, other case included, is 400)
    Every worker of the group::

        {"served_by": "<this worker's URL>", "time": ...,
         "workers": [<status of each worker, as above>, ...]}   # sorted by URL

    The other workers are the web URLs Faust's partition assignor knows
    (``app.router.table_metadata(<table>)``); each is asked ``GET /status``
    with a 2 s timeout and the peer token (never this request's ``Authorization``). A
    worker that does not answer, or answers an error, is listed as
    ``{"worker": url, "error": "..."}``; the request itself never fails for it.

``GET /``
    One self-contained HTML page (inline CSS and JS, no external assets) that
    polls ``/status?all=1`` every 1.5 s and shows, per worker: ready or not,
    its partitions with their lag, new read-model versions being built
    (records left, rate, ETA), warnings, events applied per table, dead
    letters by reason, the control table, and a live throughput chart: records/s from the
    deltas of ``records_total`` between the worker's one-a-second samples in
    ``throughput`` (so the last 90 s show at once and do not depend on how
    often the browser polls), drawn as inline SVG. A worker whose answer has
    no ``throughput`` is charted from the deltas between the page's polls.

    Authentication: with ``PROJECTOR_API_TOKEN`` set, open the page as
    ``/?token=<t>``. A browser cannot send a header when it opens a page, so
    the middleware (:mod:`projector.web.middleware`) takes the token from the
    query for ``GET /`` only (the page holds no data); the page then drops it from the
    address bar and sends it as ``Authorization: Bearer <t>`` on its own
    requests. ``/#token=<t>`` works too, with the page itself behind a header.

Faust serves a placeholder ``{"status": "OK"}`` index at ``/`` when its
statistics pages are off; :func:`unindex_placeholder` takes it out of the
route index so this page answers there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Optional

import aiohttp
import orjson
from aiohttp import web

from projector.core.engine import INDEX
from projector.web.auth import peer_headers
from projector.web.forwarding import Peers
from projector.web.responses import json_error, json_response

if TYPE_CHECKING:
    from projector.runtime.app import Projector

log = logging.getLogger(__name__)

#: How long ``/status?all=1`` waits for each other worker.
PEER_TIMEOUT = 2.0
#: How often the page polls (milliseconds).
POLL_MS = 1500
#: The worker samples ``records_total`` this often (seconds), into ``Metrics.throughput`` (90 s).
SAMPLE_EVERY = 1.0

#: The values ``GET /status?all=`` takes, exactly (the OpenAPI document lists them; anything else is 400).
STATUS_ALL = frozenset({"1", "true", "yes", "on"})
STATUS_MINE = frozenset({"", "0", "false", "no", "off"})


def _norm(url: Any) -> str:
    return str(url).rstrip("/")


def worker_status(projector: "Projector") -> dict[str, Any]:
    """The ``GET /status`` answer for this worker."""
    p = projector
    events_topic = p.settings.events_topic
    ready, detail = p.readiness()
    try:
        actives = p.app.assignor.assigned_actives()
    except Exception as exc:  # no assignment yet
        log.debug("no assignment to show: %r", exc)
        actives = set()
    partitions = sorted(tp.partition for tp in actives if tp.topic == events_topic)
    try:
        standbys = sorted({tp.partition for tp in p.app.assignor.assigned_standbys()})
    except Exception as exc:  # no assignment yet
        log.debug("no standby assignment to show: %r", exc)
        standbys = []
    if partitions:
        role = "active"
    elif standbys or ready:
        # More workers than partitions: this one only keeps standby replicas,
        # ready to take over when another worker leaves.
        role = "standby"
    else:
        role = "starting"
    lag = [{"partition": partition, "lag": n} for topic, partition, n in p.consumer_lag() if topic == events_topic]
    m = p.metrics
    return {
        "worker": p.settings.url,
        "ready": ready,
        "detail": detail,
        "role": role,
        "partitions": partitions,
        "standby_partitions": standbys,
        "partitions_total": p.partitions,
        "recovery": [x.to_json() for x in p.recovery_progress.partitions if x.remaining > 0],
        "lag": lag,
        "events_applied": {model.name: m.events_applied[model.name] for model in p.catalog.all},
        "records_total": m.records_seen,
        "deadletters": dict(m.deadletters),
        "control": p.control.snapshot(),
        "broker": p.broker.snapshot(),
        "group": p.group_membership(),
        # New read-model versions being built from history, by read model (CONTRACT §6).
        "builds": {name: p.builds.summary(name) for name in p.builds.builds if p.builds.building(name)},
        # Why events may be lost (the events topic's retention), if so.
        "warnings": [w for w in (p.settings.retention_warning,) if w],
        "throughput": [[t, n] for t, n in m.throughput],
        "time": time.time(),
    }


def peer_urls(projector: "Projector") -> list[str]:
    """Web URLs of the other workers of the group, as Faust's assignor knows them."""
    p = projector
    me = _norm(p.settings.url)
    urls: set[str] = set()
    try:
        urls.update(_norm(u) for u in p.app.router.table_metadata(INDEX))
        urls.update(_norm(u) for u in p.app.router.tables_metadata())
    except Exception as exc:  # before the first assignment
        log.debug("no worker metadata yet: %r", exc)
    urls.discard(me)
    return sorted(u for u in urls if u)


class StatusViews:
    def __init__(self, projector: "Projector") -> None:
        self.projector = projector
        self.peers = Peers(projector, timeout=PEER_TIMEOUT)
        self._sampler: Optional[asyncio.Task] = None

    async def start(self, app: web.Application) -> None:
        if self._sampler is None:
            self._sampler = asyncio.ensure_future(self._sample_forever())

    async def close(self, app: web.Application) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
        await self.peers.close()

    async def _sample_forever(self) -> None:
        """Note ``records_total`` every second, idle or not: the page draws records/s from these deltas."""
        while True:
            self.projector.metrics.sample()
            await asyncio.sleep(SAMPLE_EVERY)

    def mine(self) -> dict[str, Any]:
        return worker_status(self.projector)

    async def status(self, request: web.Request) -> web.Response:
        raw = request.query.get("all", "0")
        if raw not in STATUS_ALL | STATUS_MINE:
            allowed = sorted(STATUS_ALL | STATUS_MINE)
            return json_error(400, "invalid", detail=f"all must be one of {allowed}, got {raw!r}")
        if raw in STATUS_MINE:
            return json_response(self.mine())
        me = self.projector.settings.url
        try:
            mine: dict[str, Any] = self.mine()
        except Exception as exc:
            log.exception("status of this worker failed")
            mine = {"worker": me, "error": f"{type(exc).__name__}: {exc}"}
        others = await asyncio.gather(*(self._peer(url) for url in peer_urls(self.projector)))
        workers = sorted([mine, *others], key=lambda w: str(w.get("worker", "")))
        return json_response({"served_by": me, "time": time.time(), "workers": workers})

    async def _peer(self, url: str) -> dict[str, Any]:
        # The peer token, never this request's Authorization header: a worker does not hand a client's token on.
        headers = {"Accept": "application/json", **peer_headers(self.projector.settings)}
        try:
            async with self.peers.session.get(f"{url}/status", headers=headers) as r:
                raw = await r.read()
                try:
                    body = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    return {"worker": url, "error": f"HTTP {r.status}: not JSON"}
                if r.status != 200 or not isinstance(body, dict) or "error" in body:
                    what = body.get("error") if isinstance(body, dict) else None
                    detail = body.get("detail") if isinstance(body, dict) else None
                    text = f"HTTP {r.status}" + (f": {what}" if what else "") + (f" ({detail})" if detail else "")
                    return {"worker": url, "error": text}
                body.setdefault("worker", url)
                return body
        except asyncio.TimeoutError:
            return {"worker": url, "error": f"no answer within {PEER_TIMEOUT:g} s"}
        except (aiohttp.ClientError, OSError) as exc:
            return {"worker": url, "error": f"{type(exc).__name__}: {exc}"}
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never fail the whole request for one worker
            log.warning("status of %s failed: %r", url, exc)
            return {"worker": url, "error": f"{type(exc).__name__}: {exc}"}

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(
            text=PAGE, content_type="text/html", charset="utf-8",
            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
        )


def unindex_placeholder(router: web.UrlDispatcher) -> None:
    """Take Faust's placeholder index at ``/`` (``{"status": "OK"}``) out of the route index: the page answers there."""
    for resource in list(router.resources()):
        if isinstance(resource, web.PlainResource) and resource.canonical == "/":
            router.unindex_resource(resource)


PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>projector status</title>
<style>
  :root {
    --bg: #f4f5f7; --card: #fff; --ink: #1d2330; --muted: #6b7385; --line: #e3e6ec;
    --ok: #1f8a4c; --ok-bg: #e3f4ea; --bad: #b42318; --bad-bg: #fdecea; --warn: #9a6700; --warn-bg: #fff4d6;
    --accent: #3358d4; --accent-bg: #e8edfc;
  }
  * { box-sizing: border-box; }
  body { margin: 0; background: var(--bg); color: var(--ink);
         font: 14px/1.4 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; }
  header { display: flex; align-items: baseline; gap: 16px; flex-wrap: wrap;
           padding: 14px 24px; background: #1d2330; color: #fff; }
  header h1 { margin: 0; font-size: 18px; font-weight: 600; letter-spacing: .2px; }
  header .sub { color: #aab2c5; font-size: 13px; }
  header .right { margin-left: auto; font-size: 13px; color: #aab2c5; }
  main { padding: 18px 24px 32px; }
  .banner { padding: 10px 14px; border-radius: 6px; margin-bottom: 14px; background: var(--bad-bg); color: var(--bad); }
  .summary { display: flex; gap: 12px; flex-wrap: wrap; margin-bottom: 16px; }
  .pill { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 8px 14px; }
  .pill b { display: block; font-size: 18px; font-variant-numeric: tabular-nums; }
  .pill span { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .4px; }
  .pmap { display: flex; gap: 4px; flex-wrap: wrap; margin-top: 4px; }
  .pmap i { font-style: normal; min-width: 26px; text-align: center; padding: 2px 4px; border-radius: 4px;
            font-size: 12px; font-variant-numeric: tabular-nums; color: #fff; }
  .grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 16px; }
  .card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 14px 16px; min-width: 0; }
  .card h2 { margin: 0; font-size: 15px; font-weight: 600; display: flex; align-items: center; gap: 10px; }
  .card h2 .dot { width: 10px; height: 10px; border-radius: 50%; flex: none; }
  .card .detail { color: var(--muted); font-size: 12px; margin: 2px 0 10px 20px; }
  .badge { font-size: 11px; font-weight: 600; padding: 2px 8px; border-radius: 10px; text-transform: uppercase; letter-spacing: .4px; }
  .badge.ok { background: var(--ok-bg); color: var(--ok); }
  .badge.bad { background: var(--bad-bg); color: var(--bad); }
  .badge.warn { background: var(--warn-bg); color: var(--warn); }
  .cols { display: grid; grid-template-columns: 1fr 1fr; gap: 6px 20px; }
  section { min-width: 0; }
  h3 { margin: 10px 0 4px; font-size: 11px; font-weight: 600; color: var(--muted); text-transform: uppercase; letter-spacing: .5px; }
  table { border-collapse: collapse; width: 100%; font-size: 13px; }
  td, th { padding: 3px 6px 3px 0; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
  th { font-weight: 500; color: var(--muted); font-size: 12px; }
  td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; padding-right: 0; }
  td.zero { color: var(--muted); }
  code, .mono { font-family: "DejaVu Sans Mono", ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
  .val { color: var(--muted); word-break: break-all; }
  .chips { display: flex; gap: 6px; flex-wrap: wrap; }
  .chip { border: 1px solid var(--line); border-radius: 6px; padding: 2px 8px; font-size: 12px; background: #fafbfc;
          font-variant-numeric: tabular-nums; }
  .chip b { color: var(--accent); }
  .chip.lagging { border-color: #f0c36d; background: var(--warn-bg); }
  .none { color: var(--muted); font-style: italic; font-size: 13px; }
  .chartbox { margin-top: 6px; }
  .chartbox .rate { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; }
  .chartbox .rate small { font-size: 12px; color: var(--muted); font-weight: 400; }
  svg.chart { display: block; width: 100%; height: auto; background: #fafbfc; border: 1px solid var(--line); border-radius: 6px; }
  svg.chart text { font: 10px "DejaVu Sans", sans-serif; fill: var(--muted); }
  .error { color: var(--bad); background: var(--bad-bg); padding: 8px 10px; border-radius: 6px; font-size: 13px; }
  .loading { color: var(--muted); padding: 40px 0; text-align: center; }
  footer { color: var(--muted); font-size: 12px; margin-top: 18px; }
</style>
</head>
<body>
<header>
  <h1>projector</h1><span class="sub">worker status</span>
  <span class="right" id="updated">connecting&hellip;</span>
</header>
<main>
  <div id="banner"></div>
  <div id="summary" class="summary"></div>
  <div id="workers" class="grid"><div class="loading" id="loading">Loading worker status&hellip; (this page needs JavaScript; the data is at <a href="status?all=1">/status?all=1</a>)</div></div>
  <footer>Polls <code>/status?all=1</code> every POLL_MS ms. With an API token, open this page as <code>/?token=&lt;token&gt;</code>.</footer>
</main>
<script>
"use strict";
(function () {
  var POLL_MS = POLL_MS_VALUE, WINDOW_S = 90, HISTORY = 60;
  var COLORS = ["#3358d4", "#1f8a4c", "#c2410c", "#7c3aed", "#0e7490", "#be185d", "#4d7c0f", "#92400e"];
  var token = new URLSearchParams(location.search).get("token")
    || new URLSearchParams(location.hash.replace(/^#/, "")).get("token");
  if (new URLSearchParams(location.search).has("token")) {
    history.replaceState(null, "", location.pathname);  // keep the token out of the address bar
  }
  var hist = {};      // worker url -> [{t, rate}]
  var previous = {};  // worker url -> {time, records}
  var colorOf = {};

  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c];
    });
  }
  function fmt(n) { return Number(n).toLocaleString("en-US"); }
  function rateFmt(r) { return r >= 100 ? fmt(Math.round(r)) : (Math.round(r * 10) / 10).toString(); }
  function color(url) {
    if (!(url in colorOf)) colorOf[url] = COLORS[Object.keys(colorOf).length % COLORS.length];
    return colorOf[url];
  }

  function sample(w) {
    var h = hist[w.worker] || (hist[w.worker] = []);
    var prev = previous[w.worker];
    if (prev && w.time > prev.time && w.records_total >= prev.records) {
      h.push({t: w.time, rate: (w.records_total - prev.records) / (w.time - prev.time)});
      if (h.length > HISTORY) h.shift();
    } else if (prev && w.records_total < prev.records) {
      h.length = 0;  // the worker restarted: its counters start again
    }
    previous[w.worker] = {time: w.time, records: w.records_total};
    return h;
  }

  // records/s over time: from the worker's own one-a-second samples, else from the page's polls.
  function series(w) {
    var s = w.throughput;
    if (!s || s.length < 1) return sample(w);
    var out = [];
    for (var i = 1; i < s.length; i++) {
      var dt = s[i][0] - s[i - 1][0], dn = s[i][1] - s[i - 1][1];
      if (dt > 0 && dn >= 0) out.push({t: s[i][0], rate: dn / dt});
    }
    return out;
  }
  function currentRate(w, h) {
    var s = w.throughput;
    if (s && s.length >= 2) {  // the last 5 s, less jumpy than one second
      var a = s[Math.max(0, s.length - 6)], b = s[s.length - 1];
      return b[0] > a[0] && b[1] >= a[1] ? (b[1] - a[1]) / (b[0] - a[0]) : null;
    }
    return h.length ? h[h.length - 1].rate : null;
  }

  function chart(url, h, now) {
    var W = 520, H = 90, L = 34, R = 8, T = 10, B = 16;
    var max = 10;
    h.forEach(function (p) { if (p.rate > max) max = p.rate; });
    max = niceMax(max);
    var x = function (t) { return L + (W - L - R) * Math.min(1, Math.max(0, 1 - (now - t) / WINDOW_S)); };
    var y = function (r) { return T + (H - T - B) * (1 - r / max); };
    var pts = h.map(function (p) { return x(p.t).toFixed(1) + "," + y(p.rate).toFixed(1); });
    var c = color(url);
    var s = '<svg class="chart" data-worker="' + esc(url) + '" viewBox="0 0 ' + W + " " + H +
      '" role="img" aria-label="records per second, last ' + WINDOW_S + ' s">';
    [0, 0.5, 1].forEach(function (f) {
      var yy = y(max * f).toFixed(1);
      s += '<line x1="' + L + '" x2="' + (W - R) + '" y1="' + yy + '" y2="' + yy + '" stroke="#e3e6ec" stroke-width="1"/>';
      s += '<text x="' + (L - 4) + '" y="' + (Number(yy) + 3) + '" text-anchor="end">' + esc(short(max * f)) + "</text>";
    });
    s += '<text x="' + L + '" y="' + (H - 3) + '">' + WINDOW_S + " s ago</text>";
    s += '<text x="' + (W - R) + '" y="' + (H - 3) + '" text-anchor="end">now</text>';
    if (pts.length) {
      if (pts.length === 1) pts.unshift((x(h[0].t) - 4).toFixed(1) + "," + y(h[0].rate).toFixed(1));
      var base = y(0).toFixed(1), first = pts[0].split(",")[0], last = pts[pts.length - 1].split(",")[0];
      s += '<polygon fill="' + c + '" fill-opacity="0.12" points="' + first + "," + base + " " + pts.join(" ") + " " + last + "," + base + '"/>';
      s += '<polyline fill="none" stroke="' + c + '" stroke-width="2" stroke-linejoin="round" points="' + pts.join(" ") + '"/>';
    } else {
      s += '<text x="' + ((W + L) / 2) + '" y="' + (H / 2) + '" text-anchor="middle">collecting samples&hellip;</text>';
    }
    return s + "</svg>";
  }
  function niceMax(v) {
    var p = Math.pow(10, Math.floor(Math.log10(v))), m = v / p;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
  }
  function short(v) { return v >= 1000 ? (v / 1000).toFixed(v >= 10000 ? 0 : 1) + "k" : String(Math.round(v)); }

  function rows(obj, emptyText, cls) {
    var keys = Object.keys(obj || {}).sort();
    if (!keys.length) return '<div class="none">' + esc(emptyText) + "</div>";
    return '<table class="' + (cls || "") + '"><tbody>' + keys.map(function (k) {
      var v = obj[k];
      return '<tr><td>' + esc(k) + '</td><td class="num' + (v ? "" : " zero") + '">' + fmt(v) + "</td></tr>";
    }).join("") + "</tbody></table>";
  }

  function control(ctl) {
    ctl = ctl || {offset: -1, entries: {}};
    var keys = Object.keys(ctl.entries || {}).sort(), shown = keys.slice(0, 12);
    var s = '<div class="mono" style="margin-bottom:4px">offset ' + esc(ctl.offset) + " &middot; " + keys.length +
      (keys.length === 1 ? " entry" : " entries") + "</div>";
    if (!keys.length) return s + '<div class="none">no entries</div>';
    s += '<table class="control"><tbody>' + shown.map(function (k) {
      var v = JSON.stringify(ctl.entries[k]);
      if (v.length > 80) v = v.slice(0, 77) + "...";
      return '<tr><td class="mono">' + esc(k) + '</td><td class="mono val">' + esc(v) + "</td></tr>";
    }).join("") + "</tbody></table>";
    if (keys.length > shown.length) s += '<div class="none">and ' + (keys.length - shown.length) + " more</div>";
    return s;
  }

  function card(w) {
    var c = color(w.worker);
    if (w.error) {
      return '<div class="card worker" data-worker="' + esc(w.worker) + '"><h2><span class="dot" style="background:' + c +
        '"></span><span class="mono">' + esc(w.worker) + '</span><span class="badge bad">no answer</span></h2>' +
        '<div class="error" style="margin-top:10px">' + esc(w.error) + "</div></div>";
    }
    var h = series(w);
    var lagOf = {};
    (w.lag || []).forEach(function (l) { lagOf[l.partition] = l.lag; });
    var totalLag = (w.lag || []).reduce(function (a, l) { return a + l.lag; }, 0);
    var chips = (w.partitions || []).map(function (p) {
      var lag = lagOf[p];
      return '<span class="chip partition' + (lag ? " lagging" : "") + '" data-partition="' + p + '"><b>P' + p + "</b> lag " +
        (lag === undefined ? "?" : fmt(lag)) + "</span>";
    }).join("");
    var rate = currentRate(w, h);
    w.rate = rate;
    var dl = w.deadletters || {}, dlTotal = Object.keys(dl).reduce(function (a, k) { return a + dl[k]; }, 0);
    return '<div class="card worker" data-worker="' + esc(w.worker) + '">' +
      '<h2><span class="dot" style="background:' + c + '"></span><span class="mono">' + esc(w.worker) + "</span>" +
      (w.ready ? '<span class="badge ok">ready</span>' : '<span class="badge warn">not ready</span>') +
      (w.role === "standby" ? '<span class="badge warn" title="more workers than partitions: standby replicas only">standby</span>' : "") +
      (w.broker && !w.broker.reachable ? '<span class="badge warn broker" title="' + esc(w.broker.error || "") +
        '">Kafka unreachable since ' + esc(w.broker.since) + "</span>" : "") +
      "</h2>" +
      '<div class="detail">' + esc(w.detail) + " &middot; " + fmt(w.records_total) + " records handled &middot; lag " + fmt(totalLag) + "</div>" +
      "<h3>Partitions (" + (w.partitions || []).length + " of " + esc(w.partitions_total) + ") and lag</h3>" +
      '<div class="chips partitions">' + (chips || '<span class="none">' + (w.role === "standby"
        ? "none active: a standby, holding replicas of " + (w.standby_partitions || []).length + " partitions"
        : "no partitions assigned") + "</span>") + "</div>" +
      ((w.recovery || []).length ? "<h3>Restoring from changelogs</h3>" + '<div class="mono">' + w.recovery.map(function (r) {
        return esc(r.topic) + "[" + r.partition + "] " + esc(r.kind) + ": " + fmt(r.remaining) + " left, " + fmt(r.rate) +
          "/s, ETA " + (r.eta_seconds === null ? "?" : fmt(r.eta_seconds) + " s");
      }).join("<br>") + "</div>" : "") +
      (Object.keys(w.builds || {}).length ? '<h3>Building new read-model versions</h3><div class="mono builds">' +
        Object.keys(w.builds).sort().map(function (name) {
          var b = w.builds[name];
          return esc(name) + " version " + esc(b.version) + ": " + (b.remaining === null ? "?" : fmt(b.remaining)) +
            " records left, " + fmt(b.rate || 0) + "/s, ETA " + (b.eta_seconds === null ? "?" : fmt(b.eta_seconds) + " s") +
            (b.problem ? ' <span class="badge warn">' + esc(b.problem) + "</span>" : "");
        }).join("<br>") + "</div>" : "") +
      ((w.warnings || []).length ? '<div class="warnings">' + w.warnings.map(function (x) {
        return '<span class="badge warn">' + esc(x) + "</span>";
      }).join("<br>") + "</div>" : "") +
      '<div class="chartbox"><h3>Throughput</h3><div class="rate">' + (rate === null ? "&ndash;" : rateFmt(rate)) +
      " <small>records/s</small></div>" + chart(w.worker, h, w.time) + "</div>" +
      '<div class="cols"><section><h3>Events applied</h3>' + rows(w.events_applied, "no read models", "applied") + "</section>" +
      "<section><h3>Dead letters" + (dlTotal ? " (" + fmt(dlTotal) + ")" : "") + "</h3>" + rows(dl, "none", "deadletters") + "</section></div>" +
      "<h3>Control table</h3>" + control(w.control) +
      "</div>";
  }

  function summary(data) {
    var ws = data.workers || [], ok = ws.filter(function (w) { return !w.error; });
    var ready = ok.filter(function (w) { return w.ready; }).length;
    var total = 0, rate = 0, haveRate = false, parts = 0, owner = {};
    ok.forEach(function (w) {
      total += w.records_total || 0;
      parts = Math.max(parts, w.partitions_total || 0);
      (w.partitions || []).forEach(function (p) { owner[p] = w.worker; });
      if (w.rate !== null && w.rate !== undefined) { rate += w.rate; haveRate = true; }
    });
    var map = "";
    for (var p = 0; p < parts; p++) {
      map += owner[p] ? '<i title="' + esc(owner[p]) + '" style="background:' + color(owner[p]) + '">' + p + "</i>"
                      : '<i title="unassigned" style="background:#c4c9d4">' + p + "</i>";
    }
    return '<div class="pill"><b>' + ready + " / " + ws.length + "</b><span>workers ready</span></div>" +
      '<div class="pill"><b>' + (haveRate ? rateFmt(rate) : "&ndash;") + "</b><span>records/s, all workers</span></div>" +
      '<div class="pill"><b>' + fmt(total) + "</b><span>records handled</span></div>" +
      '<div class="pill"><span>partition owners</span><div class="pmap">' + (map || '<span class="none">unknown</span>') + "</div></div>";
  }

  function render(data) {
    var ws = data.workers || [];
    ws.forEach(function (w) { color(w.worker); });
    var cards = ws.map(card).join("");
    document.getElementById("summary").innerHTML = summary(data);
    document.getElementById("workers").innerHTML = cards || '<div class="none">no workers</div>';
    document.getElementById("banner").innerHTML = "";
    document.getElementById("updated").textContent = "served by " + data.served_by + " \u00b7 updated " +
      new Date(data.time * 1000).toLocaleTimeString("en-GB");
  }

  function problem(text) {
    document.getElementById("banner").innerHTML = '<div class="banner">' + esc(text) + "</div>";
    document.getElementById("updated").textContent = "not updated since " + new Date().toLocaleTimeString("en-GB");
  }

  function poll() {
    var headers = {"Accept": "application/json"};
    if (token) headers["Authorization"] = "Bearer " + token;
    var ctl = window.AbortController ? new AbortController() : null;
    var timer = ctl ? setTimeout(function () { ctl.abort(); }, 8000) : null;
    fetch("status?all=1", {headers: headers, cache: "no-store", signal: ctl ? ctl.signal : undefined})
      .then(function (r) {
        return r.json().then(function (body) {
          if (r.status === 401) throw new Error("unauthorized: open this page as /?token=<PROJECTOR_API_TOKEN>");
          if (!r.ok) throw new Error("HTTP " + r.status + ": " + (body.error || "") + " " + (body.detail || ""));
          return body;
        });
      })
      .then(render)
      .catch(function (e) { problem("Cannot read /status?all=1: " + (e && e.message ? e.message : e)); })
      .then(function () { if (timer) clearTimeout(timer); setTimeout(poll, POLL_MS); });
  }
  poll();
})();
</script>
</body>
</html>
""".replace("POLL_MS_VALUE", str(POLL_MS)).replace("every POLL_MS ms", f"every {POLL_MS / 1000:g} s")
