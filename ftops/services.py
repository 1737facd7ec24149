"""`ftops up / down / status`: every service of the embedded set-up on 127.0.0.1, each
started once (a second `up` finds it running), each stopped by PID.

Services: the Prefect server, the MLflow UI, Triton, the gateway, the Evidently UI and the
process serving the Prefect deployments (schedules + drift trigger). They share one
project dir and config, passed down as FTOPS_PROJECT__DIR / FTOPS_CONFIG.
"""

from __future__ import annotations

import base64
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ftops import procs, security
from ftops.config import Config

ORDER = ("prefect", "mlflow", "triton", "gateway", "evidently", "deployments")


@dataclass
class Row:
    name: str
    state: str
    url: str
    pid: int | None
    log: str | None


def folder(config: Config) -> Path:
    return config.resolved().project.dir / "services"


def environment(config: Config, config_path: str | None) -> dict[str, str]:
    """What every service and flow process needs to find the same project and servers."""
    cfg = config.resolved()
    env = {
        "FTOPS_PROJECT__DIR": str(cfg.project.dir),
        "PREFECT_API_URL": cfg.uris.prefect_api,
        "PREFECT_HOME": str(cfg.project.dir / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        "PREFECT_UI_SHOW_PROMOTIONAL_CONTENT": "false",
        "DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
    }
    if config_path:
        env["FTOPS_CONFIG"] = str(Path(config_path).resolve())
    auth = security.prefect_auth(cfg)
    if auth:  # every Prefect client ftops starts (flows, the drift event) sends it
        env["PREFECT_API_AUTH_STRING"] = auth
    return env


def _prefect_headers(env: dict[str, str]) -> dict[str, str]:
    auth = env.get("PREFECT_API_AUTH_STRING")
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}


def prefect_service(config: Config, env: dict[str, str]) -> procs.Service:
    api = urlparse(config.uris.prefect_api)
    (config.resolved().project.dir / "prefect").mkdir(parents=True, exist_ok=True)
    if env.get("PREFECT_API_AUTH_STRING"):  # the server then refuses every API call without it
        env = {**env, "PREFECT_SERVER_API_AUTH_STRING": env["PREFECT_API_AUTH_STRING"]}
    elif not security.is_loopback(api.hostname or "127.0.0.1"):
        raise procs.ServiceError(
            f"Refusing to start the Prefect server on {api.hostname} without an auth string: anyone who reaches "
            f"it could start a retraining. Set ${security.ENV_PREFECT_AUTH} (user:password) or "
            "security.prefect_auth_file, or bind it to 127.0.0.1 (uris.prefect_api).")
    return procs.Service(
        name="prefect", url=f"{api.scheme}://{api.netloc}",
        command=[str(Path(sys.executable).parent / "prefect"), "server", "start",
                 "--host", api.hostname or "127.0.0.1", "--port", str(api.port or 4200)],
        health_url=f"{config.uris.prefect_api.rstrip('/')}/health", env=env, ready_timeout_s=90,
        marker="server start")


def mlflow_service(config: Config, env: dict[str, str]) -> procs.Service:
    cfg = config.resolved()
    ui = urlparse(cfg.uris.mlflow_ui)
    return procs.Service(
        name="mlflow", url=cfg.uris.mlflow_ui,
        command=[str(Path(sys.executable).parent / "mlflow"), "server",
                 "--backend-store-uri", cfg.uris.mlflow_tracking,
                 "--default-artifact-root", (cfg.project.dir / "mlartifacts").as_uri(),
                 "--host", ui.hostname or "127.0.0.1", "--port", str(ui.port or 5000), "--workers", "1"],
        health_url=f"{cfg.uris.mlflow_ui.rstrip('/')}/health", env=env, ready_timeout_s=120,
        marker="mlflow server")


