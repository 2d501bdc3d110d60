"""projector.bench.common: the pure parts the bench commands share, and their teardown.

No Kafka: the broker check is pointed at a port nobody listens on, or at a
socket this test opens; the process helpers stop a child Python this test starts.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from projector.bench import common
from projector.bench.common import (
    BenchError,
    Progress,
    ensure_broker,
    free_port,
    latency_header,
    latency_line,
    latency_summary,
    parse_metrics,
    percentile,
    run_command,
    stop_process,
    worker_vars,
    write_report,
)
from projector.core.errors import ReadModelError

# --- summary statistics --------------------------------------------------------------------


def test_percentile_is_the_nearest_rank_of_the_sorted_values():
    values = [float(v) for v in range(100, 0, -1)]  # 100 .. 1, unsorted on purpose
    assert percentile(values, 0.0) == 1.0
    assert percentile(values, 1.0) == 100.0
    assert percentile(values, 0.99) == 99.0  # rank round(0.99 * 99) = 98
    assert percentile([5.0], 0.99) == 5.0


def test_latency_summary_counts_errors_in_the_rate_and_reports_milliseconds():
    summary = latency_summary([0.003, 0.001, 0.002], errors=1, seconds=2.0)
    assert summary == {"requests": 4, "errors": 1, "rate": 2.0, "p50_ms": 2.0, "p99_ms": 3.0, "max_ms": 3.0}
    hundred = latency_summary([i / 1000 for i in range(100, 0, -1)], errors=0, seconds=4.0)
    assert hundred == {"requests": 100, "errors": 0, "rate": 25.0, "p50_ms": 50.5, "p99_ms": 99.0, "max_ms": 100.0}


def test_latency_summary_without_answers_has_no_latencies():
    assert latency_summary([], errors=3, seconds=1.5) == {
        "requests": 3, "errors": 3, "rate": 2.0, "p50_ms": None, "p99_ms": None, "max_ms": None}


# --- the printed tables ----------------------------------------------------------------------


def test_latency_lines_line_up_under_their_header():
    header = latency_header(24)
    row = {"rate": 499.8, "p50_ms": 1.25, "p99_ms": None, "max_ms": 12.5, "errors": 0}
    line = latency_line("local @ 500.0/s", row, 24)
    assert header == " " * 24 + "   rate/s   p50 ms   p99 ms   max ms  errors"
    assert line == "         local @ 500.0/s    499.8     1.25     None     12.5       0"
    assert len(line) == len(header)


# --- metrics and worker settings --------------------------------------------------------------------


def test_parse_metrics_keeps_labels_and_line_order_and_skips_comments():
    text = ('# HELP projector_records_total records\n'
            '# TYPE projector_records_total counter\n'
            'projector_records_total 1200\n'
            '\n'
            'projector_event_loop_lag_seconds_bucket{le="0.005"} 7\n'
            'projector_event_loop_lag_seconds_bucket{le="+Inf"} 9\n'
            'projector_consumer_lag{topic="t",partition="0"} 0.0\n')
    metrics = parse_metrics(text)
    assert list(metrics) == ['projector_records_total', 'projector_event_loop_lag_seconds_bucket{le="0.005"}',
                             'projector_event_loop_lag_seconds_bucket{le="+Inf"}',
                             'projector_consumer_lag{topic="t",partition="0"}']
    assert metrics["projector_records_total"] == 1200.0
    assert metrics['projector_event_loop_lag_seconds_bucket{le="+Inf"}'] == 9.0


def test_worker_vars_name_the_control_topic_after_the_app_unless_told(tmp_path):
    env = worker_vars("kafka://127.0.0.1:9092", "lk1", "lk1-events", 8, tmp_path / "w1", 6100)
    assert env == {
        "PROJECTOR_BROKER": "kafka://127.0.0.1:9092", "PROJECTOR_APP_ID": "lk1", "PROJECTOR_EVENTS_TOPIC": "lk1-events",
        "PROJECTOR_CONTROL_TOPIC": "lk1-control", "PROJECTOR_PARTITIONS": "8", "PROJECTOR_DATA_DIR": str(tmp_path / "w1"),
        "PROJECTOR_WEB_HOST": "127.0.0.1", "PROJECTOR_WEB_PORT": "6100",
    }
    assert worker_vars("b", "a", "t", 1, tmp_path, 1, "own-control")["PROJECTOR_CONTROL_TOPIC"] == "own-control"


# --- progress ----------------------------------------------------------------------------------


def test_progress_off_a_terminal_logs_a_line(capsys):
    progress = Progress("producing", 10, every=0.0)
    assert not progress.tty  # pytest captures stderr
    progress.update(5, " (extra)")
    err = capsys.readouterr().err
    assert err.startswith("bench: producing 5/10 events (50%) after ")
    assert err.endswith("s (extra)\n")


# --- the broker ----------------------------------------------------------------------------------


def test_ensure_broker_never_starts_one_that_is_not_the_default():
    port = free_port()  # closed again: nothing listens there
    with pytest.raises(BenchError, match=rf"no Kafka broker answers at kafka://127.0.0.1:{port}; start it first"):
        ensure_broker([f"127.0.0.1:{port}"], f"kafka://127.0.0.1:{port}")


def test_ensure_broker_uses_one_that_answers():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert ensure_broker([f"127.0.0.1:{port}"], f"kafka://127.0.0.1:{port}", may_start=False) is False


# --- processes -------------------------------------------------------------------------------------


def _child(code: str) -> subprocess.Popen:
    """A child Python that says "ready" once ``code`` ran, then waits for its stdin to close."""
    return subprocess.Popen([sys.executable, "-c", f"{code}\nimport sys\nprint('ready', flush=True)\nsys.stdin.read()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_stop_process_stops_a_running_child_by_sigterm_and_says_so_again():
    proc = _child("")
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert stop_process(proc, timeout=30) == "stopped (SIGTERM)"
        assert stop_process(proc) == "already exited (-15)"
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()


def test_stop_process_kills_a_child_that_ignores_sigterm():
    proc = _child("import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)")
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert stop_process(proc, timeout=0.2) == "killed (SIGKILL after 0s)"
        assert proc.returncode == -9
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()


# --- the report and the command's frame -----------------------------------------------------------------


def test_write_report_defaults_to_bench_results_and_writes_indented_json(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = write_report({"throughput": {1: {"seconds": 1.5}}}, None, "scale")
    assert out.parent == Path("bench-results") and out.name.startswith("scale-") and out.suffix == ".json"
    text = (tmp_path / out).read_text()
    assert json.loads(text) == {"throughput": {"1": {"seconds": 1.5}}}
    assert text.startswith('{\n  "throughput"')
    assert write_report({}, str(tmp_path / "deep" / "r.json"), "scale") == tmp_path / "deep" / "r.json"


def _args(tmp_path: Path, keep_data: bool = False) -> argparse.Namespace:
    return argparse.Namespace(broker="kafka://127.0.0.1:1", output=str(tmp_path / "report.json"), keep_data=keep_data)


def test_run_command_writes_the_report_and_removes_the_work_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(common.tempfile, "tempdir", str(tmp_path))
    seen = {}

    async def run(args, settings, workdir):
        seen.update(broker=settings.bootstrap_servers, workdir=workdir)
        (workdir / "w1.log").write_text("log")
        return {"tool": "t", "n": 1}

    report, out = run_command("projector bench-x", "x", _args(tmp_path), run)
    assert report == {"tool": "t", "n": 1}
    assert out == tmp_path / "report.json" and json.loads(out.read_text()) == report
    assert seen["broker"] == ["127.0.0.1:1"]
    assert seen["workdir"].name.startswith("projector-x-") and not seen["workdir"].exists()


def test_run_command_keeps_the_work_dir_with_keep_data(tmp_path, monkeypatch):
    monkeypatch.setattr(common.tempfile, "tempdir", str(tmp_path))
    seen = {}

    async def run(args, settings, workdir):
        seen["workdir"] = workdir
        return {}

    run_command("projector bench-x", "x", _args(tmp_path, keep_data=True), run)
    assert seen["workdir"].is_dir()


def test_run_command_on_a_bench_error_exits_with_it_and_keeps_the_logs(tmp_path, monkeypatch):
    monkeypatch.setattr(common.tempfile, "tempdir", str(tmp_path))
    seen = {}

    async def run(args, settings, workdir):
        seen["workdir"] = workdir
        (workdir / "w1.log").write_text("why it failed")
        raise BenchError("lk1/w1 exited")

    with pytest.raises(SystemExit) as exc:
        run_command("projector bench-x", "x", _args(tmp_path), run)
    assert exc.value.code == f"projector bench-x: lk1/w1 exited (logs in {seen['workdir']})"
    assert (seen["workdir"] / "w1.log").read_text() == "why it failed"
    assert not (tmp_path / "report.json").exists()


def test_run_command_on_a_bench_error_before_any_log_removes_the_empty_work_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(common.tempfile, "tempdir", str(tmp_path))
    seen = {}

    async def run(args, settings, workdir):
        seen["workdir"] = workdir
        raise BenchError("cannot reach Kafka at 127.0.0.1:1")

    with pytest.raises(SystemExit) as exc:
        run_command("projector bench-x", "x", _args(tmp_path), run)
    assert exc.value.code == "projector bench-x: cannot reach Kafka at 127.0.0.1:1"
    assert not seen["workdir"].exists()


# --- what a contestant costs, and what it folds -------------------------------------------------


def test_cpu_seconds_count_the_children_of_a_process():
    # A parent that only waits, and a child that burns CPU: the tree's CPU is the child's.
    burner = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\nimport sys; sys.stdout.write('done\\n'); sys.stdout.flush(); time.sleep(30)"
    parent = subprocess.Popen([sys.executable, "-c",
                               f"import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', {burner!r}]); time.sleep(30)"],
                              stdout=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            tree = common.process_tree(parent.pid)
            total = common.proc_cpu_seconds(parent.pid)
            if len(tree) == 2 and total is not None and total >= 0.55:
                break
            time.sleep(0.05)
        assert len(tree) == 2, tree
        assert total >= 0.55  # the child's 0.6 s, which the parent's own stat line does not have
        own = common._stat_fields(parent.pid)
        assert (int(own[11]) + int(own[12])) / os.sysconf("SC_CLK_TCK") < 0.5
        assert common.proc_peak_rss_mib(parent.pid) > 0
    finally:
        for pid in reversed(common.process_tree(parent.pid)):
            os.kill(pid, signal.SIGKILL)
        parent.wait()
    assert common.proc_cpu_seconds(parent.pid) is None


def test_tables_dir_with_keeps_only_the_named_read_models(tmp_path):
    d = common.tables_dir_with(["accounts"], tmp_path / "t")
    assert sorted(p.name for p in d.iterdir()) == ["accounts.py"]
    d = common.tables_dir_with(["accounts", "owners"], tmp_path / "u")
    assert sorted(p.name for p in d.iterdir()) == ["accounts.py", "owners.py"]


def test_tables_dir_with_names_the_read_models_there_are(tmp_path):
    with pytest.raises(ValueError, match="no read model nope .*there are: accounts, currencies, owners"):
        common.tables_dir_with(["nope"], tmp_path / "t")
    with pytest.raises(ReadModelError, match="SOURCE 'accounts'"):
        common.tables_dir_with(["owners"], tmp_path / "u")
