"""The supervisor as its own process (`ftops.supervisor`, started the way `ftops up` starts
it) against the real tritonserver serving a tiny export: a hung or killed Triton comes back
on the same ports with the champion loaded, a crash loop is given up on after
supervisor.max_restarts, a service stopped on purpose stays down, SIGTERM ends the loop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import psutil
import pytest
import yaml
from test_serving import TEXTS, make_export

from ftops import procs, services
from ftops.config import load_config
from ftops.errors import FtopsError
from ftops.serve import deploy
from ftops.serve.triton import server
from ftops.serve.triton.client import TritonClient
from ftops.serve.triton.server import free_port

pytestmark = pytest.mark.slow

MAX_RESTARTS = 2
INTERVAL_S = 0.5


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Triton (ports 0) with a champion, and the supervisor; `down` stops all by PID."""
    root = tmp_path_factory.mktemp("supervisor")
    export = make_export(root / "e0", seed=0)
    settings = {
        "project": {"dir": str(root / "proj"), "name": "sup"},
        "gates": {"p99_ms": 60000},
        "serving": {"http_port": 0, "grpc_port": 0, "metrics_port": 0, "gateway_port": 0,
                    "load_requests": 10, "load_warmup": 0, "load_concurrency": 1},
        "timeouts": {"triton_probe_s": 1},
        "supervisor": {"interval_s": INTERVAL_S, "max_restarts": MAX_RESTARTS, "unready_s": 2},
        "monitoring": {"ui_port": free_port()},
        "uris": {"prefect_api": f"http://127.0.0.1:{free_port()}/api"},  # nothing there: no alerts to re-send
    }
    path = root / "sup.yaml"
    path.write_text(yaml.safe_dump(settings))
    config = load_config(path)
    saved = dict(os.environ)  # starts export the project's FTOPS_* / PREFECT_* settings
    try:
        services.start_one(config, "triton", str(path))
        assert deploy.deploy(config, export, TEXTS[:16]).outcome == "promoted"
        services.start_one(config, "supervisor", str(path))
        yield config
    finally:
        services.down(config)
        os.environ.clear()
        os.environ.update(saved)
    assert all(r.state == "down" for r in services.status(config)), services.status(config)


def row(config, name: str) -> services.Row:
    return {r.name: r for r in services.status(config)}[name]


