"""The real `tritonserver` process (from the nvidia-pytriton wheel in the serving venv):
started on 127.0.0.1 with explicit model control through the project's service manager
(ftops.procs: detached, polled until ready, stopped by PID).

State lives in `<project>/triton/server.json` (ftops.procs: pid, URL, log), the ports apart
in `last_ports.json` (a restart with ports 0 takes them again). A state file whose pid is
gone, or is no longer a tritonserver, is stale and removed.

With `uris.triton` set, Triton is someone else's (the team's container / Kubernetes
Service): status and start only check its readiness, stop leaves it alone, and models go
to the shared `uris.triton_repository`. Everything else (deploy, gateway) is the same code.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import urllib.request
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from ftops import atomic, procs
from ftops.config import Config
from ftops.serve.runtime import ServingError

ROOT = Path(__file__).resolve().parents[3]
SERVING_VENV = Path(os.environ.get("FTOPS_SERVING_VENV", ROOT / ".venv-serving"))
EXIT_TIMEOUT_S = 5
PORT_KEYS = ("http", "grpc", "metrics")
SERVICE = "server"        # ftops.procs names the state file and the log after it
MARKER = "tritonserver"   # in the command line of our process
logger = logging.getLogger(__name__)


@dataclass
class ServerInfo:
    pid: int
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    repository: str
    log: str

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def url(self, protocol: str) -> str:
        return self.grpc_url if protocol == "grpc" else self.http_url

    @property
    def external(self) -> bool:
        return self.pid == EXTERNAL_PID


EXTERNAL_PID = 0  # a Triton ftops did not start: no process of ours to watch or stop


def triton_home() -> Path:
    found = sorted(SERVING_VENV.glob("lib/python3*/site-packages/pytriton/tritonserver"))
    if not found or not (found[0] / "bin" / "tritonserver").is_file():
        raise ServingError(f"No tritonserver in the serving venv {SERVING_VENV}. Run `make setup`.")
    return found[0]


def state_dir(config: Config) -> Path:
    return config.resolved().project.dir / "triton"


def repository_dir(config: Config) -> Path:
    shared = config.uris.triton_repository
    return Path(shared) if shared else state_dir(config) / "repository"


def external(config: Config) -> ServerInfo | None:
    """The team's Triton named by uris.triton (None when ftops runs its own)."""
    from urllib.parse import urlparse

    if not config.uris.triton:
        return None
    url = urlparse(config.uris.triton if "://" in config.uris.triton else f"http://{config.uris.triton}")
    return ServerInfo(EXTERNAL_PID, url.hostname, url.port or 8000, config.serving.grpc_port,
                      config.serving.metrics_port, str(repository_dir(config)), log="")


_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1", avoid: Collection[int] = ()) -> int:
    """A port free now, never one this process handed out before nor one in `avoid`: bind(0)
    may return the same port twice once the first socket is closed (seen: Triton given one
    port for gRPC and metrics refused to start)."""
    while True:
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT and port not in avoid:
            _HANDED_OUT.add(port)
            return port


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on the port now. SO_REUSEADDR as the servers set it:
    the connections of a killed Triton linger in TIME_WAIT and must not count as taken."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _last_ports_file(config: Config) -> Path:
    return state_dir(config) / "last_ports.json"


