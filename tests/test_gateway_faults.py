"""Faults at the gateway, against a real tritonserver (tiny exports) and the real gateway
process: a challenger that fails leaves every answer to the champion, a hung or stopped
Triton costs a clear 503 within the time limits (never a 500), a SIGTERM under load loses no
answered row, a SIGKILL at most the last flush window, and a restarted gateway keeps its port.

The module's gateway process runs the A/B policy (half the users to the challenger); a
test that needs another configuration runs the gateway's app or `Gateway` in this process.
Triton is stopped by the last test."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from dataclasses import replace

import httpx
import pytest
from fastapi.testclient import TestClient
from test_gateway import rows_for
from test_serving import TEXTS, make_export

from ftops import predlog
from ftops.config import Config
from ftops.serve import deploy, gateway, loadtest, traffic
from ftops.serve.gateway import process
from ftops.serve.triton import server
from ftops.serve.triton.client import TritonClient

LIMIT_S = 1.0  # the module's request and probe limits


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Triton with export 0 as champion and export 1 staged as challenger; the A/B config."""
    root = tmp_path_factory.mktemp("gwfaults")
    exports = [make_export(root / f"e{i}", seed=i) for i in range(2)]
    cfg = Config.model_validate({
        "project": {"dir": str(root / "proj"), "name": "gwfaults"},
        "gates": {"p99_ms": 60000},
        "serving": {"http_port": 0, "grpc_port": 0, "metrics_port": 0, "gateway_port": 0, "load_requests": 10,
                    "load_warmup": 0, "load_concurrency": 1, "traffic": "ab", "ab_share": 0.5, "log_flush_ms": 50},
        "timeouts": {"triton_probe_s": LIMIT_S},
    })
    server.start(cfg)
    try:
        assert deploy.deploy(cfg, exports[0], TEXTS[:16]).outcome == "promoted"
        deploy.stage(cfg, exports[1], TEXTS[:16])
        yield cfg
    finally:
        gateway.stop(cfg)
        server.stop(cfg)


@pytest.fixture
def gw(stack):
    """The module's gateway process: started on first use, and again after a test stopped it."""
    return gateway.status(stack) or gateway.start(stack)


@pytest.fixture
def hole():
    """host:port of a server that takes connections and never answers: a hung Triton."""
    sock = socket.create_server(("127.0.0.1", 0), backlog=64)
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def with_serving(cfg: Config, **changes) -> Config:
    return cfg.model_copy(update={"serving": cfg.serving.model_copy(update=changes)})


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


# ------------------------------------------------------------ the prediction log's time limits


def test_a_hung_postgres_costs_the_database_limit(hole):
    from sqlalchemy.exc import OperationalError

    from concurrent.futures import ThreadPoolExecutor

    pool, started = ThreadPoolExecutor(1), time.monotonic()
    try:
        with pytest.raises(OperationalError, match="timeout"):  # libpq alone would wait for ever
            pool.submit(predlog.engine, f"postgresql+psycopg://ftops@{hole}/log", timeout_s=2).result(timeout=10)
    finally:
        pool.shutdown(wait=False)
    assert time.monotonic() - started < 5


