"""The bench's optional packages: imported only by the contestants that run, with a clear error when missing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from projector.bench import quix, raw
from projector.bench.extras import INSTALL_HINT, MissingExtra, require
from projector.runtime.kafka import settings_for

#: Every module of the bench, and the CLI that imports the commands.
BENCH_MODULES = ("projector.bench", "projector.bench.common", "projector.bench.compare", "projector.bench.extras",
                 "projector.bench.fold", "projector.bench.naive", "projector.bench.quix", "projector.bench.raw",
                 "projector.bench.lookups", "projector.bench.scale", "projector.bench.commands",
                 "projector.bench.indexes", "projector.bench.build", "projector.cli")


def test_require_returns_the_modules_it_imported():
    assert [m.__name__ for m in require("any", "json", "os")] == ["json", "os"]


def test_a_missing_extra_says_what_is_missing_and_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "quixstreams", None)  # as if it were not installed
    with pytest.raises(MissingExtra) as exc:
        require("quix", "quixstreams", "confluent_kafka")
    message = str(exc.value)
    assert message.startswith("the quix contestant needs quixstreams (import quixstreams), which is not installed")
    assert "pip install -e '.[bench]'" in message and "make bench" in message
    assert message.endswith(INSTALL_HINT)
    assert isinstance(exc.value, ImportError) and exc.value.name == "quixstreams"


def test_the_distribution_name_is_the_one_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)
    with pytest.raises(MissingExtra, match=r"the raw-confluent contestant needs confluent-kafka \(import confluent_kafka\)"):
        raw.ConfluentClient(settings_for("127.0.0.1:9092"), "events", "group")


def test_the_quix_contestant_exits_with_the_install_hint_before_touching_kafka(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "quixstreams", None)
    # A broker nobody listens on: the extras are checked before the topic is.
    argv = ["--broker", "127.0.0.1:1", "--topic", "events", "--group", "g", "--data-dir", str(tmp_path),
            "--state-file", str(tmp_path / "state.json")]
    with pytest.raises(SystemExit) as exc:
        quix.main(argv)
    assert str(exc.value.code).startswith("bench_quix: the quix contestant needs quixstreams")
    assert INSTALL_HINT in str(exc.value.code)
    assert not (tmp_path / "state.json").exists()


def test_no_bench_module_imports_an_extra():
    """In a fresh interpreter: every bench module imports with the extras blocked, and none pulls them in."""
    code = (
        "import importlib, json, sys\n"
        "extras = ('quixstreams', 'confluent_kafka')\n"
        "loaded = {}\n"
        f"for name in {BENCH_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "    loaded[name] = sorted(m for m in sys.modules if m.split('.')[0] in extras)\n"
        "print(json.dumps(loaded))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == {name: [] for name in BENCH_MODULES}


def test_every_bench_module_imports_without_the_extras():
    code = (
        "import importlib, sys\n"
        "sys.modules['quixstreams'] = None\n"
        "sys.modules['confluent_kafka'] = None\n"
        f"for name in {BENCH_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "ok"