def last_ports(config: Config) -> dict[str, int]:
    """The ports the project's last server listened on (kept apart from server.json, which
    goes with the process); {} before the first start."""
    try:
        return {k: int(v) for k, v in json.loads(_last_ports_file(config).read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def _ports(config: Config) -> list[int]:
    """http, grpc, metrics: the configured port, or for 0 the last run's while it is free
    (a restart keeps the gateway's and clients' URLs), else a free one."""
    cfg, last, ports = config.serving, last_ports(config), []
    configured = [getattr(cfg, f"{key}_port") for key in PORT_KEYS]
    for key in PORT_KEYS:
        port = getattr(cfg, f"{key}_port")
        previous = last.get(key)
        if not port and previous and previous not in ports:
            if port_free(cfg.host, previous):
                port = previous
            else:
                logger.warning("Triton's last %s port %d is taken: listening on a new one", key, previous)
        ports.append(port or free_port(cfg.host, avoid=[*ports, *configured]))
    return ports


def status(config: Config) -> ServerInfo | None:
    """The running server of this project, or None (a stale state file is removed)."""
    team = external(config)
    if team is not None:
        return team if ready(team) else None
    running = procs.status(state_dir(config), SERVICE)
    return None if running is None else _info(config, running)


def _info(config: Config, running: procs.Running) -> ServerInfo:
    """The server behind a service record: its URL holds host and HTTP port, last_ports.json
    (written at its start) the other ports."""
    host, _, http_port = running.url.rpartition(":")
    ports = last_ports(config)
    return ServerInfo(running.pid, host, int(http_port),
                      *(ports.get(key, getattr(config.serving, f"{key}_port")) for key in PORT_KEYS[1:]),
                      str(repository_dir(config)), running.log)


def ready(info: ServerInfo, timeout: float = 2.0) -> bool:
    return _get_ok(f"http://{info.http_url}/v2/health/ready", timeout)


def model_ready(info: ServerInfo, model: str, timeout: float = 2.0) -> bool:
    """One model loaded and ready; with --strict-readiness the server as a whole is not
    while another model loads or failed to, though this one serves."""
    return _get_ok(f"http://{info.http_url}/v2/models/{model}/ready", timeout)


def _get_ok(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def _environment() -> dict[str, str]:
    """The serving venv first on PATH: the backend stub's embedded python (Debian's
    libpython 3.11, the same the serving venv was built from) then finds its numpy<2.
    PYTHONHOME and PYTHONPATH are unset by the command itself (`env -u`): a service's
    environment can only add variables."""
    return {"PATH": f"{SERVING_VENV / 'bin'}:{os.environ.get('PATH', '')}", "VIRTUAL_ENV": str(SERVING_VENV)}


def start(config: Config) -> ServerInfo:
    """Start (or return the already running) server; raises with the log tail on failure."""
    team = external(config)
    if team is not None:
        return wait_external(team, config.serving.ready_timeout_s)
    running = status(config)
    if running is not None:
        return running
    cfg = config.serving
    home = triton_home()
    stub = home / "backends" / "python" / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServingError(f"The python backend stub is missing from {stub.parent}. Run `make setup`.")
    repo = repository_dir(config)
    repo.mkdir(parents=True, exist_ok=True)
    ports = _ports(config)
    command = [
        "env", "-u", "PYTHONHOME", "-u", "PYTHONPATH",
        str(home / "bin" / "tritonserver"), f"--model-repository={repo}",
        f"--backend-directory={home / 'backends'}", f"--cache-directory={home / 'caches'}",
        "--model-control-mode=explicit", "--strict-readiness=true",
        f"--http-address={cfg.host}", f"--grpc-address={cfg.host}", f"--metrics-address={cfg.host}",
        f"--http-port={ports[0]}", f"--grpc-port={ports[1]}", f"--metrics-port={ports[2]}",
        "--allow-gpu-metrics=false", "--pinned-memory-pool-byte-size=0",
        f"--exit-timeout-secs={EXIT_TIMEOUT_S}", "--metrics-config=summary_latencies=true",
        "--log-verbose=0",
    ]
    atomic.write_text(_last_ports_file(config), json.dumps(dict(zip(PORT_KEYS, ports))))
    url = f"{cfg.host}:{ports[0]}"
    service = procs.Service(SERVICE, command, url, health_url=f"http://{url}/v2/health/ready",
                            env=_environment(), ready_timeout_s=cfg.ready_timeout_s, marker=MARKER)
    try:
        return _info(config, procs.start(state_dir(config), service, config.retention))
    except procs.ServiceError as exc:
        raise ServingError(f"Triton {exc}") from None


def wait_external(info: ServerInfo, timeout_s: float) -> ServerInfo:
    deadline = time.monotonic() + timeout_s
    while not ready(info):
        if time.monotonic() > deadline:
            raise ServingError(f"Triton at http://{info.http_url} (uris.triton) is not ready after "
                               f"{timeout_s:.0f} s. ftops does not start a Triton it did not launch: "
                               "check that service, or clear uris.triton to run the embedded one.")
        time.sleep(0.5)
    return info


def stop(config: Config) -> bool:
    """SIGTERM, then SIGKILL after the exit timeout; True if a server was stopped.
    An external Triton (uris.triton) is never stopped by ftops."""
    info = status(config)
    if info is None or info.external:
        return False
    return procs.stop(state_dir(config), SERVICE, EXIT_TIMEOUT_S + 10)


tail = procs.tail