def test_a_locked_sqlite_log_costs_the_database_limit(tmp_path):
    import sqlite3

    from sqlalchemy.exc import OperationalError

    url = f"sqlite:///{tmp_path / 'log.db'}"
    predlog.engine(url).dispose()
    holder = sqlite3.connect(tmp_path / "log.db")
    holder.execute("BEGIN EXCLUSIVE")  # another writer holds the lock
    eng = predlog.engine(url, timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(OperationalError, match="locked"):
        predlog.write(eng, [predlog.Record("r", "t", "positive", 1.0, [1.0], 1.0, "m", None, "champion").row()])
    assert 0.4 < time.monotonic() - started < 3
    holder.rollback()
    holder.close()
    eng.dispose()


# ------------------------------------------------------------ the challenger fails


def test_a_challenger_that_is_not_loaded_leaves_every_answer_to_the_champion(stack, gw):
    routes = deploy.routing(stack)
    champion, challenger = routes["champion"].ensemble, routes["challenger"].ensemble
    users = [f"fallback-{i}" for i in range(40)]
    policy = traffic.make_policy(stack.serving, salt=stack.project.name)
    assigned = {u for u in users if policy.assign(u, True).route == "challenger"}
    assert 8 < len(assigned) < 32
    triton = server.status(stack)
    with TritonClient.for_config(triton.grpc_url, stack) as client:
        assert client.unload(challenger)  # every request routed to it now fails in Triton
    try:
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            answers = {u: http.post("/predict", json={"text": TEXTS[i % len(TEXTS)], "user": u})
                       for i, u in enumerate(users)}
            assert all(a.status_code == 200 for a in answers.values()), [a.text for a in answers.values()][:3]
            ids = {a.json()["request_id"]: u for u, a in answers.items()}
            for rid in ids:
                assert http.post("/feedback", json={"request_id": rid, "label": "neutral"}).status_code == 200
            health, metrics = http.get("/health").json(), http.get("/metrics").text
    finally:
        with TritonClient.for_config(triton.grpc_url, stack) as client:
            client.load(challenger)
    bodies = {u: a.json() for u, a in answers.items()}
    assert all(b["route"] == "champion" and b["model"] == champion for b in bodies.values())
    assert {u for u, b in bodies.items() if b["fallback_from"] == "challenger"} == assigned
    fell_back = f'ftops_gateway_fallbacks_total{{from_route="challenger",reason="not_loaded"}} {len(assigned)}.0'
    assert fell_back in metrics
    assert health["status"] == "ok" and health["fallbacks"] == {"challenger": {"not_loaded": len(assigned)}}
    assert "not loaded" in health["note"] and challenger in health["note"]
    frame = rows_for(stack, set(ids), expected=len(ids))
    assert set(frame.loc[frame["fallback_from"] == "challenger", "request_id"].map(ids)) == assigned
    assert set(frame["model"]) == {champion} and set(frame["route"]) == {"champion"}
    arms = traffic.ab_report(frame, resamples=100)["ab"]["arms"]
    assert arms["challenger"]["fallbacks"] == len(assigned) and arms["challenger"]["requests"] == 0
    assert arms["champion"]["fallbacks"] == 0 and arms["champion"]["n"] == len(users) - len(assigned)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_hung_triton_costs_only_the_time_limits(stack, hole, monkeypatch, protocol):
    """A challenger past its limit falls back; a hung server makes /health answer within the
    probe limit and /predict a 503 within the request limits, on either protocol."""
    cfg = with_serving(stack, protocol=protocol, ab_share=1.0, request_timeout_s=LIMIT_S)
    gw = gateway.Gateway(cfg)
    gw.start()
    real = gw._target
    monkeypatch.setattr(gw, "_target", lambda view, role: (real(view, role)[0], hole) if role == "challenger"
                        else real(view, role))
    try:
        started = time.monotonic()
        answer = gw.predict(gateway.PredictRequest(text="my bag is lost", user="u1"))
        assert time.monotonic() - started < LIMIT_S + 2
        assert answer["route"] == "champion" and answer["fallback_from"] == "challenger"
        assert gw.metrics.fallback_counts() == {"challenger": {"timeout": 1}}

        view = gw.routes.view()
        port = int(hole.rsplit(":", 1)[1])
        gw.routes._view = gateway.View(view.routes, replace(view.server, http_port=port, grpc_port=port),
                                       time.monotonic())
        gw.routes.every_s = 3600  # keep the hung server in view
        started = time.monotonic()
        status, body = gw.health()
        assert status == 503 and time.monotonic() - started < LIMIT_S + 0.5, body
        started = time.monotonic()
        with pytest.raises(gateway.RequestError) as failed:
            gw.predict(gateway.PredictRequest(text="my bag is lost", user="u1"))
        assert time.monotonic() - started < 2 * LIMIT_S + 1  # the challenger's limit, then the champion's
        assert (failed.value.status, failed.value.down) == (503, "timeout")
    finally:
        gw.close()


def test_shutdown_writes_the_log_first_and_drops_the_queued_shadow_copies(stack, hole, monkeypatch):
    cfg = with_serving(stack, traffic="shadow", request_timeout_s=2.0)
    gw = gateway.Gateway(cfg)
    gw.start()
    real = gw._classify
    monkeypatch.setattr(gw, "_classify", lambda url, route, texts, role: real(
        hole if role == "shadow" else url, route, texts, role))  # each shadow call hangs 2 s
    ids = [gw.predict(gateway.PredictRequest(text=TEXTS[i % len(TEXTS)]))["request_id"] for i in range(20)]
    started = time.monotonic()
    closed = gw.close()
    took = time.monotonic() - started
    print(f"\nclose() with 20 hanging shadow copies: {took:.2f} s, {closed}")
    assert closed.rows_lost == 0 and closed.shadow_cancelled >= 14 and closed.shadow_unfinished <= 2
    assert took < gateway.SHADOW_WAIT_S + 1.5  # running them all would take 20 s
    assert gw.metrics.shadow_counts()["cancelled"] == closed.shadow_cancelled
    frame = rows_for(stack, set(ids), expected=len(ids), timeout_s=0)
    assert set(frame.loc[frame["route"] == "champion", "request_id"]) == set(ids)


# ------------------------------------------------------------ the gateway process dies


def under_load(info: gateway.GatewayInfo, fault, seconds: float = 1.5) -> loadtest.GatewayLoad:
    """The gateway's load generator for `seconds`, then `fault()`, then the load stops."""
    stop, result = threading.Event(), {}
    thread = threading.Thread(target=lambda: result.update(load=loadtest.gateway(
        info.url, TEXTS, requests=100_000, concurrency=3, max_seconds=30, users=50, warmup=0, timeout_s=10,
        stop=stop)))
    thread.start()
    time.sleep(seconds)
    fault()
    stop.set()
    thread.join(40)
    return result["load"]


def test_sigterm_under_load_loses_no_answered_row(stack, gw):
    load = under_load(gw, lambda: gateway.stop(stack))  # SIGTERM, waits for the exit
    assert len(load.request_ids) > 20 and not process.alive(gw.pid)
    frame = rows_for(stack, set(load.request_ids), expected=len(load.request_ids), timeout_s=0)
    served = frame[frame["route"].isin(["champion", "challenger"])]
    print(f"\nSIGTERM under load: {len(load.request_ids)} answered at {load.throughput:.0f} req/s, "
          f"{len(load.request_ids) - len(served)} rows missing")
    assert set(served["request_id"]) == set(load.request_ids) and len(served) == len(load.request_ids)
    assert "shutdown: " in open(gw.log).read()


def test_kill_9_loses_at_most_the_last_flush_window_and_the_restart_keeps_the_port(stack, gw):
    moments: list[float] = []
    load = under_load(gw, lambda: (moments.append(time.monotonic()), os.kill(gw.pid, signal.SIGKILL)))
    killed = moments[0]
    frame = rows_for(stack, set(load.request_ids), expected=len(load.request_ids), timeout_s=1)
    lost = len(load.request_ids) - len(frame[frame["route"] != "shadow"])
    window = 2 * stack.serving.log_flush_ms / 1000 + 0.25  # the rows waiting, plus one write in flight
    recent = sum(at >= killed - window for at in load.answered_at)
    print(f"\nkill -9 under load: {len(load.request_ids)} answered at {load.throughput:.0f} req/s, {lost} rows lost "
          f"(log_flush_ms {stack.serving.log_flush_ms}; {recent} answered in the last {window:.2f} s)")
    assert lost <= recent
    assert gateway.last_port(stack) == gw.port
    again = gateway.start(stack)  # what the supervisor does
    assert again.pid != gw.pid and again.port == gw.port and stack.serving.gateway_port == 0
    with httpx.Client(base_url=again.url, timeout=30) as client:
        assert client.post("/predict", json={"text": "back on the same port"}).status_code == 200


def test_a_taken_last_port_gives_a_new_one(stack, gw):
    gateway.stop(stack)
    with socket.create_server(("127.0.0.1", gw.port)):
        moved = gateway.start(stack)
    try:
        assert moved.port != gw.port and gateway.last_port(stack) == moved.port
    finally:
        gateway.stop(stack)


# ------------------------------------------------------------ Triton down (stops Triton: last)


def clear_503(resp: httpx.Response, down: str) -> None:
    body = resp.json()
    assert resp.status_code == 503, resp.text
    assert body["down"] == down and body["request_id"] and "safe to send again" in body["error"]
    assert resp.headers["retry-after"] == str(gateway.RETRY_AFTER_S) == str(body["retry_after_s"])
    assert "127.0.0.1" not in resp.text  # what is down, not where


def test_triton_down_is_a_clear_503_fast_on_either_protocol(stack, gw):
    apps = {p: gateway.create_app(with_serving(stack, protocol=p, route_refresh_s=3600)) for p in ("grpc", "http")}
    with TestClient(apps["grpc"], raise_server_exceptions=False) as grpc_app, \
            TestClient(apps["http"], raise_server_exceptions=False) as http_app:
        clients = {"grpc": grpc_app, "http": http_app}
        for client in clients.values():  # their view of Triton is now kept: calls go to its old address
            assert client.post("/predict", json={"text": "up"}).status_code == 200
        server.stop(stack)
        for protocol, client in clients.items():
            started = time.monotonic()
            resp = client.post("/predict", json={"text": "down", "user": "u1"})
            assert time.monotonic() - started < LIMIT_S, protocol
            clear_503(resp, "triton")
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        time.sleep(stack.serving.route_refresh_s)
        for user in ("u1", "u2", "u3", "u4"):  # either arm
            started = time.monotonic()
            resp = client.post("/predict", json={"text": "down", "user": user})
            assert time.monotonic() - started < LIMIT_S
            clear_503(resp, "triton")
        started = time.monotonic()
        health = client.get("/health")
        assert health.status_code == 503 and time.monotonic() - started < LIMIT_S + 0.5
        assert "not running" in health.json()["reason"]
        metrics = client.get("/metrics").text
    assert metric(metrics, 'ftops_gateway_errors_total{route="champion",status="503"') + metric(
        metrics, 'ftops_gateway_errors_total{route="challenger",status="503"') >= 4
    assert 'status="500"' not in metrics
