"""Faults of the serving path, each injected while a bounded load runs against the real
gateway in front of the real Triton, with the supervisor watching both: what must hold is
that every request gets the champion's answer or a clear 503, the log loses nothing it
promised, and the stack comes back by itself."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml
from faultload import TEXTS, Load, record, wait_until
from test_disk_full import candidate, fill, small_disk  # noqa: F401 - candidate is a fixture
from test_export import MAX_LENGTH, parity_inputs
from test_monitor import Traffic
from test_serving import make_export

from ftops import export, monitor, predlog, services
from ftops.config import Config, load_config
from ftops.serve import deploy, gateway
from ftops.serve.deployable import Deployable
from ftops.serve.triton import models, repository, server
from ftops.serve.triton.client import TritonClient
from ftops.serve.triton.server import free_port

pytestmark = pytest.mark.slow


@dataclass
class Stack:
    config: Config
    path: Path
    exports: list[Path]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.serving.gateway_port}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Triton with export 0 as champion, the gateway (A/B policy, half the users to a
    challenger when one is staged) and the supervisor; every process stopped by PID."""
    root = tmp_path_factory.mktemp("faults")
    exports = [make_export(root / f"e{i}", seed=i) for i in range(3)]
    settings = {
        "project": {"dir": str(root / "proj"), "name": "faults"},
        "gates": {"p99_ms": 60000},
        "serving": {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port(),
                    "gateway_port": free_port(), "load_requests": 10, "load_warmup": 0, "load_concurrency": 1,
                    "traffic": "ab", "ab_share": 0.5, "log_flush_ms": 50},
        "supervisor": {"interval_s": 0.5},
        "uris": {"prefect_api": f"http://127.0.0.1:{free_port()}/api"},
    }
    path = root / "faults.yaml"
    path.write_text(yaml.safe_dump(settings))
    config = load_config(path)
    saved = dict(os.environ)  # services export FTOPS_PROJECT__DIR & co. into this process: undone below
    try:
        server.start(config)
        assert deploy.deploy(config, exports[0], TEXTS * 2).outcome == "promoted"
        gateway.start(config)
        services.up(config, str(path), only=("supervisor",))
        yield Stack(config, path, exports)
    finally:
        services.down(config)
        os.environ.clear()
        os.environ.update(saved)
    assert all(r.state == "down" for r in services.status(config))


def logged(config: Config, ids: set[str], timeout_s: float = 10.0) -> pd.DataFrame:
    """The served rows of these request ids, once all reached the log (or the time is up)."""
    eng = predlog.engine(config.resolved().uris.prediction_log)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            frame = predlog.read(eng, routes=("champion", "challenger"))
            frame = frame[frame["request_id"].isin(ids)]
            if set(frame["request_id"]) >= ids or time.monotonic() > deadline:
                return frame
            time.sleep(0.2)
    finally:
        eng.dispose()


def champion_ready(config: Config) -> bool:
    info = server.status(config)
    if info is None:
        return False
    with TritonClient.for_config(info.grpc_url, config) as client:
        return client.ready(deploy.champion_model(config))


def routed_versions_whole(config: Config) -> None:
    """Every routed ensemble is loaded and its repository copy matches its record."""
    info = server.status(config)
    repo = Path(info.repository)
    routes = deploy.routing(config)
    with TritonClient.for_config(info.grpc_url, config) as client:
        for role, route in routes.items():
            assert client.ready(route.ensemble), f"{role} {route.ensemble} is not loaded"
            assert not repository.version_problems(repo, models.ModelNames.of(route.ensemble)), role
    assert {r.tag for r in routes.values()} <= set(repository.versions(repo, config.project.name))


# ---------------------------------------------------------------- the challenger fails


def test_a_challenger_that_errors_on_every_request_gets_the_champions_answers(stack):
    config = stack.config
    deploy.stage(config, stack.exports[1], TEXTS * 2)
    challenger = deploy.routing(config)["challenger"]
    info = server.status(config)
    try:
        with TritonClient.for_config(info.grpc_url, config) as client:
            client.unload(challenger.ensemble)  # every request routed to it now fails in Triton
        with Load(stack.url, rate=40, user_prefix="ab") as load:
            time.sleep(4)
        out = load.outcome
        assert out.sent > 50 and not out.failed and len(out.ok) == out.sent
        rows = logged(config, out.ok_ids())
        fell_back = rows[rows["fallback_from"] == "challenger"]
        assert 0.3 < len(fell_back) / len(rows) < 0.7  # half the users were the challenger's
        assert set(fell_back["model"]) == {deploy.champion_model(config)}
        record("a challenger that errors on every request under A/B", out, lost=len(out.ok_ids()) - len(rows),
               fallbacks=len(fell_back))
    finally:
        deploy.unstage(config)


# ---------------------------------------------------------------- deploys that cannot hurt the champion


def test_deploying_the_serving_tag_again_with_a_failing_gate_keeps_the_champion(stack):
    config = stack.config
    before = deploy.routing(config)["champion"]
    strict = config.model_copy(update={"gates": config.gates.model_copy(update={"p99_ms": 0.001})})
    with Load(stack.url, rate=30) as load:
        result = deploy.deploy(strict, stack.exports[0], TEXTS * 2)
        time.sleep(1)
    out = load.outcome
    assert result.outcome != "promoted"
    assert deploy.routing(config)["champion"] == before
    assert not out.failed and len(out.ok) == out.sent
    routed_versions_whole(config)
    record("deploying the serving tag again with a gate that fails", out, deploy=result.outcome)


