"""projector.bench.compare: the printed table of ``projector bench``."""

from __future__ import annotations

from projector.bench.compare import format_table


def test_format_table_marks_a_wrong_state_and_shows_no_time_for_it():
    result = {"contestant": "", "events": 1000, "seconds": 2.0, "seconds_from_ready": 1.0, "events_per_s": 500.0,
              "cpu_s_per_million": 1500.0, "peak_rss_mib": 100.0, "state": "ok", "mismatches": 0,
              "accounts_checked": 10}
    report = {
        "topic": "t", "events": 1000, "partitions": 2, "broker": "127.0.0.1:9092",
        "machine": {"nproc": 4, "memory_mib": 1024, "python": "3.11.9", "loadavg_at_start": [0.5, 0, 0],
                    "loadavg_at_end": [1.25, 0, 0]},
        "results": [{**result, "contestant": "projector"},
                    {**result, "contestant": "quix", "state": "WRONG", "mismatches": 3, "events_per_s": None}],
        "ratio_to_projector": {"projector": {"events_per_s": 1.0}, "quix": None},
        "goals": [{"peer": "quix", "projector_over_peer": None, "goal": 2.0, "met": None}],
        "other_figures": [{"measures": "restore rate", "command": "projector bench-scale"}],
        "notes": ["a note"],
    }
    lines = format_table(report).splitlines()
    assert lines[0] == ("topic t: 1000 events, 2 partitions, projector folds every read model and its aggregate "
                        "index; broker 127.0.0.1:9092; machine: 4 cpus, 1024 MiB, "
                        "Python 3.11.9, load average 0.5 at start, 1.2 at end")
    only = format_table({**report, "projector_tables": ["accounts"]}).splitlines()[0]
    assert "projector folds only accounts and its aggregate index;" in only
    assert lines[2].split() == ["contestant", "events", "seconds", "s", "from", "ready", "events/s", "CPU", "s/M",
                                "ev", "peak", "RSS", "MiB", "state", "events/s", "vs", "projector"]
    assert lines[4].split() == ["projector", "1000", "2.0", "1.0", "500", "1500.0", "100", "ok", "(10", "checked)",
                                "1.00x"]
    assert lines[5].split() == ["quix", "1000", "-", "-", "-", "1500.0", "100", "WRONG", "(3/10)", "-"]
    assert "goal: projector / quix events/s = - (goal >= 2x): -" in lines
    assert lines[-2:] == ["  restore rate: projector bench-scale", "note: a note"]
