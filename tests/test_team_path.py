"""The team set-up is the embedded default's code path with other URIs (infra/README.md).

infra/compose/ftops.team.yaml is loaded as shipped, with only its addresses pointed at
services on this machine (hostnames -> 127.0.0.1, throw-away databases): a real MLflow
server on PostgreSQL with proxied artifacts, the prediction log on PostgreSQL, and a
Prefect server on PostgreSQL. The same ftops calls then run against it and against the
embedded default (deploy/ftops.yaml: SQLite + local artifacts), and must give the same
results.

Needs a PostgreSQL server: $FTOPS_TEST_POSTGRES_URL (set by .ci/run), e.g.
postgresql://postgres@127.0.0.1:5432/postgres; the test databases are dropped afterwards.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import pytest
import yaml

from ftops import predlog, procs, registry, tracking
from ftops.config import DEFAULT_CONFIG, Config, load_config
from ftops.serve.triton.server import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "infra" / "compose" / "compose.yaml"
TEAM_CONFIG = ROOT / "infra" / "compose" / "ftops.team.yaml"
WORK_POOL = ROOT / "infra" / "k8s" / "work-pool-gpu.json"
POSTGRES_URL = os.environ.get("FTOPS_TEST_POSTGRES_URL")
BIN = Path(sys.executable).parent
QUIET = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}

if not POSTGRES_URL:
    pytest.skip("needs PostgreSQL: set FTOPS_TEST_POSTGRES_URL (e.g. postgresql://postgres@127.0.0.1:5432/postgres; "
                ".ci/run does)", allow_module_level=True)


# ---------------------------------------------------------------- local stand-ins for the team services


def admin_engine():
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    url = make_url(POSTGRES_URL).set(drivername="postgresql+psycopg")
    return create_engine(url, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="module")
def databases():
    """Throw-away databases named like the team's three, dropped at the end."""
    from sqlalchemy import text

    stem = f"ftops_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    names = {role: f"{stem}_{role}" for role in ("mlflow", "predictions", "prefect")}
    engine = admin_engine()
    with engine.connect() as conn:
        for name in names.values():
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield names
    with engine.connect() as conn:
        for name in names.values():
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def local_db_url(team_url: str, database: str) -> str:
    """A team database URL (driver kept) pointed at the test server and database."""
    from sqlalchemy.engine import make_url

    local = make_url(POSTGRES_URL)
    team = make_url(team_url)
    return team.set(host=local.host, port=local.port, username=local.username, password=local.password,
                    database=database).render_as_string(hide_password=False)


def local_http_url(team_url: str, port: int) -> str:
    """http://<service>:<port>/path -> http://127.0.0.1:<local port>/path."""
    parts = urlparse(team_url)
    return urlunparse(parts._replace(netloc=f"127.0.0.1:{port}"))


class Servers:
    def __init__(self, starting, artifacts: Path, env: dict[str, str]):
        self.starting, self.artifacts, self.env = starting, artifacts, env

    def wait(self) -> Servers:
        for started in self.starting:
            started.result()
        return self