def test_a_deploy_and_a_rollback_at_the_same_moment_run_one_after_the_other(stack):
    config = stack.config
    assert deploy.deploy(config, stack.exports[1], TEXTS * 2).outcome == "promoted"
    e0, e1, e2 = (deploy.tag_for(Deployable.from_export(e), None) for e in stack.exports)
    errors: list[BaseException] = []

    def run(call):
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    with Load(stack.url, rate=30) as load:
        threads = [threading.Thread(target=run, args=(lambda: deploy.deploy(config, stack.exports[2], TEXTS * 2),)),
                   threading.Thread(target=run, args=(lambda: deploy.rollback(config),))]
        [t.start() for t in threads]
        [t.join(300) for t in threads]
        time.sleep(1)
    out = load.outcome
    assert not errors, errors
    routes = deploy.routing(config)
    serial = {("deploy", "rollback"): (e1, e2), ("rollback", "deploy"): (e2, e0)}
    assert (routes["champion"].tag, routes["previous"].tag) in serial.values(), routes
    routed_versions_whole(config)
    assert not out.failed and len(out.ok) == out.sent
    record("deploy and rollback at the same moment", out, champion=routes["champion"].tag)


# ---------------------------------------------------------------- the disk fills up


@pytest.fixture(scope="module")
def traffic(airline_snapshot) -> Traffic:
    return Traffic(airline_snapshot)


def test_a_full_disk_during_export_and_during_a_drift_check_leaves_the_champion_serving(
        stack, candidate, airline_snapshot, traffic, tmp_path):  # noqa: F811 - the imported fixture
    config = stack.config
    checks_before = [c.id for c in monitor.history(config)]
    with Load(stack.url, rate=30) as load:
        with small_disk(tmp_path / "disk", 2 * 1024) as disk:  # the tokenizer fits, the ONNX model does not
            target = disk / "exports" / "v9"
            with pytest.raises(export.ExportError, match="No space left on the device") as export_error:
                export.export_model(candidate, target, [], MAX_LENGTH, variants=["fp32"],
                                    **parity_inputs(airline_snapshot))
            assert list(target.parent.iterdir()) == []  # neither an export nor a partial folder
        with small_disk(monitor.monitoring_dir(config), 1024) as reports:
            filler = fill(reports)
            with pytest.raises(monitor.MonitorError, match="No space left on the device") as check_error:
                monitor.check(config, traffic.window("other"), traffic.reference)
            assert [p for p in reports.rglob("*") if p.is_file()] == [filler]  # no half-written report
        time.sleep(1)
    out = load.outcome
    assert [c.id for c in monitor.history(config)] == checks_before  # nothing stored for the failed check
    assert not out.failed and len(out.ok) == out.sent
    record("disk full during export and during a drift check", out,
           export_error=str(export_error.value)[:60], check_error=str(check_error.value)[:60])


# ---------------------------------------------------------------- processes that die


def test_kill_9_triton_under_load(stack):
    config = stack.config
    before = server.status(config)
    with Load(stack.url, rate=40) as load:
        time.sleep(2)
        os.kill(before.pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: (s := server.status(config)) is not None and s.pid != before.pid
                   and champion_ready(config), 90, "Triton back with the champion loaded")
        time.sleep(2)
    out = load.outcome
    recover = out.recovered_after(killed)
    after = server.status(config)
    assert (after.http_port, after.grpc_port) == (before.http_port, before.grpc_port)
    assert out.clear_503 > 0 and not out.failed, [a for a in out.failed][:3]
    rows = logged(config, out.ok_ids())
    assert len(rows) == len(out.ok_ids())
    assert recover is not None and recover < 60
    # the supervisor counts the restart once its start returns, which also restores the
    # other routed models: on a slow machine that is after the champion answers again
    wait_until(lambda: {r.name: r for r in services.status(config)}["triton"].restarts >= 1, 60,
               "the supervisor recorded the restart")
    record("kill -9 Triton under load", out, lost=len(out.ok_ids()) - len(rows), recover_s=recover)


def signal_the_gateway(stack, sig: int):
    """Under load, send `sig` to the gateway, wait until the supervisor's restart answers
    again; what the load saw, and when the signal went."""
    before = gateway.status(stack.config)
    with Load(stack.url, rate=40) as load:
        time.sleep(2)
        os.kill(before.pid, sig)
        sent = time.monotonic()
        wait_until(lambda: (g := gateway.status(stack.config)) is not None and g.pid != before.pid, 60,
                   "the gateway restarted")
        wait_until(lambda: any(a.status == 200 and a.sent > sent + 0.5 for a in load.outcome.answers), 30,
                   "answers again")
        time.sleep(1)
    return load.outcome, sent


def test_sigterm_to_the_gateway_under_load_loses_no_logged_row(stack):
    config = stack.config
    out, stopped = signal_the_gateway(stack, signal.SIGTERM)
    rows = logged(config, out.ok_ids())
    assert len(rows) == len(out.ok_ids())  # every answered request is in the log
    recover = out.recovered_after(stopped)
    record("SIGTERM to the gateway under load", out, lost=len(out.ok_ids()) - len(rows), recover_s=recover)
    assert out.outage() < 10


def test_kill_9_the_gateway_under_load(stack):
    config = stack.config
    flush_window = config.serving.log_flush_ms / 1000
    out, killed = signal_the_gateway(stack, signal.SIGKILL)
    rows = logged(config, out.ok_ids(), timeout_s=5)
    lost = len(out.ok_ids()) - len(rows)
    answered_in_window = sum(killed - flush_window - 0.5 <= a.done <= killed for a in out.ok)
    assert lost <= answered_in_window, (lost, answered_in_window)
    recover = out.recovered_after(killed)
    assert recover is not None and out.outage() < 10
    record("kill -9 the gateway under load", out, lost=lost, recover_s=recover,
           answered_in_flush_window=answered_in_window)
