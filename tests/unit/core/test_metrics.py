"""Metrics kept by the worker: the fold batch histogram and events/s."""

from projector.core.metrics import BATCH_BUCKETS, Metrics
from projector.web.metrics import histogram_buckets


def test_batch_latency_histogram_is_cumulative_with_sum_and_count():
    m = Metrics()
    for seconds in (0.001, 0.02, 0.02, 3.0, 60.0):
        m.observe_batch(seconds)
    buckets = dict(histogram_buckets(m.batch_buckets))
    assert buckets["0.005"] == 1
    assert buckets["0.025"] == 3
    assert buckets["5.0"] == 4
    assert buckets["+Inf"] == 5
    assert list(buckets.values()) == sorted(buckets.values())
    assert len(buckets) == len(BATCH_BUCKETS) + 1
    assert round(m.batch_seconds_total, 3) == 63.041


def test_events_per_second_over_the_window():
    m = Metrics()
    m.events_per_second(now=100.0)  # first sample: 0 records
    m.records_seen = 3000
    m.sample(101.0)
    m.records_seen = 6000
    assert m.events_per_second(now=102.0) == 3000.0  # 6000 records over the 2 s since the first sample
    # Idle for longer than the window: nothing in it moved.
    assert m.events_per_second(now=200.0) == 0.0


def test_event_loop_lag_histogram_uses_its_own_buckets():
    from projector.core.metrics import LAG_BUCKETS

    m = Metrics()
    for seconds in (0.0002, 0.003, 0.3):
        m.observe_lag(seconds)
    buckets = dict(histogram_buckets(m.lag_buckets, LAG_BUCKETS))
    assert list(buckets) == [str(b) for b in LAG_BUCKETS] + ["+Inf"]
    assert buckets["0.001"] == 1
    assert buckets["0.005"] == 2
    assert buckets["0.25"] == 2
    assert buckets["0.5"] == 3
    assert buckets["+Inf"] == 3
