"""Promotions that cannot hurt the champion, one at a time, and `reconcile`: against a real
Triton (one per module), a real MLflow registry on SQLite, and real locks (a file lock; a
PostgreSQL advisory lock where FTOPS_TEST_POSTGRES_URL is set)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_serving import TEXTS, make_export

from ftops import registry, tracking
from ftops.config import Config
from ftops.lock import LockTimeout, promotion_lock
from ftops.reconcile import reconcile
from ftops.serve import deploy, loadtest
from ftops.serve.deploy import gates as deploy_gates
from ftops.serve.triton import repository, server
from ftops.serve.triton.client import TritonClient
from ftops.serve.triton.models import ModelNames
from ftops.serve.runtime import ServingError

POSTGRES_URL = os.environ.get("FTOPS_TEST_POSTGRES_URL")
GATE_TEXTS = TEXTS[:16]


@dataclass
class Stack:
    config: Config
    exports: list[Path]  # exports[i] is registry version i + 1
    snapshot: object

    @property
    def repo(self) -> Path:
        return Path(server.status(self.config).repository)


def tiny_candidate(folder: Path, labels: list[str]) -> Path:
    """A loadable candidate folder (ftops.train layout) of a 2-layer random BERT."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from ftops import train
    from ftops.models import resolve_model

    model = BertForSequenceClassification(BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        num_labels=len(labels), max_position_embeddings=128))
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm-l6"))
    train.save_trained(model, tokenizer, labels, "tiny-bert", folder)
    return folder


def register(config: Config, candidate: Path, snapshot) -> registry.Version:
    import mlflow

    tracking.use_project(config)
    with mlflow.start_run(tags={tracking.TAG_SNAPSHOT: snapshot.id}) as run:
        mlflow.log_artifacts(str(candidate / "model"), "model")
    return registry.register(config, run.info.run_id)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from ftops import data

    root = tmp_path_factory.mktemp("promotion")
    config = Config.model_validate({
        "project": {"dir": str(root / "proj"), "name": "promo"},
        "data": {"source": "builtin:tweets?domain=airline", "max_rows": 300},
        "model": {"max_length": 32},
        "monitoring": {"embedding_sample": 20},
        "gates": {"p99_ms": 5000},
        "serving": {"http_port": 0, "grpc_port": 0, "metrics_port": 0, "load_requests": 12, "load_warmup": 2,
                    "load_concurrency": 2},
    })
    snapshot = data.prepare(config)
    candidate = tiny_candidate(root / "candidate", list(snapshot.labels))
    exports = [make_export(root / f"e{i}", seed=i) for i in range(4)]
    assert [register(config, candidate, snapshot).version for _ in exports] == ["1", "2", "3", "4"]
    server.start(config)
    try:
        yield Stack(config, exports, snapshot)
    finally:
        server.stop(config)


def ready(config: Config, ensemble: str) -> bool:
    info = server.status(config)
    with TritonClient.for_config(info.grpc_url, config) as client:
        return client.ready(ensemble)


def answers(config: Config, ensemble: str) -> bool:
    info = server.status(config)
    with TritonClient.for_config(info.grpc_url, config) as client:
        return len(client.classify(["is the champion still there"], ensemble)) == 1


def files_of(repo: Path, tag: str) -> dict[str, float]:
    """Every file of a version (and its records) with its mtime: what 'untouched' means."""
    names = ModelNames.for_tag("promo", tag)
    out = {}
    for name in names.all():
        for path in [repo / f"{name}{repository.HASHES}", *sorted((repo / name).rglob("*"))]:
            if path.is_file() and "__pycache__" not in path.parts:
                out[str(path)] = path.stat().st_mtime_ns
    return out


def nothing_left_of(stack: Stack, tag: str) -> None:
    names = ModelNames.for_tag("promo", tag)
    assert not any(ready(stack.config, n) for n in names.all())
    assert not [p.name for p in stack.repo.iterdir() if p.name.startswith(f"promo-{tag}")]


def aliases_follow_routes(config: Config) -> None:
    routes = deploy.routing(config)
    current = registry.aliases(config)
    assert {a: current.get(a) for a in ("champion", "previous")} == \
        {a: routes[a].version if a in routes else None for a in ("champion", "previous")}


# ------------------------------------------------------------ deploys that cannot hurt the champion


def test_a_promotion_moves_the_route_then_the_registry(stack):
    config = stack.config
    for i in (0, 1):
        result = deploy.deploy(config, stack.exports[i], GATE_TEXTS, version=str(i + 1))
        assert result.outcome == deploy.PROMOTED and not result.unfinished, result.reason
    routes = deploy.routing(config)
    assert (routes["champion"].tag, routes["previous"].tag) == ("v2", "v1")
    assert registry.aliases(config) == {"champion": "2", "previous": "1"}


