"""Two workers on one app id share the partitions, and each answers every key.

The second binds ``0.0.0.0`` and advertises ``localhost`` (PROJECTOR_WEB_BIND
and PROJECTOR_WEB_HOST), as a pod binds all addresses and advertises its DNS
name: the first forwards to it at the advertised address.
"""

from __future__ import annotations

import urllib.request

import orjson
import pytest
from support import get, produce, wait_for

from projector.core.partitioning import partition_for
from projector.demo.data import generate_histories

pytestmark = pytest.mark.integration


def test_two_workers_share_partitions_and_answer_every_key(worker_factory, names, kafka_bootstrap):
    envelopes = list(generate_histories(120, 2400, seed=11))
    last = {}
    for e in envelopes:
        last[e["aggregate_id"]] = e["version"]
    w1 = worker_factory("w1", partitions=4)
    w2 = worker_factory("w2", partitions=4,
                        extra_env={"PROJECTOR_WEB_BIND": "0.0.0.0", "PROJECTOR_WEB_HOST": "localhost"})
    w1.wait_ready()
    w2.wait_ready()
    produce(kafka_bootstrap, names["events"], [(e["aggregate_id"].encode(), orjson.dumps(e)) for e in envelopes])

    partitions_used = {partition_for(k.encode(), 4) for k in last}
    assert partitions_used == {0, 1, 2, 3}

    def versions(worker) -> dict:
        out = {}
        for aid in last:
            status, body = get(f"{worker.url}/tables/accounts/{aid}")
            out[aid] = body.get("version") if status == 200 else (status, body)
        return out

    for w in (w1, w2):
        wait_for(lambda: versions(w) == last, 120, f"{w.name} to serve every account at its last version",
                 interval=1.0)
    # Both workers give identical answers, whichever owns the key.
    for aid in list(last)[:40]:
        assert get(f"{w1.url}/tables/accounts/{aid}") == get(f"{w2.url}/tables/accounts/{aid}")

    # Each worker owns some partitions and forwards the rest to the other, at the address it advertises.
    def forwarded(worker) -> list[str]:
        served_by = []
        for aid in last:
            with urllib.request.urlopen(f"{worker.url}/tables/accounts/{aid}", timeout=20) as r:
                if "X-Projector-Served-By" in r.headers:
                    served_by.append(r.headers["X-Projector-Served-By"])
        return served_by

    f1, f2 = forwarded(w1), forwarded(w2)
    assert 0 < len(f1) < len(last) and 0 < len(f2) < len(last), (len(f1), len(f2))
    assert len(f1) + len(f2) == len(last), "every key is owned by exactly one of the two workers"
    assert set(f1) == {f"http://localhost:{w2.port}"}, set(f1)
    assert set(f2) == {w1.url}, set(f2)
    # w2 listens on every address (127.0.0.2 is loopback too), w1 only on the one it advertises.
    assert get(f"http://127.0.0.2:{w2.port}/healthz")[0] == 200
    with pytest.raises(OSError):
        get(f"http://127.0.0.2:{w1.port}/healthz", timeout=5)
