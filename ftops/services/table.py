"""The project's table of services: for each, how it starts, stops and is found running.

Services: the Prefect server, the MLflow UI, Triton, the gateway, the Evidently UI, the
process serving the Prefect deployments (schedules + drift trigger) and the supervisor
(ftops.supervisor), which restarts what died. Four run as a procs.Service built here;
Triton, the gateway and the Evidently UI are started by their own modules. They share one
project dir and config, passed down as FTOPS_PROJECT__DIR / FTOPS_CONFIG.
"""

from __future__ import annotations

import base64
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import import_module
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ftops import procs, security
from ftops.config import Config
from ftops.services.records import folder, heartbeat_file, read_json

MARKERS = {"prefect": "server start", "mlflow": "mlflow server", "deployments": "flows.deployments",
           "supervisor": "ftops.supervisor"}  # the services procs.start runs (swept by `down`)
SUPERVISOR_READY_S = 60.0  # until its first heartbeat (imports and config loaded)


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


def prefect_headers(env: dict[str, str]) -> dict[str, str]:
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
                         headers=prefect_headers(env))


def supervisor_service(config: Config, env: dict[str, str], config_path: str | None) -> procs.Service:
    command = [sys.executable, "-m", "ftops.supervisor"]
    if config_path:
        command += ["--config", str(Path(config_path).resolve())]
    return procs.Service(name="supervisor", url="", command=command, env=env, marker=MARKERS["supervisor"])


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Entry:
    """How one service starts (what was loaded, in words, or None), stops (True if it ran)
    and is found running (a record with pid, url and log, or None)."""

    start: Callable[[Config, dict[str, str], str | None], str | None]
    stop: Callable[[Config], bool]
    running: Callable[[Config], Any]
    url: Callable[[Any], str] = lambda running: getattr(running, "url", "")  # the status row's


def managed(name: str, build: Callable[[Config, dict[str, str], str | None], procs.Service]) -> Entry:
    """A service procs runs: started from the procs.Service `build` makes, stopped by PID,
    then swept by its marker (an orphan whose state file is gone)."""

    def start(config: Config, env: dict[str, str], config_path: str | None) -> None:
        procs.start(folder(config), build(config, env, config_path), config.retention)

    def stop(config: Config) -> bool:
        done = procs.stop(folder(config), name)
        project = str(config.resolved().project.dir)
        return bool(procs.sweep(MARKERS[name], "FTOPS_PROJECT__DIR", project)) or done

    return Entry(start, stop, lambda config: procs.status(folder(config), name))


def _start_supervisor(config: Config, env: dict[str, str], config_path: str | None) -> None:
    """Running once its first heartbeat is written (it loaded the config and handles
    SIGTERM); a supervisor that exits at start raises with its log."""
    base = folder(config)
    running = procs.start(base, supervisor_service(config, env, config_path), config.retention)
    outcome = procs.wait_ready(lambda: read_json(heartbeat_file(config)).get("pid") == running.pid,
                               lambda: procs.status(base, "supervisor") is None, SUPERVISOR_READY_S, every_s=0.1)
    if outcome == procs.EXITED:
        raise procs.ServiceError(f"The supervisor exited at start. Last log lines ({running.log}):\n"
                                 f"{procs.tail(running.log)}")
    if outcome == procs.TIMED_OUT:
        procs.stop(base, "supervisor")
        raise procs.ServiceError(f"The supervisor did not finish its first round of checks within "
                                 f"{SUPERVISOR_READY_S:.0f} s. Last log lines ({running.log}):\n"
                                 f"{procs.tail(running.log)}")


def _start_triton(config: Config, env: dict[str, str], config_path: str | None) -> str:
    from ftops.serve import deploy
    from ftops.serve.triton import server

    server.start(config)
    loaded = deploy.reload_routes(config)
    return ", ".join(f"{role} {model}" for role, model in loaded.items()) or "no routes"


def _call(module: str, function: str) -> Callable[[Config], Any]:
    """`module.function(config)`, imported on first use (the serving and monitoring modules
    are heavy, and import procs themselves)."""
    return lambda config: getattr(import_module(module), function)(config)


def _start_by(module: str, function: str) -> Callable[[Config, dict[str, str], str | None], None]:
    """A start in the service's own module (the environment is exported around it)."""
    call = _call(module, function)

    def start(config: Config, env: dict[str, str], config_path: str | None) -> None:
        call(config)

    return start


_supervisor = managed("supervisor", supervisor_service)
SERVICES: dict[str, Entry] = {  # in dependency order
    "prefect": managed("prefect", lambda config, env, config_path: prefect_service(config, env)),
    "mlflow": managed("mlflow", lambda config, env, config_path: mlflow_service(config, env)),
    "triton": Entry(_start_triton, _call("ftops.serve.triton.server", "stop"),
                    _call("ftops.serve.triton.server", "status"),
                    url=lambda info: f"grpc {info.grpc_url}, http {info.http_url}"),
    "gateway": Entry(_start_by("ftops.serve.gateway", "start"), _call("ftops.serve.gateway", "stop"),
                     _call("ftops.serve.gateway", "status")),
    "evidently": Entry(_start_by("ftops.monitor", "ui_start"), _call("ftops.monitor", "ui_stop"),
                       _call("ftops.monitor", "ui_status")),
    "deployments": managed("deployments", deployments_service),
    "supervisor": replace(_supervisor, start=_start_supervisor),
}
ORDER = tuple(SERVICES)   # dependency order: `up` starts in it, `down` stops in reverse
SUPERVISED = ORDER[:-1]  # the supervisor does not restart itself