@pytest.fixture(scope="module")
def servers(databases, tmp_path_factory):
    """The MLflow server (Postgres store, proxied artifacts to a folder standing in for the
    bucket) and the Prefect server (Postgres), starting in the background (`wait()` for
    them), stopped by PID at the end."""
    root = tmp_path_factory.mktemp("team-services")
    team = load_config(TEAM_CONFIG, env={})
    state = root / "services"
    artifacts = root / "bucket"
    mlflow_port, prefect_port = free_port(), free_port()
    # the database URLs of infra/compose/compose.yaml, pointed at the throw-away databases
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    command = services["mlflow"]["command"]
    mlflow_store = local_db_url(command[command.index("--backend-store-uri") + 1], databases["mlflow"])
    prefect_db = local_db_url(services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"],
                              databases["prefect"])
    mlflow = procs.Service(
        name="mlflow", url=f"http://127.0.0.1:{mlflow_port}",
        command=[str(BIN / "mlflow"), "server", "--backend-store-uri", mlflow_store,
                 "--artifacts-destination", str(artifacts), "--serve-artifacts",
                 "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"],
        health_url=f"http://127.0.0.1:{mlflow_port}/health", env=QUIET, ready_timeout_s=150,
        marker=str(artifacts))
    prefect = procs.Service(
        name="prefect", url=f"http://127.0.0.1:{prefect_port}",
        command=[str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port),
                 "--no-services", "--no-ui"],  # the API and its database are what is under test
        health_url=f"http://127.0.0.1:{prefect_port}/api/health", ready_timeout_s=150, marker="server start",
        env={**QUIET, "PREFECT_HOME": str(root / "prefect"), "PREFECT_API_DATABASE_CONNECTION_URL": prefect_db})
    env = {  # only addresses: what a team sets in its env file, here for this machine
        "FTOPS_URIS__MLFLOW_TRACKING": local_http_url(team.uris.mlflow_tracking, mlflow_port),
        "FTOPS_URIS__MLFLOW_UI": local_http_url(team.uris.mlflow_ui, mlflow_port),
        "FTOPS_URIS__PREFECT_API": local_http_url(team.uris.prefect_api, prefect_port),
        "FTOPS_URIS__PREDICTION_LOG": local_db_url(team.uris.prediction_log, databases["predictions"]),
        "FTOPS_SERVING__HOST": "127.0.0.1",
    }
    pool = ThreadPoolExecutor(2)
    starting = [pool.submit(procs.start, state, service) for service in (mlflow, prefect)]
    try:
        yield Servers(starting, artifacts, env)
    finally:
        pool.shutdown(wait=True)  # a start still polling ends (ready or failed) first
        list(ThreadPoolExecutor(2).map(lambda name: procs.stop(state, name, grace_s=5), ("mlflow", "prefect")))


@pytest.fixture(scope="module")
def configs(servers, tmp_path_factory) -> dict[str, Config]:
    """The embedded default and the team config (addresses only), each its own project dir."""
    root = tmp_path_factory.mktemp("team-path")
    default = load_config(DEFAULT_CONFIG, env={"FTOPS_PROJECT__DIR": str(root / "default")})
    team = load_config(TEAM_CONFIG, env={"FTOPS_PROJECT__DIR": str(root / "team"), **servers.env})
    return {"default": default, "team": team}


@pytest.fixture(scope="module")
def results(configs, servers, tmp_path_factory) -> dict[str, dict]:
    """The same calls on both paths: the embedded default while the servers start, then
    the team path."""
    root = tmp_path_factory.mktemp("calls")
    out = {}
    for path in ("default", "team"):
        if path == "team":
            servers.wait()
        config = configs[path]
        out[path] = {"tracking": tracking_and_registry(config, root / path), "predlog": prediction_log(config)}
    return out


def test_only_addresses_differ(configs, results):
    default = configs["default"].model_dump(mode="json")
    team = configs["team"].model_dump(mode="json")
    for section in ("uris", "project"):
        default.pop(section), team.pop(section)
    assert default.pop("serving").pop("runtime") == "python_onnxruntime"
    assert team.pop("serving").pop("runtime") == "onnxruntime_onnx"
    assert default == team
    uris = configs["team"].uris
    assert uris.mlflow_tracking.startswith("http://127.0.0.1:")
    assert uris.prediction_log.startswith("postgresql+psycopg://")


# ---------------------------------------------------------------- the same calls on both paths