def deployments_service(config: Config, env: dict[str, str], config_path: str | None) -> procs.Service:
    command = [sys.executable, "-m", "flows.deployments"]
    if config_path:
        command += ["--config", str(Path(config_path).resolve())]
    api = config.uris.prefect_api.rstrip("/")
    # Healthy once the deployments exist on the server (registering them takes a few seconds).
    return procs.Service(name="deployments", url=f"{api.removesuffix('/api')}/deployments",
                         command=command, health_url=f"{api}/deployments/name/lifecycle/lifecycle",
                         env=env, ready_timeout_s=90, marker="flows.deployments",
                         headers=_prefect_headers(env))


def up(config: Config, config_path: str | None = None, only: tuple[str, ...] = ORDER) -> list[Row]:
    """Start what is not running, in dependency order; return every service's row."""
    env = environment(config, config_path)
    os.environ.update(env)  # in-process starts (Triton, gateway, Evidently UI) see the same
    base = folder(config)
    for name in only:
        if name == "prefect":
            procs.start(base, prefect_service(config, env), config.retention)
        elif name == "mlflow":
            procs.start(base, mlflow_service(config, env), config.retention)
        elif name == "triton":
            from ftops.serve import deploy, server

            server.start(config)
            deploy.reload_routes(config)
        elif name == "gateway":
            from ftops.serve import gateway

            gateway.start(config)
        elif name == "evidently":
            from ftops import monitor

            monitor.ui_start(config)
        elif name == "deployments":
            procs.start(base, deployments_service(config, env, config_path), config.retention)
    return status(config)


def down(config: Config) -> list[str]:
    """Stop everything this project started, in reverse order; the names stopped."""
    stopped = []
    base = folder(config)
    for name in reversed(ORDER):
        if name == "triton":
            from ftops.serve import server

            done = server.stop(config)
        elif name == "gateway":
            from ftops.serve import gateway

            done = gateway.stop(config)
        elif name == "evidently":
            from ftops import monitor

            done = monitor.ui_stop(config)
        else:
            done = procs.stop(base, name)
            project = str(config.resolved().project.dir)
            marker = {"prefect": "server start", "mlflow": "mlflow server", "deployments": "flows.deployments"}[name]
            done = bool(procs.sweep(marker, "FTOPS_PROJECT__DIR", project)) or done
        if done:
            stopped.append(name)
    return stopped


def status(config: Config) -> list[Row]:
    rows = []
    base = folder(config)
    for name in ORDER:
        if name == "triton":
            from ftops.serve import server

            info = server.status(config)
            rows.append(Row(name, "up" if info else "down", f"grpc {info.grpc_url}, http {info.http_url}" if info else "",
                            info.pid if info else None, info.log if info else None))
        elif name == "gateway":
            from ftops.serve import gateway

            rows.append(_row(name, gateway.status(config)))
        elif name == "evidently":
            from ftops import monitor

            rows.append(_row(name, monitor.ui_status(config)))
        else:
            rows.append(_row(name, procs.status(base, name)))
    return rows


def _row(name: str, running) -> Row:
    if running is None:
        return Row(name, "down", "", None, None)
    return Row(name, "up", getattr(running, "url", ""), getattr(running, "pid", None), getattr(running, "log", None))


def protection(config: Config) -> list[tuple[str, str]]:
    """What guards the writes that steer the loop, as (what, state) lines for `ftops status`."""
    cfg = config.resolved()
    tokens = security.gateway_tokens(cfg)
    host = cfg.serving.host
    gateway_writes = (f"token required ({len(tokens)} sender{'s' if len(tokens) != 1 else ''})" if tokens else
                      f"OPEN: no token, anyone who reaches {host} may send labels"
                      + (" (loopback only)" if security.is_loopback(host) else ""))
    prefect = ("auth string required" if security.prefect_auth(cfg) else
               "OPEN: anyone who reaches the Prefect API may start a retraining")
    return [("gateway /feedback", gateway_writes), ("Prefect API", prefect)]

