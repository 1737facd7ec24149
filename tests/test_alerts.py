"""Drift alerts are stored before they are sent and re-sent until delivered: a check that
cannot be stored sends nothing, an undelivered alert starts no cooldown and goes out once
Prefect answers again, several undelivered alerts give one event, two re-senders never both
send, and the monitor runs from its cached reference while MLflow is down.

The checks are real Evidently checks on real tweets (tests/test_monitor.py's traffic); the
Prefect fault is injected by replacing the delivery call (the real Prefect path is covered
by tests/test_monitor.py and the fault suite)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Column, MetaData, Table, create_engine, text, update
from test_monitor import STEP, T0, Traffic, free_port, make_config

from ftops import monitor
from ftops.monitor import checker, delivery, events, reference, results, store

POSTGRES = os.environ.get("FTOPS_TEST_POSTGRES_URL")


@pytest.fixture(scope="module")
def traffic(airline_snapshot) -> Traffic:
    return Traffic(airline_snapshot)


class FakePrefect:
    """The delivery call: records the check ids it delivered; `up` says whether it arrives."""

    def __init__(self):
        self.up = True
        self.delay_s = 0.0
        self.sent: list[int] = []
        self._lock = threading.Lock()

    def __call__(self, config, result) -> bool:
        time.sleep(self.delay_s)
        if self.up:
            with self._lock:
                self.sent.append(result.id)
        return self.up


@pytest.fixture
def prefect(monkeypatch) -> FakePrefect:
    fake = FakePrefect()
    monkeypatch.setattr(events, "emit_drift_event", fake)
    return fake


def alerting(root, **settings):
    """One drifted window is enough for an alert (persistence 1 of 1), cooldown 24 h."""
    return make_config(root, persistence_windows=1, persistence_hits=1, **settings)


def states(cfg) -> dict[int, tuple[str | None, bool | None]]:
    return {c.id: (c.event_state, c.event_sent) for c in monitor.history(cfg, last=100)}


# ---------------------------------------------------------------- store, then send


def test_a_check_that_cannot_be_stored_sends_nothing_and_the_next_one_alerts_once(traffic, prefect, tmp_path):
    cfg = alerting(tmp_path)
    cfg.timeouts.database_s = 0.5
    store.checks_engine(cfg).dispose()  # the database exists; now another writer holds it
    holder = sqlite3.connect(cfg.resolved().uris.prediction_log.removeprefix("sqlite:///"), timeout=1)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(monitor.MonitorError, match="not stored, no event was sent") as failed:
            monitor.check(cfg, traffic.window("other"), traffic.reference, now=T0)
    finally:
        holder.rollback()
        holder.close()
    assert "database is locked" in str(failed.value) and "timeouts.database_s=0.5" in str(failed.value)
    assert prefect.sent == [] and monitor.history(cfg) == []
    reports = monitor.monitoring_dir(cfg) / "reports"
    assert list(reports.iterdir()) == []  # the unstored check's report is gone too

    again = monitor.check(cfg, traffic.window("other"), traffic.reference, now=T0 + STEP)
    assert again.alert and again.event_sent is True and again.event_state == results.SENT
    assert prefect.sent == [again.id]
    later = monitor.check(cfg, traffic.window("other"), traffic.reference, now=T0 + 2 * STEP)
    assert not later.alert and "cooldown" in later.reason and prefect.sent == [again.id]


# ---------------------------------------------------------------- undelivered alerts


def test_an_undelivered_alert_starts_no_cooldown_and_is_resent_once(traffic, prefect, tmp_path):
    cfg = alerting(tmp_path)
    prefect.up = False
    first = monitor.check(cfg, traffic.window("other"), traffic.reference, now=T0)
    second = monitor.check(cfg, traffic.window("other"), traffic.reference, now=T0 + STEP)
    assert first.alert and first.event_sent is False and first.event_state == results.PENDING
    assert second.alert and second.event_sent is False  # no delivered alert: no cooldown
    assert states(cfg) == {first.id: (results.SUPERSEDED, False), second.id: (results.PENDING, False)}
    assert [a.id for a in monitor.pending_alerts(cfg)] == [second.id]

    prefect.up = True
    assert monitor.resend_pending(cfg, now=T0 + 2 * STEP) == 1
    assert monitor.resend_pending(cfg, now=T0 + 3 * STEP) == 0
    assert prefect.sent == [second.id]
    assert states(cfg)[second.id] == (results.SENT, True) and monitor.pending_alerts(cfg) == []
    quiet = monitor.check(cfg, traffic.window("other"), traffic.reference, now=T0 + 4 * STEP)
    assert not quiet.alert and "cooldown" in quiet.reason and prefect.sent == [second.id]


def test_the_next_check_resends_a_pending_alert_whatever_it_decides(traffic, prefect, tmp_path):
    cfg = alerting(tmp_path)
    prefect.up = False
    alert = monitor.check(cfg, traffic.window("other"), traffic.reference, now=T0)
    prefect.up = True
    small = monitor.check(cfg, traffic.window("airline", n=50), traffic.reference, now=T0 + STEP)
    assert small.decision == "too_small" and not small.alert and small.event_sent is None
    assert prefect.sent == [alert.id] and states(cfg)[alert.id] == (results.SENT, True)


def test_several_alerts_stored_by_senders_that_died_give_one_event(traffic, prefect, tmp_path, monkeypatch):
    """Checks that stored their alert and died before sending (Prefect down for hours, or a
    kill): the re-send delivers the newest, once, and supersedes the rest."""
    cfg = alerting(tmp_path)
    with monkeypatch.context() as died:
        died.setattr(checker, "_deliver", lambda *args: None)
        ids = [monitor.check(cfg, traffic.window("other"), traffic.reference, now=T0 + i * STEP).id for i in range(3)]
    assert [a.id for a in monitor.pending_alerts(cfg)] == ids[::-1]
    assert monitor.resend_pending(cfg, now=T0 + timedelta(hours=5)) == 1
    assert prefect.sent == [ids[-1]]
    assert states(cfg) == {ids[0]: (results.SUPERSEDED, False), ids[1]: (results.SUPERSEDED, False),
                           ids[2]: (results.SENT, True)}
    assert monitor.resend_pending(cfg, now=T0 + timedelta(hours=5)) == 0 and prefect.sent == [ids[-1]]


def test_the_cooldown_starts_from_the_delivered_alert(traffic, prefect, tmp_path):
    cfg = alerting(tmp_path)
    prefect.up = False
    alert = monitor.check(cfg, traffic.window("other"), traffic.reference, now=T0)
    prefect.up = True
    delivered = T0 + timedelta(hours=2)  # Prefect was down for two hours
    assert monitor.resend_pending(cfg, now=delivered) == 1
    assert monitor.history(cfg)[0].event_sent_at == delivered
    held = monitor.check(cfg, traffic.window("other"), traffic.reference, now=T0 + timedelta(hours=25))
    assert not held.alert and "cooldown until 2025-03-02 14:00 UTC" in held.reason  # 24 h after delivery
    after = monitor.check(cfg, traffic.window("other"), traffic.reference, now=delivered + timedelta(hours=24, minutes=1))
    assert after.alert and after.event_sent is True and prefect.sent == [alert.id, after.id]


# ---------------------------------------------------------------- several senders


def _stores() -> list:
    return ["sqlite", pytest.param("postgresql", marks=pytest.mark.skipif(
        not POSTGRES, reason="set FTOPS_TEST_POSTGRES_URL to run this against PostgreSQL"))]


@pytest.fixture(params=_stores())
def store_config(request, tmp_path):
    """A project whose checks live in SQLite or in a throw-away PostgreSQL database."""
    cfg = alerting(tmp_path)
    if request.param != "postgresql":
        yield cfg
        return
    from sqlalchemy.engine import make_url

    name = f"ftops_alerts_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(make_url(POSTGRES).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    cfg.uris.prediction_log = make_url(POSTGRES).set(drivername="postgresql+psycopg", database=name) \
        .render_as_string(hide_password=False)
    try:
        yield cfg
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_two_processes_resending_at_once_send_one_event(traffic, prefect, store_config):
    cfg = store_config
    prefect.up = False
    alert = monitor.check(cfg, traffic.window("other"), traffic.reference, now=T0)
    prefect.up, prefect.delay_s = True, 0.5  # the winner is still sending while the other one tries
    start = threading.Barrier(2)
    counts: list[int] = []

    def resend():
        start.wait()
        counts.append(monitor.resend_pending(cfg, now=T0 + STEP))

    threads = [threading.Thread(target=resend) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(counts) == [0, 1] and prefect.sent == [alert.id]
    assert states(cfg)[alert.id] == (results.SENT, True)


def test_a_claim_whose_sender_died_is_pending_again(traffic, prefect, store_config):
    cfg = store_config
    prefect.up = False
    alert = monitor.check(cfg, traffic.window("other"), traffic.reference, now=T0)
    prefect.up = True
    eng = store.checks_engine(cfg)
    try:
        def claimed(at: datetime) -> None:
            with eng.begin() as conn:
                conn.execute(update(store.drift_checks).where(store.drift_checks.c.id == alert.id)
                             .values(event_state=results.SENDING, event_claimed_at=at))

        claimed(datetime.now(UTC))  # a live sender holds it
        assert monitor.resend_pending(cfg, now=T0 + STEP) == 0 and prefect.sent == []
        claimed(datetime.now(UTC) - timedelta(seconds=delivery.CLAIM_STALE_S + 1))  # ... that died
        assert monitor.resend_pending(cfg, now=T0 + STEP) == 1 and prefect.sent == [alert.id]
    finally:
        eng.dispose()


# ---------------------------------------------------------------- an older database


def test_an_older_checks_table_gains_the_delivery_columns(tmp_path):
    cfg = make_config(tmp_path)
    url = cfg.resolved().uris.prediction_log
    old = Table("drift_checks", MetaData(), *[Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
                                              for c in store.drift_checks.columns
                                              if c.name not in store.ADDED_COLUMNS])  # the first release
    eng = create_engine(url)
    old.create(eng)
    base = {"project": cfg.project.name, "window_size": 300, "reference_size": 1000, "feedback_rows": 0,
            "scores": {}, "decision": "drift", "alert": True, "reason": "old release"}
    with eng.begin() as conn:
        conn.execute(old.insert(), [{**base, "ts": T0, "event_sent": True},
                                    {**base, "ts": T0 + STEP, "event_sent": False}])
    eng.dispose()
    new = store.checks_engine(cfg)
    try:
        assert store.last_delivered(new, cfg.project.name, T0 + 2 * STEP) == T0  # the old alert's check time
    finally:
        new.dispose()
    assert [(c.event_state, c.event_sent) for c in monitor.history(cfg)] == [(None, False), (None, True)]
    assert monitor.resend_pending(cfg) == 0  # an old release's unsent alert is history, not re-sent


# ---------------------------------------------------------------- without MLflow


def test_a_check_runs_from_the_cached_reference_while_mlflow_is_down(traffic, tmp_path):
    import json

    import mlflow

    from ftops import registry, tracking
    from ftops.serve.triton import server

    cfg = make_config(tmp_path)
    tracking.use_project(cfg)
    with mlflow.start_run() as run:
        pass
    monitor.save_reference(cfg, run.info.run_id, traffic.reference)
    registry.set_alias(cfg, registry.CHAMPION, registry.register(cfg, run.info.run_id).version)
    assert monitor.load_reference(cfg).attrs["version"] == "1"  # MLflow up: the index now names v1
    down = cfg.model_copy(deep=True)
    down.uris.mlflow_tracking = f"http://127.0.0.1:{free_port()}"

    started = time.monotonic()
    result = monitor.check(down, traffic.window("airline"), now=T0)
    assert time.monotonic() - started < 20
    assert result.decision == "no_drift" and result.reference_version == "1"
    assert "MLflow unreachable" in result.reason and "cached reference of v1" in result.reason

    index = monitor.monitoring_dir(cfg) / "reference" / reference.REFERENCE_INDEX
    index.write_text(json.dumps({**json.loads(index.read_text()), "champion": None}))
    routing = server.state_dir(cfg) / "routing.json"
    routing.parent.mkdir(parents=True, exist_ok=True)
    route = {"tag": "v1-x", "ensemble": "ftops_v1", "version": "1", "export": "e", "variant": "fp32"}
    routing.write_text(json.dumps({"champion": route}))
    assert monitor.load_reference(down).attrs["version"] == "1"  # from the champion route
    routing.write_text(json.dumps({"champion": {**route, "version": "2"}}))
    with pytest.raises(monitor.MonitorError, match="no reference of version 2 is cached"):
        monitor.load_reference(down)