def log_candidate(config: Config, folder: Path, name: str, f1: list[float]) -> str:
    """What a training round records: params, a metric history, lineage tags, model files."""
    import mlflow

    tracking.use_project(config)
    model = folder / name / "model"
    model.mkdir(parents=True)
    (model / "ftops.json").write_text(json.dumps({"candidate": name, "strategy": "full"}))
    (model / "labels.json").write_text(json.dumps(["negative", "neutral", "positive"]))
    with mlflow.start_run(run_name=name) as run:
        mlflow.log_params({"strategy": "full", "learning_rate": 1e-4, "lora.rank": 8})
        for step, value in enumerate(f1, start=1):
            mlflow.log_metric("val_macro_f1", value, step=step)
        mlflow.set_tags({tracking.TAG_CANDIDATE: name, tracking.TAG_STRATEGY: "full",
                         tracking.TAG_SNAPSHOT: "snap-1", "mlflow.note.content": "not lineage"})
        mlflow.log_artifacts(str(model), artifact_path="model")
        return run.info.run_id


def tracking_and_registry(config: Config, folder: Path) -> dict:
    from mlflow import MlflowClient

    run_a = log_candidate(config, folder, "a", [0.61, 0.70])
    run_b = log_candidate(config, folder, "b", [0.64, 0.73])
    client = MlflowClient()
    run = client.get_run(run_a)
    record = {
        "params": run.data.params,
        "metrics": run.data.metrics,
        "history": [(m.step, m.value) for m in client.get_metric_history(run_a, "val_macro_f1")],
        "tags": {k: v for k, v in run.data.tags.items() if k.startswith("ftops.")},
        "artifacts": sorted((a.path, a.file_size) for a in client.list_artifacts(run_a, "model")),
    }
    v1 = registry.register(config, run_a)
    v2 = registry.register(config, run_b, extra_tags={"ftops.round": "2"})
    registry.set_alias(config, registry.CHALLENGER, v2.version)
    registry.promote(config, v1.version)
    registry.tag_decision(config, v2.version, "promote", "b beats a on the same rows")
    promoted = registry.promote(config, v2.version)
    record.update({
        "versions": [v1.version, v2.version],
        "version_tags": {v.version: v.tags for v in registry.versions(config)},
        "champion_after_promote": promoted.version,
        "previous": registry.get(config, registry.PREVIOUS).version,
        "challenger_left": registry.find(config, registry.CHALLENGER),
        "champion_after_rollback": registry.rollback(config).version,
        "listed": [v.version for v in registry.versions(config)],
        "sources_end_in_model": all(v.source == f"{client.get_run(v.run_id).info.artifact_uri}/model"
                                    for v in registry.versions(config)),
    })
    downloaded = registry.download(config, registry.CHAMPION, folder / "download")
    record["downloaded"] = json.loads((downloaded / "model" / "ftops.json").read_text())
    record["artifact_uri"] = run.info.artifact_uri
    return record


def test_tracking_and_registry_give_the_same_results(results, configs, servers):
    default, team = results["default"]["tracking"], results["team"]["tracking"]
    default_uri, team_uri = default.pop("artifact_uri"), team.pop("artifact_uri")
    assert team == default
    assert default["champion_after_rollback"] == default["versions"][0]
    assert default["downloaded"] == {"candidate": "a", "strategy": "full"}
    # where the artifacts went: local files by default; through the server to its store
    # (the object store's stand-in) on the team path
    assert default_uri.startswith("file://") and str(configs["default"].resolved().project.dir) in default_uri
    assert team_uri.startswith("mlflow-artifacts:")
    stored = sorted(p.name for p in servers.artifacts.rglob("*.json"))
    assert stored == sorted(["ftops.json", "labels.json"] * 2)