def test_deploying_the_champions_tag_again_with_a_failing_gate_changes_nothing(stack):
    config = stack.config
    routes = deploy.routing(config)
    champion_files, previous_files = files_of(stack.repo, "v2"), files_of(stack.repo, "v1")
    strict = config.model_copy(update={"gates": config.gates.model_copy(update={"p99_ms": 0.001})})

    again = deploy.deploy(strict, stack.exports[1], GATE_TEXTS, version="2")
    assert again.outcome == deploy.UNCHANGED and "v2 is already the champion" in again.reason
    assert again.route == routes["champion"]

    previous = deploy.deploy(strict, stack.exports[0], GATE_TEXTS, version="1")  # routed as previous: may be tried
    assert previous.outcome == deploy.REJECTED and "p99" in previous.reason
    assert deploy.routing(config) == routes
    assert files_of(stack.repo, "v2") == champion_files and files_of(stack.repo, "v1") == previous_files
    assert ready(config, "promo-v1") and answers(config, "promo-v2")  # a failed try leaves what it found
    assert registry.aliases(config) == {"champion": "2", "previous": "1"}


def test_an_exception_in_the_smoke_test_leaves_nothing_of_the_new_version(stack, monkeypatch):
    config = stack.config
    routes = deploy.routing(config)

    def broken(*args, **kwargs):
        raise RuntimeError("injected: the smoke test crashed")

    monkeypatch.setattr(deploy_gates, "smoke", broken)
    with pytest.raises(RuntimeError, match="injected"):
        deploy.deploy(config, stack.exports[2], GATE_TEXTS, version="3")
    nothing_left_of(stack, "v3")
    assert deploy.routing(config) == routes and answers(config, "promo-v2")


@pytest.mark.parametrize("fault", [ServingError("Triton at 127.0.0.1 is not reachable (injected)"),
                                   ConnectionResetError("injected: reset during the warm-up")],
                         ids=["triton-refuses", "exception"])
def test_a_fault_in_the_load_test_warm_up_leaves_nothing_of_the_new_version(stack, monkeypatch, fault):
    config = stack.config
    routes = deploy.routing(config)

    class WarmUpFails(TritonClient):
        def classify(self, *args, **kwargs):
            raise fault

    monkeypatch.setattr(loadtest, "TritonClient", WarmUpFails)  # the smoke test's client is untouched
    if isinstance(fault, ServingError):
        result = deploy.deploy(config, stack.exports[2], GATE_TEXTS, version="3")
        assert result.outcome == deploy.REJECTED and "load test" in result.reason and "injected" in result.reason
    else:
        with pytest.raises(ConnectionResetError):
            deploy.deploy(config, stack.exports[2], GATE_TEXTS, version="3")
    nothing_left_of(stack, "v3")
    assert deploy.routing(config) == routes and answers(config, "promo-v2") and ready(config, "promo-v1")


# ------------------------------------------------------------ MLflow failing during the alias move


