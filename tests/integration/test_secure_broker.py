"""projector on a secured broker (``deploy/kafka/kafka.sh --mode secure``): SASL, TLS and ACLs.

Workers fold and serve over SASL_SSL and over mutual TLS, side by side in one
group, while the CLI writes over SASL_PLAINTEXT and SASL_SSL; and each bad
setting (a wrong password, a missing ACL, no broker at all) ends a worker
within 60 s with an error that says which, and never shows a secret.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest
from support import fold_accounts, free_port, get, group_by, http, wait_for

from projector.demo.data import generate_histories

pytestmark = pytest.mark.integration

#: CONTRACT §1: a worker that cannot start ends within this many seconds.
START_LIMIT = 60.0


def _env(secure_kafka, listener: str, user: str = "projector", mechanism: str = "SCRAM-SHA-512",
         password_file: bool = True) -> dict[str, str]:
    """PROJECTOR_BROKER_* for ``user`` on one listener of the secured broker."""
    port = secure_kafka.base + {"sasl_ssl": 0, "ssl": 1, "sasl_plaintext": 2}[listener]
    env = {"PROJECTOR_BROKER": f"kafka://127.0.0.1:{port}",
           "PROJECTOR_BROKER_SECURITY_PROTOCOL": listener.upper()}
    if listener != "ssl":
        env.update({"PROJECTOR_BROKER_SASL_MECHANISM": mechanism, "PROJECTOR_BROKER_SASL_USERNAME": user})
        if password_file:
            env["PROJECTOR_BROKER_SASL_PASSWORD_FILE"] = str(secure_kafka.password_file(user))
        else:
            env["PROJECTOR_BROKER_SASL_PASSWORD"] = secure_kafka.password_file(user).read_text()
    if listener != "sasl_plaintext":
        env["PROJECTOR_BROKER_SSL_CAFILE"] = secure_kafka.tls("ca.pem")
    if listener == "ssl":
        env.update({"PROJECTOR_BROKER_SSL_CERTFILE": secure_kafka.tls(f"{user}.pem"),
                    "PROJECTOR_BROKER_SSL_KEYFILE": secure_kafka.tls(f"{user}.key")})
    return env


def _cli(names: dict[str, str], env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("PROJECTOR_")}
    full.update({"PROJECTOR_APP_ID": names["app_id"], "PROJECTOR_EVENTS_TOPIC": names["events"],
                 "PROJECTOR_CONTROL_TOPIC": names["control"], **env})
    return subprocess.run([sys.executable, "-m", "projector", *args], env=full, capture_output=True, text=True,
                          timeout=120)


def _rows(url: str, table: str) -> dict:
    status, body = get(f"{url}/tables/{table}?limit=1000")
    assert status == 200 and body["next_cursor"] is None, body
    return {r["key"]: (r["version"], r["value"]) for r in body["rows"]}


def test_workers_over_sasl_ssl_and_mutual_tls_fold_and_serve(secure_kafka, worker_factory, names):
    granted = secure_kafka.grant("User:projector", names["app_id"], names["events"], names["control"])
    assert f"--topic {names['app_id']}-" in granted and "--resource-pattern-type prefixed" in granted, granted
    sasl = worker_factory("sasl", partitions=4, extra_env=_env(secure_kafka, "sasl_ssl"))
    mtls = worker_factory("mtls", partitions=4, extra_env=_env(secure_kafka, "ssl"))
    for w in (sasl, mtls):
        w.wait_ready()

    # The CLI takes the same settings: demo events over SASL_PLAINTEXT (SCRAM-SHA-256), a control entry
    # straight to the topic over SASL_SSL (PLAIN, the password in the environment).
    produced = _cli(names, _env(secure_kafka, "sasl_plaintext", mechanism="SCRAM-SHA-256"),
                    "produce-demo", "--accounts", "80", "--events", "1200", "--seed", "5")
    assert produced.returncode == 0, produced.stderr
    plain = _env(secure_kafka, "sasl_ssl", mechanism="PLAIN", password_file=False)
    written = _cli(names, plain, "control", "set", "accounts.max_withdrawal", "700", "--direct")
    assert written.returncode == 0, written.stderr
    listed = _cli(names, plain, "control", "list", "--direct")
    assert listed.returncode == 0 and '"accounts.max_withdrawal": 700' in listed.stdout, listed

    accounts = fold_accounts(list(generate_histories(80, 1200, 5)))
    expected = {k: (r["version"], r["value"]) for k, r in accounts.items()}
    for w in (sasl, mtls):
        wait_for(lambda: _rows(w.url, "accounts") == expected, 120, f"{w.name} to serve every account")
        assert {k: v for k, (_, v) in _rows(w.url, "owners").items()} == group_by(accounts, "owner")
        wait_for(lambda: get(f"{w.url}/control")[1]["entries"].get("accounts.max_withdrawal") == 700, 30,
                 f"{w.name} to apply the control entry")
    assert get(f"{sasl.url}/status")[1]["partitions"] and get(f"{mtls.url}/status")[1]["partitions"]

    # Commands: each writer appends in a Kafka transaction, under the transactional ids granted.
    for w in (sasl, mtls):
        def opened(w: Any = w) -> Any:
            status, body = http("POST", f"{w.url}/commands?timeout_ms=20000", {
                "command_id": f"open-{w.name}", "aggregate_type": "account", "aggregate_id": f"secure-{w.name}",
                "type": "OpenAccount", "data": {"owner": "sec", "currency": "EUR"}}, timeout=60)
            assert status in (200, 503, 504), body
            return body if status == 200 else None

        assert wait_for(opened, 90, f"a command through {w.name}")["version"] == 1

    # Secrets are never logged or shown.
    password = secure_kafka.password_file("projector").read_text()
    for w in (sasl, mtls):
        assert password not in w.log_path.read_text(errors="replace")
        assert password not in str(get(f"{w.url}/status?all=1")[1])
    assert "SASL_SSL, SCRAM-SHA-512 as projector" in sasl.log_path.read_text(errors="replace")
    assert password not in produced.stdout + produced.stderr + written.stdout + written.stderr


def test_bad_settings_end_the_worker_within_60s_saying_which(secure_kafka, worker_factory, names, tmp_path):
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password")
    # projector may use the events and control topics, but not the app id this worker has.
    secure_kafka.grant("User:projector", names["app_id"], names["events"], names["control"])
    cases = {
        "password": ({**_env(secure_kafka, "sasl_ssl"), "PROJECTOR_BROKER_SASL_PASSWORD_FILE": str(wrong)}, {}),
        "outsider": (_env(secure_kafka, "sasl_ssl", user="outsider"), {}),
        "app-acl": (_env(secure_kafka, "sasl_ssl"), {"PROJECTOR_APP_ID": f"{names['app_id']}x"}),
        "unreachable": ({"PROJECTOR_BROKER": f"kafka://127.0.0.1:{free_port()}"}, {}),
    }
    started = time.monotonic()
    workers = {name: worker_factory(name, extra_env={**env, **extra}) for name, (env, extra) in cases.items()}
    logs = {}
    for name, w in workers.items():
        left = START_LIMIT - (time.monotonic() - started)
        try:
            code = w.proc.wait(timeout=max(0.1, left))
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name}: the worker still runs {START_LIMIT:.0f} s after it started:\n{w.log_tail()}")
        assert code != 0, f"{name}: exit status {code}\n{w.log_tail()}"
        logs[name] = w.log_path.read_text(errors="replace")

    assert "refused the login of user 'projector' with SCRAM-SHA-512" in logs["password"], logs["password"]
    assert "PROJECTOR_BROKER_SASL_PASSWORD" in logs["password"]
    # A missing ACL: the principal, the operation and the topic (or group), and the kafka-acls.sh line.
    outsider = logs["outsider"]
    assert "does not allow User:outsider" in outsider, outsider
    assert f"DESCRIBE on topic '{names['events']}'" in outsider, outsider
    assert "kafka-acls.sh" in outsider and "--allow-principal User:outsider" in outsider
    app, prefix = logs["app-acl"], f"{names['app_id']}x-"
    assert "does not allow User:projector" in app, app
    assert f"DESCRIBE on topic '{prefix}commands' (allowed now: nothing)" in app, app
    assert f"READ on group '{names['app_id']}x' (allowed now: nothing)" in app, app
    grants = app.split("Grant it")[-1]
    assert f"--topic {prefix} --resource-pattern-type prefixed" in grants, grants
    assert f"--group {names['app_id']}x" in grants, grants
    assert f"--topic {names['events']}" not in grants, "the events topic is allowed"
    assert "cannot reach Kafka at 127.0.0.1:" in logs["unreachable"], logs["unreachable"]
    for name, log in logs.items():
        assert "Traceback" not in log, f"{name}: an error, not a crash, should end the worker:\n{log}"
        assert secure_kafka.password_file("projector").read_text() not in log