def prediction_log(config: Config) -> dict:
    url = config.resolved().uris.prediction_log
    eng = predlog.engine(url)
    start = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    records = [
        predlog.Record(f"r{i}", f"text number {i} about a flight", ["negative", "neutral", "positive"][i % 3],
                       0.5 + i / 100, [0.1, 0.2, 0.7], 5.0 + i, "tweets-sentiment-v1", "1",
                       "challenger" if i % 4 == 3 else "champion", user_key=f"user{i % 3}",
                       ts=start + timedelta(seconds=i))
        for i in range(12)
    ]
    rows = [r.row() for r in records]
    shadow = predlog.Record("r1", "text number 1 about a flight", "positive", 0.8, [0.1, 0.1, 0.8], 7.0,
                            "tweets-sentiment-v2", "2", "shadow", ts=start + timedelta(seconds=1))
    rows.append(shadow.row(keep_text=False))
    predlog.write(eng, rows)
    feedback = {rid: predlog.add_feedback(eng, rid, "positive") for rid in ("r1", "r2", "missing")}

    def records_of(frame):
        out = frame.drop(columns=["feedback_ts"]).to_dict("records")
        for row in out:
            row["ts"] = row["ts"].tz_localize("UTC").isoformat() if row["ts"].tzinfo is None \
                else row["ts"].tz_convert("UTC").isoformat()
            row["served"] = bool(row["served"])
        return out

    labelled = predlog.labelled(eng)
    result = {
        "feedback": feedback,
        "models_r1": sorted(predlog.request_models(eng, "r1")),
        "last_5": records_of(predlog.read(eng, last=5)),
        "since": records_of(predlog.read(eng, since=start + timedelta(seconds=9))),
        "shadow": records_of(predlog.read(eng, routes=("shadow",))),
        "challenger": len(predlog.read(eng, routes=("challenger",))),
        "labelled": labelled[["request_id", "text", "label"]].to_dict("records"),
        "feedback_ts_set": bool(predlog.read(eng, routes=("champion", "shadow"))["feedback_ts"].notna().sum() == 3),
    }
    eng.dispose()
    return result


def test_prediction_log_gives_the_same_results(results, configs):
    default, team = results["default"]["predlog"], results["team"]["predlog"]
    assert configs["team"].resolved().uris.prediction_log.startswith("postgresql+psycopg://")
    assert team == default
    assert default["feedback"] == {"r1": 2, "r2": 1, "missing": 0}  # r1: served + shadow row
    assert default["models_r1"] == ["tweets-sentiment-v1", "tweets-sentiment-v2"]
    assert [r["request_id"] for r in default["last_5"]] == ["r7", "r8", "r9", "r10", "r11"]  # served rows
    assert default["shadow"][0]["text"] is None  # keep_text=False kept only the hash
    assert [r["request_id"] for r in default["labelled"]] == ["r1", "r2"]
    assert default["feedback_ts_set"]


# ---------------------------------------------------------------- orchestration on Postgres


def test_prefect_on_postgres_takes_the_gpu_work_pool_and_the_deployments(configs, servers, tmp_path):
    """What the worker's init steps do (infra/k8s/prefect-worker.yaml): the pool from
    work-pool-gpu.json, then the ftops deployments registered on it."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows import deployments

    team_file = tmp_path / "ftops.yaml"
    team_file.write_text(TEAM_CONFIG.read_text())
    template = json.loads(WORK_POOL.read_text())
    api = configs["team"].uris.prefect_api
    servers.wait()
    with temporary_settings({PREFECT_API_URL: api}):
        with get_client(sync_client=True) as client:
            client.create_work_pool(WorkPoolCreate(name="gpu", type="kubernetes", base_job_template=template))
            ids = deployments.register(str(team_file), "gpu")
            pool = client.read_work_pool("gpu")
            found = [client.read_deployment(i) for i in ids]
    assert pool.type == "kubernetes" and pool.base_job_template == template
    assert sorted(d.entrypoint for d in found) == ["flows.lifecycle.lifecycle", "flows.lifecycle.monitor_drift"]
    assert {d.work_pool_name for d in found} == {"gpu"}
    assert all(d.parameters["config_path"] == str(team_file) for d in found)
    lifecycle = next(d for d in found if d.entrypoint.endswith(".lifecycle"))
    assert [s.schedule.cron for s in lifecycle.schedules] == [yaml.safe_load(TEAM_CONFIG.read_text())["schedules"]
                                                               ["retrain_cron"]]