def test_mlflow_failing_during_the_alias_move_is_finished_by_reconcile(stack, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    config = stack.config
    real = MlflowClient.set_registered_model_alias
    calls = []

    def fails_after_one(self, *args, **kwargs):  # the first move lands, then the store goes away
        calls.append(args)
        if len(calls) > 1:
            raise MlflowException("API request to http://mlflow:5000 failed: connection refused (injected)")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", fails_after_one)
    result = deploy.deploy(config, stack.exports[2], GATE_TEXTS, version="3")
    monkeypatch.undo()
    assert result.outcome == deploy.PROMOTED and "ftops reconcile" in result.unfinished[0]
    routes = deploy.routing(config)
    assert (routes["champion"].tag, routes["previous"].tag) == ("v3", "v2")
    assert answers(config, "promo-v3") and answers(config, "promo-v2")  # serving moved whole
    assert registry.aliases(config) == {"champion": "3", "previous": "1"}  # the registry half-way

    dead = config.model_copy(update={"uris": config.uris.model_copy(
        update={"mlflow_tracking": f"http://127.0.0.1:{server.free_port()}"})})
    down = reconcile(dead)
    assert not down.changes and "MLflow does not answer" in down.problems[0]
    assert registry.aliases(config) == {"champion": "3", "previous": "1"}

    fixed = reconcile(config)
    assert not fixed.problems, fixed.problems
    assert fixed.changes == ["registry alias previous: v1 -> v2", "drift reference of v3: built from snapshot "
                             f"{stack.snapshot.id}"]
    aliases_follow_routes(config)
    run = registry.get(config, "3").run_id
    assert [a.path for a in registry.client(config).list_artifacts(run, "reference")] == ["reference/reference.parquet"]

    def no_downloads(*args, **kwargs):
        raise AssertionError("reconcile downloaded something although everything agreed")

    import mlflow
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", no_downloads)
    monkeypatch.setattr(registry, "download", no_downloads)
    again = reconcile(config)
    assert again.agreed and again.lines() == ["serving, registry and drift reference agree; nothing to do"]


def test_staging_cannot_touch_the_champion_and_a_failed_stage_leaves_nothing(stack, monkeypatch):
    config = stack.config
    routes = deploy.routing(config)
    with pytest.raises(ServingError, match="v3 is the champion; it cannot be its own challenger"):
        deploy.stage(config, stack.exports[2], GATE_TEXTS, version="3")
    with monkeypatch.context() as patched:
        patched.setattr(deploy_gates, "smoke", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("injected")))
        with pytest.raises(RuntimeError, match="injected"):
            deploy.stage(config, stack.exports[3], GATE_TEXTS, version="4")
    nothing_left_of(stack, "v4")
    assert deploy.routing(config) == routes and answers(config, "promo-v3")

    staged = deploy.stage(config, stack.exports[3], GATE_TEXTS, version="4")
    assert deploy.routing(config)["challenger"] == staged and answers(config, staged.ensemble)
    assert registry.aliases(config) == {"champion": "3", "previous": "2", "challenger": "4"}
    deploy.unstage(config)
    assert deploy.routing(config) == routes
    assert registry.aliases(config) == {"champion": "3", "previous": "2"}


# ------------------------------------------------------------ one promotion at a time


def test_a_deploy_and_a_rollback_started_together_run_one_after_the_other(stack, monkeypatch, caplog):
    config = stack.config
    real_save = deploy.save_routing

    def slow_save(*args):  # widens the read-modify-write window a missing lock would lose an update in
        time.sleep(0.3)
        real_save(*args)

    monkeypatch.setattr(deploy, "save_routing", slow_save)
    start, errors, outcomes = threading.Barrier(2), [], []

    def run(name, call):
        start.wait()
        try:
            outcomes.append((name, call()))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=("deploy", lambda: deploy.deploy(
                   config, stack.exports[3], GATE_TEXTS, version="4"))),
               threading.Thread(target=run, args=("rollback", lambda: deploy.rollback(config)))]
    with caplog.at_level(logging.INFO, logger="ftops.lock"):
        [t.start() for t in threads]
        [t.join(120) for t in threads]
    assert not errors, errors
    assert "waits for the promotion lock held by" in caplog.text  # the second one waited
    routes = deploy.routing(config)
    # before: champion v3, previous v2. deploy then rollback: v3 / v4; rollback then deploy: v4 / v2
    assert (routes["champion"].tag, routes["previous"].tag) in {("v3", "v4"), ("v4", "v2")}, routes
    assert all(ready(config, r.ensemble) for r in routes.values())
    assert set(repository.versions(stack.repo, "promo")) == {r.tag for r in routes.values()}
    aliases_follow_routes(config)


# ------------------------------------------------------------ routing.json lost


def test_a_lost_routing_file_is_rebuilt_from_the_registry_champions_verified_copy(stack):
    config = stack.config
    routes = deploy.routing(config)
    path = server.state_dir(config) / "routing.json"
    path.unlink()
    result = reconcile(config)
    assert not result.problems, result.problems
    assert result.changes[:2] == [f"route champion: rebuilt as {routes['champion'].ensemble} (registry champion "
                                  f"v{routes['champion'].version}, its repository copy matches its record)",
                                  f"route previous: rebuilt as {routes['previous'].ensemble} (registry previous "
                                  f"v{routes['previous'].version}, its repository copy matches its record)"]
    rebuilt = deploy.routing(config)
    assert {r: (v.ensemble, v.version, v.variant) for r, v in rebuilt.items()} == \
        {r: (v.ensemble, v.version, v.variant) for r, v in routes.items()}
    assert answers(config, deploy.champion_model(config))
    assert reconcile(config).agreed