def wait_until(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(0.1)
    return value


def serving_champion(config, old_pid: int):
    """The new server, once it answers with the champion (None before)."""
    info = server.status(config)
    if info is None or info.pid == old_pid:
        return None
    with TritonClient.for_config(info.grpc_url, config) as client:
        if not client.ready(deploy.champion_model(config)):
            return None
        assert client.classify(["my bag is lost AGAIN"], deploy.champion_model(config))[0].label
    return info


def group_gone(pgid: int, timeout_s: float = 5.0) -> bool:
    """No live process is left in the group. A zombie holds neither ports nor memory, and
    whether one lingers depends on the container's init reaping orphans, not on ftops."""
    import psutil

    def live() -> list[int]:
        found = []
        for proc in psutil.process_iter(["pid", "status"]):
            try:
                if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                    found.append(proc.pid)
            except (ProcessLookupError, psutil.Error):
                continue
        return found

    deadline = time.monotonic() + timeout_s
    while live():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def supervisor_log(config) -> str:
    return (services.folder(config) / "supervisor.log").read_text()


def test_alive_means_running_with_the_marker_and_sweep_needs_the_project(tmp_path):
    env = {**os.environ, "FTOPS_PROJECT__DIR": str(tmp_path)}
    child = subprocess.Popen(["sleep", "300"], env=env, start_new_session=True)
    try:
        # right after Popen the child may not have exec'd yet (its command line is still ours)
        wait_until(lambda: procs.alive(child.pid, "sleep 300"), 5, "the child runs sleep")
        assert not procs.alive(child.pid, "tritonserver")
        assert procs.sweep("sleep 300", "FTOPS_PROJECT__DIR", str(tmp_path / "other")) == []
        assert procs.sweep("sleep 300", "FTOPS_PROJECT__DIR", str(tmp_path)) == [child.pid]
        wait_until(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE, 5, "the child exited")
        assert not procs.alive(child.pid, "sleep 300")  # a zombie has exited, though its PID is there
    finally:
        child.kill()
        child.wait()


def test_a_hung_triton_is_restarted_and_serves_the_champion_again(stack, capsys):
    config = stack
    before = server.status(config)
    os.kill(before.pid, signal.SIGSTOP)  # alive, answers nothing
    stopped = time.monotonic()
    after = wait_until(lambda: serving_champion(config, before.pid), 60, "a new Triton serving the champion")
    seconds = time.monotonic() - stopped
    assert (after.http_port, after.grpc_port, after.metrics_port) == \
        (before.http_port, before.grpc_port, before.metrics_port)
    record = services.restarts(config)["triton"]
    assert record.count == 1 and "not ready" in record.last_reason and record.recover_s is not None
    assert seconds >= config.supervisor.unready_s  # a busy Triton gets that long
    with capsys.disabled():
        print(f"\nhung (SIGSTOP) Triton -> champion served again in {seconds:.1f} s "
              f"(restart {record.recover_s:.1f} s)")


def test_kill_9_triton_comes_back_on_the_same_ports_with_the_champion(stack, capsys):
    config = stack
    before = server.status(config)  # started by the supervisor in the test above
    os.kill(before.pid, signal.SIGKILL)
    killed = time.monotonic()
    after = wait_until(lambda: serving_champion(config, before.pid), 60, "a new Triton serving the champion")
    seconds = time.monotonic() - killed
    assert (after.http_port, after.grpc_port, after.metrics_port) == \
        (before.http_port, before.grpc_port, before.metrics_port)
    assert server.last_ports(config) == {"http": after.http_port, "grpc": after.grpc_port,
                                         "metrics": after.metrics_port}
    triton = row(config, "triton")
    assert triton.state == "up" and triton.restarts == 2 and triton.last_restart
    assert f"process {before.pid} gone (killed by SIGKILL)" in triton.last_reason
    assert group_gone(before.pid)  # its python-backend stubs went with it
    log = supervisor_log(config)
    assert f"triton: process {before.pid} gone (killed by SIGKILL); what was left of its process group" in log
    assert "triton is back after" in log and f"champion {deploy.champion_model(config)}" in log
    persisted = json.loads((services.folder(config) / "restarts.json").read_text())["triton"]
    assert persisted["count"] == 2 and persisted["recover_s"] == triton.recover_s
    with capsys.disabled():
        print(f"\nkill -9 Triton -> champion served again on the same ports in {seconds:.1f} s "
              f"(restart {triton.recover_s:.1f} s)")


def test_a_service_that_dies_at_every_start_is_left_down_after_max_restarts(stack):
    config = stack
    taken = socket.create_server(("127.0.0.1", config.monitoring.ui_port))  # the UI exits at once: port in use
    try:
        with pytest.raises(FtopsError, match="exited with code"):
            services.start_one(config, "evidently")  # wanted up by a person; fails
        wait_until(lambda: row(config, "evidently").state == "failed", 90, "the Evidently UI given up on")
        time.sleep(4 * INTERVAL_S)
        evidently = row(config, "evidently")
        assert evidently.restarts == MAX_RESTARTS and evidently.pid is None and evidently.recover_s is None
        assert "exited with code" in evidently.last_reason and "left down after 2 restarts" in evidently.last_reason
        assert services.desired(config)["evidently"].state == services.FAILED
        log = supervisor_log(config)
        assert log.count("evidently did not come back") == MAX_RESTARTS
        assert "evidently FAILED" in log and "address already in use" in log.split("evidently FAILED")[1]
    finally:
        taken.close()


def test_a_service_stopped_on_purpose_stays_down(stack):
    config = stack
    before = row(config, "triton").restarts
    assert services.stop_one(config, "triton")  # what `ftops serve down` calls
    time.sleep(6 * INTERVAL_S)
    assert server.status(config) is None
    assert row(config, "triton").state == "down" and row(config, "triton").restarts == before
    assert services.desired(config)["triton"].state == services.DOWN


def test_sigterm_stops_the_supervisor_promptly(stack):
    config = stack
    running = row(config, "supervisor")
    assert running.state == "up"
    started = time.monotonic()
    assert services.stop_one(config, "supervisor")
    assert time.monotonic() - started < 3
    assert row(config, "supervisor").state == "down"
    assert supervisor_log(config).rstrip().endswith("supervisor stopped")
