"""`ftops up / down / status`: every service of the embedded set-up on 127.0.0.1, each
started once (a second `up` finds it running), each stopped by PID.

Services: the Prefect server, the MLflow UI, Triton, the gateway, the Evidently UI, the
process serving the Prefect deployments (schedules + drift trigger) and the supervisor
(ftops.supervisor), which restarts what died. They share one project dir and config,
passed down as FTOPS_PROJECT__DIR / FTOPS_CONFIG.

What a person wants up is recorded in `<project>/services/desired.json`: `start_one` /
`up` mark a service up, `stop_one` / `down` mark it down before stopping it, so the
supervisor never restarts what someone stopped on purpose; it marks a service `failed`
when it gave up on a crash loop. It keeps the restart counts in `restarts.json`. A start
or stop of one service holds `locks/<name>.lock`, so the supervisor and a person never
start it twice or restart what is being stopped.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

from filelock import FileLock, Timeout

from ftops import atomic, procs, security
from ftops.config import Config
from ftops.errors import FtopsError

log = logging.getLogger(__name__)

ORDER = ("prefect", "mlflow", "triton", "gateway", "evidently", "deployments", "supervisor")
SUPERVISED = ORDER[:-1]  # the supervisor does not restart itself
UP, DOWN, FAILED = "up", "down", "failed"
ABSENT = "absent"  # no wish recorded: never started through services, nor stopped
MARKERS = {"prefect": "server start", "mlflow": "mlflow server", "deployments": "flows.deployments",
           "supervisor": "ftops.supervisor"}  # the services procs.start runs (swept by `down`)
SUPERVISOR_READY_S = 60.0  # until its first heartbeat (imports and config loaded)


@dataclass
class Row:
    name: str
    state: str                     # up | down | failed (the supervisor gave up on it)
    url: str
    pid: int | None
    log: str | None
    restarts: int = 0              # by the supervisor, ever (restarts.json)
    last_restart: str | None = None
    last_reason: str | None = None
    recover_s: float | None = None


@dataclass
class Wish:
    """What is wanted of one service, and since when (a crash loop counts from there)."""

    state: str    # up | down | failed
    since: float  # epoch seconds
    by: str       # start | stop | adopted | supervisor


@dataclass
class Restarts:
    """The supervisor's record of one service."""

    count: int = 0
    last_restart: str | None = None   # ISO time, UTC
    last_reason: str | None = None    # what it found, and how the restart went
    recover_s: float | None = None    # from finding it dead to ready again (None: it did not come back)
    attempts: list[float] = field(default_factory=list)  # epoch seconds of the restarts in supervisor.window_s
    failed_at: str | None = None      # when it was left down as a crash loop


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


def heartbeat_file(config: Config) -> Path:
    return folder(config) / "supervisor.heartbeat"


# ---------------------------------------------------------------- wanted state, restart records


def _desired_file(config: Config) -> Path:
    return folder(config) / "desired.json"


def _records_lock(config: Config, what: str) -> FileLock:
    folder(config).mkdir(parents=True, exist_ok=True)
    return FileLock(folder(config) / f".{what}.lock", timeout=config.timeouts.lock_s)


def desired(config: Config) -> dict[str, Wish]:
    """What is wanted of each service; a service never started nor stopped has no entry."""
    return {name: Wish(**wish) for name, wish in _read_json(_desired_file(config)).items()}


def wanted(config: Config, name: str) -> bool:
    wish = desired(config).get(name)
    return wish is not None and wish.state == UP


def mark(config: Config, name: str, state: str, by: str, only_if: str | None = None) -> Wish | None:
    """Record what is wanted of a service (atomically, under a lock: the CLI and the
    supervisor both write); with `only_if`, only when that is what is recorded now (ABSENT:
    nothing); the new wish, or None when it was left as it was."""
    with _records_lock(config, "desired"):
        wishes = desired(config)
        current = wishes.get(name)
        if only_if is not None and (current.state if current else ABSENT) != only_if:
            return None
        wishes[name] = Wish(state, time.time(), by)
        atomic.write_text(_desired_file(config), json.dumps({k: asdict(v) for k, v in wishes.items()}, indent=2))
        return wishes[name]


def adopt(config: Config, name: str) -> Wish | None:
    """A service that runs though nothing (or `down`, `failed`) is recorded was started on
    purpose by its module's own start (e.g. `server.start`): it is wanted up from now on.
    None when the record changed meanwhile."""
    current = desired(config).get(name)
    return mark(config, name, UP, "adopted", only_if=current.state if current else ABSENT)


