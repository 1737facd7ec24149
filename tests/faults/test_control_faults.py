"""Faults of the control path, against the real Prefect and MLflow servers: an alert must
start exactly one retraining however the orchestrator or the store fails, and a deploy
interrupted by MLflow must leave serving, registry and drift reference reconcilable."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import yaml
from faultload import TEXTS, record, wait_until
from test_monitor import Traffic
from test_serving import make_export

from ftops import monitor, procs, registry, services
from ftops.config import Config, load_config
from ftops.serve.triton.server import free_port

pytestmark = pytest.mark.slow

LABELS = ["negative", "neutral", "positive"]


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
    saved = dict(os.environ)
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
        os.environ.clear()
        os.environ.update(saved)
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


# ---------------------------------------------------------------- MLflow goes down mid-deploy


@pytest.fixture(scope="module")
def registry_stack(tmp_path_factory):
    """A real MLflow tracking server (the team's shape: clients over HTTP) and Triton."""
    from ftops.serve.triton import server

    root = tmp_path_factory.mktemp("registry")
    port = free_port()
    settings = {"project": {"dir": str(root / "proj"), "name": "reg"},
                "gates": {"p99_ms": 60000}, "timeouts": {"mlflow_s": 5},
                "serving": {"http_port": 0, "grpc_port": 0, "metrics_port": 0, "load_requests": 10,
                            "load_warmup": 0, "load_concurrency": 1},
                "uris": {"mlflow_tracking": f"http://127.0.0.1:{port}", "mlflow_ui": f"http://127.0.0.1:{port}",
                         "prefect_api": f"http://127.0.0.1:{free_port()}/api"}}
    config = Config.model_validate(settings)
    mlflow_server = procs.Service(
        name="mlflow", url=f"http://127.0.0.1:{port}", marker="mlflow server", ready_timeout_s=120,
        command=[str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
                 f"sqlite:///{root / 'mlflow.db'}", "--default-artifact-root", (root / "mlartifacts").as_uri(),
                 "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        health_url=f"http://127.0.0.1:{port}/health", env=services.environment(config, None))
    folder = services.folder(config)
    exports = [make_export(root / f"e{i}", seed=i) for i in range(2)]
    try:
        procs.start(folder, mlflow_server)
        server.start(config)
        yield config, folder, mlflow_server, exports
    finally:
        server.stop(config)
        procs.stop(folder, "mlflow")
    assert server.status(config) is None and procs.status(folder, "mlflow") is None


def register_version(config: Config, reference) -> str:
    """A registry version with a small `model/` artifact and its drift reference logged."""
    import mlflow

    from ftops import tracking

    tracking.use_project(config)
    source = config.resolved().project.dir / "model-src"
    source.mkdir(parents=True, exist_ok=True)
    (source / "ftops.json").write_text('{"labels": ["negative", "neutral", "positive"]}')
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(source), "model")
    monitor.save_reference(config, run.info.run_id, reference)
    return registry.register(config, run.info.run_id).version


def test_mlflow_down_during_a_deploy_leaves_the_champion_serving_and_reconcile_agrees(
        registry_stack, traffic, monkeypatch):
    from mlflow import MlflowClient

    from ftops.reconcile import reconcile
    from ftops.serve import deploy
    from ftops.serve.triton import server
    from ftops.serve.triton.client import TritonClient

    config, folder, mlflow_server, exports = registry_stack
    v1 = register_version(config, traffic.reference)
    assert deploy.deploy(config, exports[0], TEXTS * 2, version=v1).outcome == deploy.PROMOTED
    v2 = register_version(config, traffic.reference)
    move_alias = MlflowClient.set_registered_model_alias

    def down_at_the_alias_move(self, *args, **kwargs):
        procs.stop(folder, "mlflow")  # MLflow dies the moment the registry is to follow serving
        return move_alias(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", down_at_the_alias_move)
    started = time.monotonic()
    result = deploy.deploy(config, exports[1], TEXTS * 2, version=v2)
    took = time.monotonic() - started
    monkeypatch.undo()
    assert result.outcome == deploy.PROMOTED and result.unfinished
    routes = deploy.routing(config)
    assert routes["champion"].version == v2 and routes["previous"].version == v1
    info = server.status(config)
    with TritonClient.for_config(info.grpc_url, config) as client:
        assert len(client.classify(TEXTS, routes["champion"].ensemble)) == len(TEXTS)  # it serves

    down = reconcile(config)
    assert down.problems and not down.changes  # MLflow is down: nothing is half-changed
    procs.start(folder, mlflow_server)
    fixed = reconcile(config)
    assert fixed.changes and not fixed.problems, fixed.lines()
    assert registry.find(config, registry.CHAMPION).version == v2
    assert registry.find(config, registry.PREVIOUS).version == v1
    again = reconcile(config)
    assert again.agreed and not again.changes
    record("MLflow down during a deploy", deploy_s=round(took, 1), champion_serving=True,
           reconcile_changes=len(fixed.changes), second_reconcile_changes=0)


# ---------------------------------------------------------------- traffic of an odd shape


def test_a_retraining_whose_feedback_has_one_row_of_a_class_completes(prefect, tiny_model, tmp_path):
    """The drift-triggered lifecycle, in this process against the real Prefect server, on a
    champion trained and registered for real (a tiny BERT, so it takes seconds), with
    labelled traffic holding a single `neutral` row."""
    from flows import lifecycle

    from ftops import data, predlog, train
    from ftops.data.corpora import load_builtin
    from ftops.serve.triton import server

    _, _, _ = prefect
    settings = {
        "project": {"dir": str(tmp_path / "proj"), "name": "sparse"},
        "data": {"source": "builtin:tweets?domain=airline", "max_rows": 300, "labels": LABELS, "min_chars": 3},
        "model": {"name": str(tiny_model), "max_length": 32},
        "candidates": [{"name": "full", "strategy": "full", "epochs": 1, "max_steps": 3, "batch_size": 16,
                        "evals_per_epoch": 1, "init": "champion"}],
        "feedback": {"max_sender_share": 0.9},
        "gates": {"p99_ms": 60000},
        "serving": {"http_port": 0, "grpc_port": 0, "metrics_port": 0, "load_requests": 10, "load_warmup": 0,
                    "load_concurrency": 1},
        "uris": {"prefect_api": prefect[0].uris.prefect_api},
    }
    path = tmp_path / "sparse.yaml"
    path.write_text(yaml.safe_dump(settings))
    config = load_config(path)
    snapshot = data.prepare(config)
    first = train.train_round(config, snapshot)
    _, run_id = first.candidates[0]
    registry.promote(config, registry.register(config, run_id).version)

    other, _ = load_builtin("builtin:tweets?exclude_domain=airline")
    rows = other[other["label"] != "neutral"].head(40)
    lone = other[other["label"] == "neutral"].head(1)
    eng = predlog.engine(config.resolved().uris.prediction_log)
    try:
        records = [predlog.Record(f"r{i}", text, "negative", 0.5, [0.5, 0.25, 0.25], 5.0, "sparse-v1", "1", "champion")
                   for i, text in enumerate(pd.concat([rows, lone])["text"])]
        predlog.write(eng, [r.row() for r in records])
        for record_, label in zip(records, pd.concat([rows, lone])["label"]):
            predlog.add_feedback(eng, record_.request_id, label)
    finally:
        eng.dispose()
    try:
        summary = lifecycle.lifecycle(str(path), reason="drift")
    finally:
        server.stop(config)
    assert summary["data"]["retrain"] and summary["data"]["feedback_rows"] == 41
    assert summary["data"]["kept_in_train"] == {"neutral": 1}
    assert summary["decision"]["outcome"] in ("promote", "reject")
    record("a retraining whose feedback has one row of a class", lifecycle="completed",
           decision=summary["decision"]["outcome"], deploy=summary.get("deploy", {}).get("outcome", "-"))
