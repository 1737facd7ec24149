"""With a Prefect auth string configured, the Prefect server ftops starts refuses every
caller without it, over HTTP and over the websocket event stream, so an outsider cannot
fire the drift event; ftops' own clients (the drift event, the health probes) still get in."""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.request

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from ftops import monitor, security, services
from ftops.config import Config
from ftops.serve.triton.server import free_port

pytestmark = pytest.mark.slow

AUTH = "ftops:s3cret-for-the-test"


@pytest.fixture(scope="module")
def protected(tmp_path_factory):
    """A real Prefect server started by `services.up`, its auth string from $FTOPS_PREFECT_AUTH."""
    root = tmp_path_factory.mktemp("prefect-auth")
    cfg = Config.model_validate({"project": {"dir": str(root / "proj")},
                                 "uris": {"prefect_api": f"http://127.0.0.1:{free_port()}/api"}})
    saved = dict(os.environ)
    os.environ[security.ENV_PREFECT_AUTH] = AUTH
    try:
        services.up(cfg, only=("prefect",))
        yield cfg
    finally:
        services.down(cfg)
        os.environ.clear()
        os.environ.update(saved)


def _call(url: str, body: dict | None = None, auth: str | None = None) -> int:
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _events(api: str) -> list[dict]:
    headers = {"Content-Type": "application/json",
               "Authorization": "Basic " + base64.b64encode(AUTH.encode()).decode()}
    body = json.dumps({"filter": {"event": {"name": [monitor.EVENT]}}}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{api}/events/filter", body, headers), timeout=10) as r:
        return json.loads(r.read())["events"]


def test_the_api_needs_the_auth_string_but_health_probes_do_not(protected):
    api = protected.uris.prefect_api
    assert _call(f"{api}/health") == 200  # probes (ftops status, Kubernetes) stay open
    assert _call(f"{api}/deployments/filter", {}) == 401
    assert _call(f"{api}/deployments/filter", {}, auth="ftops:wrong") == 401
    assert _call(f"{api}/deployments/filter", {}, auth=AUTH) == 200
    event = {"event": monitor.EVENT, "resource": {"prefect.resource.id": "ftops.model.x"},
             "occurred": "2026-12-02T00:00:00Z", "id": "3f1b2c4d-0000-4000-8000-000000000000"}
    assert _call(f"{api}/events", [event]) == 401
    assert _events(api) == []


@pytest.mark.parametrize("handshake", [None, {"type": "auth", "token": None}, {"type": "auth", "token": "ftops:wrong"}])
def test_the_websocket_event_stream_refuses_without_the_auth_string(protected, handshake):
    ws_url = protected.uris.prefect_api.replace("http://", "ws://") + "/events/in"
    event = {"event": monitor.EVENT, "resource": {"prefect.resource.id": "ftops.model.ws"},
             "occurred": "2026-12-02T00:00:00Z", "id": "3f1b2c4d-0000-4000-8000-000000000001"}
    with pytest.raises((ConnectionClosed, InvalidStatus)):  # refused at the handshake or closed after it
        with connect(ws_url, subprotocols=None if handshake is None else ["prefect"], open_timeout=10) as ws:
            if handshake is not None:
                ws.send(json.dumps(handshake))
            for _ in range(5):
                ws.send(json.dumps(event))
                ws.recv(timeout=2)
    time.sleep(1)
    assert [e for e in _events(protected.uris.prefect_api) if e["resource"]["prefect.resource.id"] ==
            "ftops.model.ws"] == []


def test_ftops_sends_the_drift_event_with_its_credential(protected, monkeypatch):
    monkeypatch.setattr(monitor.events, "event_payload", lambda result: {"test": "auth"})
    assert monitor.emit_drift_event(protected, None) is True
    deadline = time.monotonic() + 30
    while not (found := [e for e in _events(protected.uris.prefect_api) if e["payload"].get("test") == "auth"]):
        assert time.monotonic() < deadline, "the authenticated drift event never reached the server"
        time.sleep(0.5)
    assert found[0]["resource"]["prefect.resource.id"] == f"ftops.model.{protected.project.name}"


def test_a_prefect_server_off_loopback_needs_an_auth_string(tmp_path, monkeypatch):
    monkeypatch.delenv(security.ENV_PREFECT_AUTH, raising=False)
    cfg = Config.model_validate({"project": {"dir": str(tmp_path)}, "uris": {"prefect_api": "http://0.0.0.0:4299/api"}})
    with pytest.raises(services.procs.ServiceError, match="auth string"):
        services.prefect_service(cfg, services.environment(cfg, None))
    monkeypatch.setenv(security.ENV_PREFECT_AUTH, AUTH)
    env = services.environment(cfg, None)
    assert env["PREFECT_API_AUTH_STRING"] == AUTH
    assert services.prefect_service(cfg, env).env["PREFECT_SERVER_API_AUTH_STRING"] == AUTH