def _restarts_file(config: Config) -> Path:
    return folder(config) / "restarts.json"


def restarts(config: Config) -> dict[str, Restarts]:
    """The supervisor's restart records per service (restarts.json): what `ftops status`
    shows, and what other code reads to learn what the supervisor did."""
    return {name: Restarts(**record) for name, record in _read_json(_restarts_file(config)).items()}


def save_restart(config: Config, name: str, record: Restarts) -> None:
    with _records_lock(config, "restarts"):
        records = restarts(config)
        records[name] = record
        atomic.write_text(_restarts_file(config), json.dumps({k: asdict(v) for k, v in records.items()}, indent=2))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise procs.ServiceError(f"{path} cannot be read ({exc}). It is rewritten whole on every change; "
                                 "delete it to start over (nothing is then known as stopped on purpose).") from None
    return data if isinstance(data, dict) else {}


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------- start, stop


def _lock(config: Config, name: str) -> FileLock:
    locks = folder(config) / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    return FileLock(locks / f"{name}.lock", is_singleton=True)


def busy(config: Config, name: str) -> bool:
    """Someone is starting or stopping the service right now (its lock is held)."""
    lock = _lock(config, name)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def up(config: Config, config_path: str | None = None, only: tuple[str, ...] = ORDER,
       say: Callable[[str], None] = log.info) -> list[Row]:
    """Start what is not running, in dependency order, each marked wanted; every service's row.
    Before Triton loads the routes, serving, registry and drift reference are brought into
    agreement (`ftops reconcile`); once Prefect runs, a drift alert it missed is sent."""
    for name in only:
        if name == "triton":
            _settle(config, say)
        start_one(config, name, config_path)
    if "prefect" in only:
        _resend(config, say)
    return status(config)


def _settle(config: Config, say: Callable[[str], None]) -> None:
    from ftops.reconcile import reconcile

    for line in reconcile(config).lines():
        say(f"reconcile: {line}")


def _resend(config: Config, say: Callable[[str], None]) -> None:
    from ftops import monitor

    try:
        if monitor.resend_pending(config):
            say("a drift alert Prefect had missed was sent: the retraining it asks for starts now")
    except FtopsError as exc:  # the store is down: the next check or the supervisor retries
        say(f"undelivered drift alerts could not be read ({exc}); the supervisor retries")


def start_one(config: Config, name: str, config_path: str | None = None) -> str | None:
    """Mark a service wanted up and start it unless it runs (what `ftops up`, `ftops serve
    up`, `ftops gateway up` ... call); for Triton the routes are loaded again. What was
    loaded, in words, or None."""
    _check_name(name)
    if name == "supervisor" and not config.supervisor.enabled:
        return None
    with _held(config, name):
        mark(config, name, UP, "start")
        return _start(config, name, config_path)


@contextmanager
def _held(config: Config, name: str):
    """The service's lock, waited for up to timeouts.lock_s."""
    lock = _lock(config, name)
    try:
        lock.acquire(timeout=config.timeouts.lock_s)
    except Timeout:
        raise procs.ServiceError(f"Another ftops process has been starting or stopping {name} for "
                                 f"{config.timeouts.lock_s:.0f} s (it holds {lock.lock_file}). Let it finish, "
                                 "or stop that process, then try again.") from None
    try:
        yield
    finally:
        lock.release()


def restart(config: Config, name: str, config_path: str | None = None) -> tuple[bool, str | None]:
    """The supervisor's restart: (started, what was loaded). Not started when it is no
    longer wanted (stopped on purpose meanwhile), someone else is starting or stopping it,
    or it runs again."""
    lock = _lock(config, name)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False, None
    try:
        if not wanted(config, name) or pid(config, name) is not None:
            return False, None
        return True, _start(config, name, config_path)
    finally:
        lock.release()


def _start(config: Config, name: str, config_path: str | None) -> str | None:
    env = environment(config, config_path)
    with _exported(env):  # the children of in-process starts (Triton, gateway, Evidently UI) see it too
        return _start_with(config, name, config_path, env)


