"""Prefect for real: the cron deployment gets scheduled runs (what SQLAlchemy 2.1 silently
breaks), the drift trigger is attached, and the services come up once and go down by PID."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from ftops import procs, services
from ftops.config import Config
from ftops.serve.triton.server import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefect")
    port = free_port()
    cfg = Config.model_validate({"project": {"dir": str(root), "name": "orch"},
                                 "uris": {"prefect_api": f"http://127.0.0.1:{port}/api"},
                                 "schedules": {"retrain_cron": "* * * * *"}})
    env = services.environment(cfg, None)
    service = services.prefect_service(cfg, {**env, "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"})
    running = procs.start(services.folder(cfg), service)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # Prefect reads its settings once per process: an earlier test (the e2e demo) may have
    # imported it with another server's URL, so point this test at its own server explicitly.
    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        yield cfg, running
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    assert procs.stop(services.folder(cfg), "prefect")
    assert procs.status(services.folder(cfg), "prefect") is None
    assert not procs._alive(running.pid, running.marker)


def _config_file(cfg: Config, tmp_path: Path) -> str:
    import yaml

    path = tmp_path / "ftops.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return str(path)


def test_the_cron_deployment_gets_scheduled_runs_and_the_drift_trigger(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from flows import deployments

    cfg, _ = prefect_server
    lifecycle_deployment, monitor_deployment = deployments.build(_config_file(cfg, tmp_path))
    deployment_id = lifecycle_deployment.apply()  # registered, not executed: no runner serves it
    monitor_deployment.apply()

    async def scheduled_runs():
        async with get_client() as client:
            runs = await client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
            deployment = await client.read_deployment(deployment_id)
            automations = await client.read_automations_by_name(f"retrain {cfg.project.name} on drift")
            return runs, deployment, automations

    deadline = time.monotonic() + 60
    runs = []
    while time.monotonic() < deadline:
        runs, deployment, automations = asyncio.run(scheduled_runs())
        if runs:
            break
        time.sleep(1)
    assert runs, "the Prefect scheduler created no run for a every-minute cron deployment"
    assert all(r.state.name == "Scheduled" for r in runs)
    assert deployment.schedules[0].schedule.cron == "* * * * *"
    assert deployment.global_concurrency_limit is not None and deployment.global_concurrency_limit.limit == 1
    assert automations and automations[0].trigger.expect == {"ftops.drift.detected"}
    assert f"ftops.model.{cfg.project.name}" in str(automations[0].trigger.match)
    assert automations[0].actions[0].parameters["reason"] == "drift"


def test_a_second_start_makes_no_duplicate(prefect_server):
    cfg, running = prefect_server
    again = procs.start(services.folder(cfg), services.prefect_service(cfg, services.environment(cfg, None)))
    assert again.pid == running.pid
