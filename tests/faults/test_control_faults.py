"""Faults of the control path, against the real Prefect and MLflow servers: an alert must
start exactly one retraining however the orchestrator or the store fails, and a deploy
interrupted by MLflow must leave serving, registry and drift reference reconcilable."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from conftest import TEXTS, record, wait_until
from test_monitor import Traffic
from test_serving import make_export

from ftops import monitor, procs, registry, services
from ftops.config import Config, load_config
from ftops.serve.server import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def traffic(airline_snapshot) -> Traffic:
    return Traffic(airline_snapshot)


@pytest.fixture(scope="module")
def prefect(tmp_path_factory):
    """A real Prefect server (restartable on the same port) with the lifecycle deployment
    and its drift trigger applied; no runner serves it, so a triggered run stays Scheduled
    and can be counted."""
    root = tmp_path_factory.mktemp("control")
    settings = {"project": {"dir": str(root / "proj"), "name": "ctl"},
                "monitoring": {"persistence_windows": 1, "persistence_hits": 1, "cooldown_hours": 24},
                "uris": {"prefect_api": f"http://127.0.0.1:{free_port()}/api"}}
    path = root / "ctl.yaml"
    path.write_text(yaml.safe_dump(settings))
    config = load_config(path)
    env = services.environment(config, str(path))
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows import deployments

    try:
        start_prefect(config, env)
        with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
            deployment_id = deployments.build(str(path))[0].apply()
            yield config, env, deployment_id
    finally:
        procs.stop(services.folder(config), "prefect")
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert procs.status(services.folder(config), "prefect") is None


def start_prefect(config: Config, env: dict) -> None:
    procs.start(services.folder(config), services.prefect_service(config, env))


def drift_runs(deployment_id) -> int:
    """Runs of the lifecycle deployment that the drift trigger started."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async def read():
        async with get_client() as client:
            return await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))

    return sum(run.parameters.get("reason") == "drift" for run in asyncio.run(read()))


def settle(deployment_id, expected: int, timeout_s: float = 60, quiet_s: float = 5) -> int:
    """Wait for `expected` triggered runs, then a few seconds more: a duplicate would show."""
    wait_until(lambda: drift_runs(deployment_id) >= expected, timeout_s, f"{expected} drift-triggered run(s)",
               every_s=0.5)
    time.sleep(quiet_s)
    return drift_runs(deployment_id)


# ---------------------------------------------------------------- the orchestrator is down


def test_prefect_down_when_the_alert_fires_then_back_starts_exactly_one_retraining(prefect, traffic):
    config, env, deployment_id = prefect
    now = datetime.now(UTC)
    assert procs.stop(services.folder(config), "prefect")
    first = monitor.check(config, traffic.window("other"), traffic.reference, now=now)
    second = monitor.check(config, traffic.window("other"), traffic.reference, now=now + timedelta(minutes=15))
    assert first.alert and not first.event_sent
    assert second.alert and not second.event_sent  # an undelivered alert starts no cooldown
    down_s = time.monotonic()
    start_prefect(config, env)
    assert monitor.resend_pending(config) == 1  # the newest alert; the older one is superseded
    back = time.monotonic() - down_s
    assert settle(deployment_id, 1) == 1
    assert monitor.resend_pending(config) == 0
    assert drift_runs(deployment_id) == 1
    assert monitor.history(config)[0].event_sent
    record("Prefect down when the drift alert fires", retrainings_started=1, resent_after_s=round(back, 1))


# ---------------------------------------------------------------- the store fails


def test_a_drift_store_that_fails_sends_no_event_and_the_next_check_alerts_once(prefect, traffic):
    config, _, deployment_id = prefect
    before = drift_runs(deployment_id)
    now = datetime.now(UTC) + timedelta(hours=25)  # past the cooldown of the previous alert
    impatient = config.model_copy(update={"timeouts": config.timeouts.model_copy(update={"database_s": 1.0})})
    database = config.resolved().uris.prediction_log.removeprefix("sqlite:///")
    holder = sqlite3.connect(database, timeout=1)
    holder.execute("BEGIN EXCLUSIVE")  # another writer holds the database: every write fails
    try:
        with pytest.raises(Exception) as failed:
            monitor.check(impatient, traffic.window("other"), traffic.reference, now=now)
    finally:
        holder.rollback()
        holder.close()
    time.sleep(5)
    assert drift_runs(deployment_id) == before, "an event went out for a check that was never stored"
    result = monitor.check(config, traffic.window("other"), traffic.reference, now=now + timedelta(minutes=15))
    assert result.alert and result.event_sent
    assert settle(deployment_id, before + 1) == before + 1
    record("the drift store write fails", retrainings_started=1, error=type(failed.value).__name__)