def test_a_lost_routing_file_with_a_damaged_champion_copy_is_reported_not_served(stack):
    config = stack.config
    path = deploy.routing_file(config)
    saved, champion = path.read_text(), deploy.routing(config)["champion"]
    onnx = stack.repo / ModelNames.of(champion.ensemble).classifier / "1" / "model.onnx"
    original = onnx.read_bytes()
    path.unlink()
    try:
        onnx.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        result = reconcile(config)
        assert not result.changes and len(result.problems) == 1
        assert f"registry champion v{champion.version} cannot be served from the model repository" in \
            result.problems[0] and "model.onnx has sha256" in result.problems[0]
        assert not path.exists()  # nothing unverified is routed
    finally:
        onnx.write_bytes(original)
        path.write_text(saved)
    assert reconcile(config).agreed


# ------------------------------------------------------------ the lock


def test_registry_alias_plan():
    assert registry.plan({"champion": "2", "previous": "1"}, {"champion": "3", "previous": "2"}) == \
        [("champion", "3"), ("previous", "2")]
    # the champion route serves an unregistered export's predecessor: no alias left on the champion twice
    assert registry.plan({"champion": "3", "previous": "3", "challenger": "5"}, {"champion": "3"}) == \
        [("previous", None)]
    assert registry.plan({"champion": "3"}, {"champion": "3"}) == []


def test_the_lock_is_reentrant_in_its_thread_and_other_threads_wait(tmp_path):
    config = Config.model_validate({"project": {"dir": str(tmp_path), "name": "locks"},
                                    "timeouts": {"lock_s": 0.5}})
    seen = []
    with promotion_lock(config, "lifecycle export_and_deploy") as outer:
        with promotion_lock(config, "deploy v1") as inner:  # deploy inside the lifecycle's hold
            assert inner is outer

        def other():
            try:
                with promotion_lock(config, "rollback"):
                    seen.append("got it")
            except LockTimeout as exc:
                seen.append(str(exc))

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert "held by 'lifecycle export_and_deploy' (pid" in seen[0] and f"pid {os.getpid()} on" in seen[0]
    with promotion_lock(config, "rollback"):  # released by the outer exit
        pass


HOLD = """
import json, sys, time
from ftops.config import Config
from ftops.lock import promotion_lock
with promotion_lock(Config.model_validate(json.loads(sys.argv[1])), "deploy v9"):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder_process(settings: dict) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, json.dumps(settings)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _lock_settings(tmp_path: Path, backend: str) -> dict:
    settings = {"project": {"dir": str(tmp_path / "proj"), "name": f"lock-{uuid.uuid4().hex[:8]}"},
                "timeouts": {"lock_s": 1.0}}
    if backend == "postgres":
        if not POSTGRES_URL:
            pytest.skip("needs PostgreSQL: set FTOPS_TEST_POSTGRES_URL "
                        "(e.g. postgresql://postgres@127.0.0.1:5432/postgres)")
        settings["uris"] = {"prediction_log": POSTGRES_URL}
    return settings


@pytest.mark.parametrize("backend", ["file", "postgres"])
def test_a_lock_held_by_another_process_names_the_holder_and_times_out(tmp_path, backend, caplog):
    settings = _lock_settings(tmp_path, backend)
    config = Config.model_validate(settings)
    proc = _holder_process(settings)
    try:
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger="ftops.lock"), pytest.raises(LockTimeout) as caught:
            with promotion_lock(config, "rollback"):
                pytest.fail("got a lock another process holds")
        waited = time.monotonic() - started
        message = str(caught.value)
        assert 1.0 <= waited < 5, waited
        assert f"pid {proc.pid}" in message and "deploy v9" in message and "'rollback' waited 1 s" in message
        assert "rollback waits for the promotion lock held by" in caplog.text
        if backend == "postgres":
            assert "PostgreSQL advisory lock" in message
            assert not (tmp_path / "proj" / "locks").exists()  # the file lock was not the one taken
    finally:
        proc.kill()
        proc.wait()
    with promotion_lock(config.model_copy(update={"timeouts": config.timeouts.model_copy(update={"lock_s": 10})}),
                        "rollback"):
        pass  # its holder died: the lock went with it


def test_mlflow_calls_give_up_within_the_configured_time(tmp_path):
    """A tracking server that accepts connections and never answers (hung) costs
    timeouts.mlflow_s, not MLflow's default of 7 retries with back-off on a 120 s limit."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        config = Config.model_validate({"project": {"dir": str(tmp_path), "name": "hung"},
                                        "timeouts": {"mlflow_s": 2},
                                        "uris": {"mlflow_tracking": f"http://127.0.0.1:{hung.getsockname()[1]}"}})
        started = time.monotonic()
        with pytest.raises(Exception, match="timeout|timed out|Read timed out"):
            registry.aliases(config)
        assert time.monotonic() - started < 5
    assert tracking.http_limits(30) == {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "9", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
        "MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER": "false"}