@contextmanager
def _exported(env: dict[str, str]):
    """`env` in os.environ while a service starts, as it was before afterwards: a start made
    inside another program (a test, the demo, the CLI) must not repoint that program's own
    FTOPS_PROJECT__DIR / PREFECT_API_URL at this project."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _start_with(config: Config, name: str, config_path: str | None, env: dict[str, str]) -> str | None:
    base = folder(config)
    if name == "prefect":
        procs.start(base, prefect_service(config, env), config.retention)
    elif name == "mlflow":
        procs.start(base, mlflow_service(config, env), config.retention)
    elif name == "triton":
        from ftops.serve import deploy, server

        server.start(config)
        loaded = deploy.reload_routes(config)
        return ", ".join(f"{role} {model}" for role, model in loaded.items()) or "no routes"
    elif name == "gateway":
        from ftops.serve import gateway

        gateway.start(config)
    elif name == "evidently":
        from ftops import monitor

        monitor.ui_start(config)
    elif name == "deployments":
        procs.start(base, deployments_service(config, env, config_path), config.retention)
    elif name == "supervisor":
        _start_supervisor(config, env, config_path)
    return None


def _start_supervisor(config: Config, env: dict[str, str], config_path: str | None) -> None:
    """Running once its first heartbeat is written (it loaded the config and handles
    SIGTERM); a supervisor that exits at start raises with its log."""
    base = folder(config)
    running = procs.start(base, supervisor_service(config, env, config_path), config.retention)
    deadline = time.monotonic() + SUPERVISOR_READY_S
    while _read_json(heartbeat_file(config)).get("pid") != running.pid:
        if procs.status(base, "supervisor") is None:
            raise procs.ServiceError(f"The supervisor exited at start. Last log lines ({running.log}):\n"
                                     f"{procs.tail(running.log)}")
        if time.monotonic() > deadline:
            procs.stop(base, "supervisor")
            raise procs.ServiceError(f"The supervisor did not finish its first round of checks within "
                                     f"{SUPERVISOR_READY_S:.0f} s. Last log lines ({running.log}):\n"
                                     f"{procs.tail(running.log)}")
        time.sleep(0.1)


def down(config: Config) -> list[str]:
    """Stop everything this project started, the supervisor first (so it restarts nothing
    being stopped), then in reverse order; the names stopped."""
    return [name for name in reversed(ORDER) if stop_one(config, name)]


def stop_one(config: Config, name: str) -> bool:
    """Mark a service stopped on purpose (the supervisor leaves it down), then stop it
    (what `ftops down`, `ftops serve down`, `ftops gateway down` ... call); True if it ran."""
    _check_name(name)
    with _held(config, name):
        mark(config, name, DOWN, "stop")
        return stop_process(config, name)


def stop_process(config: Config, name: str) -> bool:
    """Stop the service's process and leave its wish as it is (the supervisor replacing a
    hung one); True if it ran."""
    if name == "triton":
        from ftops.serve import server

        return server.stop(config)
    if name == "gateway":
        from ftops.serve import gateway

        return gateway.stop(config)
    if name == "evidently":
        from ftops import monitor

        return monitor.ui_stop(config)
    done = procs.stop(folder(config), name)
    project = str(config.resolved().project.dir)
    return bool(procs.sweep(MARKERS[name], "FTOPS_PROJECT__DIR", project)) or done


def _check_name(name: str) -> None:
    if name not in ORDER:
        raise procs.ServiceError(f"Unknown service {name!r}: one of {', '.join(ORDER)}.")


# ---------------------------------------------------------------- status


def pid(config: Config, name: str) -> int | None:
    """The PID of the service's running process (None: not running; 0: Triton is external)."""
    if name == "triton":
        from ftops.serve import server

        info = server.status(config)
        return None if info is None else info.pid
    if name == "gateway":
        from ftops.serve import gateway

        running = gateway.status(config)
    elif name == "evidently":
        from ftops import monitor

        running = monitor.ui_status(config)
    else:
        running = procs.status(folder(config), name)
    return None if running is None else running.pid


def status(config: Config) -> list[Row]:
    rows = []
    base = folder(config)
    for name in ORDER:
        if name == "triton":
            from ftops.serve import server

            info = server.status(config)
            row = Row(name, "up" if info else "down", f"grpc {info.grpc_url}, http {info.http_url}" if info else "",
                      info.pid if info else None, info.log if info else None)
        elif name == "gateway":
            from ftops.serve import gateway

            row = _row(name, gateway.status(config))
        elif name == "evidently":
            from ftops import monitor

            row = _row(name, monitor.ui_status(config))
        else:
            row = _row(name, procs.status(base, name))
        rows.append(row)
    return _with_supervision(config, rows)


def _with_supervision(config: Config, rows: list[Row]) -> list[Row]:
    wishes, records = desired(config), restarts(config)
    for row in rows:
        if row.state == "down" and wishes.get(row.name, Wish(DOWN, 0, "")).state == FAILED:
            row.state = FAILED
        record = records.get(row.name)
        if record is not None:
            row.restarts, row.last_restart = record.count, record.last_restart
            row.last_reason, row.recover_s = record.last_reason, record.recover_s
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

