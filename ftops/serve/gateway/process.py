"""The gateway as a background process of the project: start, status, probe, stop.

`ftops gateway up` runs `python -m ftops.serve.gateway --fd N` with a socket bound here
(port 0 = a free one, no race), state in `<project>/gateway/gateway.json`, stopped by PID
(ftops.procs) like Triton. With `serving.gateway_port: 0`, a start reuses the port of the
project's last run (`<project>/gateway/last_port`) while it is free, so a restarted gateway
keeps its clients. The config file written beside the gateway (`<project>/gateway/config.json`,
mode 0600) shows URL passwords masked; the child gets the real values through its environment
(security.seal), and write tokens the way security.gateway_tokens reads them (the environment
it inherits, or the file).

Shutdown (SIGTERM): uvicorn stops taking requests and finishes those in flight (GRACEFUL_S),
then the gateway writes its log (LOG_CLOSE_S); a SIGKILL follows only past both. A SIGKILL
loses at most the rows of the last `serving.log_flush_ms` (plus one batch in flight).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from ftops import atomic, procs, security
from ftops.config import Config
from ftops.serve.gateway.errors import GatewayError

ENV_CONFIG = "FTOPS_GATEWAY_CONFIG"
GRACEFUL_S = 10  # in-flight requests get this long to finish at shutdown
LOG_CLOSE_S = 15  # then the log buffer this long to reach the store (shadow calls included)
STOP_TIMEOUT_S = GRACEFUL_S + LOG_CLOSE_S + 5
MODULE = "ftops.serve.gateway"  # the child runs `python -m MODULE`; its command line marks it as ours

logger = logging.getLogger("ftops.gateway")


@dataclass
class GatewayInfo:
    pid: int
    host: str
    port: int
    log: str
    config: str

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def state_dir(config: Config) -> Path:
    return config.resolved().project.dir / "gateway"


def _state_file(config: Config) -> Path:
    return state_dir(config) / "gateway.json"


def alive(pid: int) -> bool:
    """The gateway runs as `pid`: not exited, and not another program on a recycled PID."""
    return procs.alive(pid, MODULE)


def status(config: Config) -> GatewayInfo | None:
    """The running gateway of this project, or None (a stale state file is removed)."""
    path = _state_file(config)
    if not path.is_file():
        return None
    info = GatewayInfo(**json.loads(path.read_text()))
    if not alive(info.pid):
        path.unlink(missing_ok=True)
        return None
    return info


def probe(url: str, timeout: float = 2.0) -> tuple[int, dict] | None:
    """GET /health: (status, body), or None when nothing answers."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except (OSError, ValueError):
        return None


def start(config: Config) -> GatewayInfo:
    """Start (or return the running) gateway on serving.host:gateway_port (0 = free port).

    The socket is bound here and handed to the child, so port 0 has no race and a busy
    port fails at once with a clear error. Ready once /health answers (200 or 503)."""
    running = status(config)
    if running is not None:
        return running
    resolved = _absolute_paths(config.resolved())
    _check_writes_guarded(resolved)
    folder = state_dir(resolved)
    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / "config.json"
    shown, secret_env = security.seal(resolved)
    _write_private(config_file, shown)
    sock = _listen(resolved)
    log = folder / "gateway.log"
    procs.rotate_log(log, resolved.retention)
    env = _child_env(config_file, secret_env)
    with sock, open(log, "ab") as handle:
        proc = subprocess.Popen([sys.executable, "-m", MODULE, "--fd", str(sock.fileno())],
                                stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=folder,
                                pass_fds=(sock.fileno(),), start_new_session=True)
        info = GatewayInfo(proc.pid, resolved.serving.host, sock.getsockname()[1], str(log), str(config_file))
    atomic.write_text(_state_file(resolved), json.dumps(asdict(info)))
    _wait_ready(resolved, proc, info)
    return info


def _absolute_paths(config: Config) -> Config:
    """The child runs in the gateway folder: a relative tokens file must still be found."""
    if config.security.tokens_file is not None:
        config.security.tokens_file = Path(config.security.tokens_file).expanduser().resolve()
    return config


def _check_writes_guarded(config: Config) -> None:
    """Labels train the next model: an open gateway is allowed only where only this host reaches it."""
    host = config.serving.host
    if not security.gateway_tokens(config) and not security.is_loopback(host):
        raise GatewayError(f"serving.host is {host}, which other machines can reach, and no write token is "
                           f"configured, so anyone could send labels. Set ${security.ENV_TOKENS} (name=token) or "
                           "security.tokens_file (one 'name token' per line), or serve on 127.0.0.1.")


def _child_env(config_file: Path, secret_env: dict[str, str]) -> dict[str, str]:
    """The child's environment: ours (tokens from the environment are inherited), the config
    file, and the values that file shows masked."""
    env = {**os.environ, ENV_CONFIG: str(config_file), **secret_env}
    if env.get(security.ENV_TOKENS_FILE):
        env[security.ENV_TOKENS_FILE] = str(Path(env[security.ENV_TOKENS_FILE]).expanduser().resolve())
    return env


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (0600), also when an older, more open one is there."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def _last_port_file(config: Config) -> Path:
    return state_dir(config) / "last_port"


def last_port(config: Config) -> int | None:
    """The port the project's last gateway listened on (kept apart from the state file,
    which goes when the process does); None before the first start."""
    try:
        return int(_last_port_file(config).read_text().strip())
    except (OSError, ValueError):
        return None


def _listen(config: Config) -> socket.socket:
    """The listening socket: serving.gateway_port, or with 0 the last run's port while it is
    free (a restart keeps the clients' URL), else a free one; the port is kept for next time."""
    host, port = config.serving.host, config.serving.gateway_port
    sock = None
    if port == 0 and (previous := last_port(config)):
        try:
            sock = _bind(host, previous)
        except GatewayError:
            logger.warning("the gateway's last port %d is taken: listening on a new one", previous)
    sock = sock or _bind(host, port)
    atomic.write_text(_last_port_file(config), f"{sock.getsockname()[1]}\n")
    return sock


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise GatewayError(f"Cannot bind the gateway to {host}:{port} ({exc.strerror}). Another process holds "
                           "the port: stop it, or set serving.gateway_port (0 picks a free port).") from None
    sock.listen(2048)
    return sock


def _wait_ready(config: Config, proc: subprocess.Popen, info: GatewayInfo) -> None:
    """Ready once /health answers at all (200 or 503: Triton may still be starting)."""
    outcome = procs.wait_ready(lambda: probe(info.url) is not None, lambda: proc.poll() is not None,
                               config.serving.ready_timeout_s, every_s=0.2)
    if outcome == procs.READY:
        return
    if outcome == procs.EXITED:
        _state_file(config).unlink(missing_ok=True)
        raise GatewayError(f"The gateway exited with code {proc.returncode} at start. "
                           f"Last log lines ({info.log}):\n{procs.tail(info.log)}")
    stop(config)
    raise GatewayError(f"The gateway did not answer /health within {config.serving.ready_timeout_s:.0f} s "
                       f"(serving.ready_timeout_s). Last log lines ({info.log}):\n{procs.tail(info.log)}")


def stop(config: Config) -> bool:
    """SIGTERM (finish in-flight requests, flush the log), SIGKILL after STOP_TIMEOUT_S;
    True if a gateway was stopped."""
    info = status(config)
    if info is None:
        return False
    procs.terminate(info.pid, alive, STOP_TIMEOUT_S)
    _state_file(config).unlink(missing_ok=True)
    return True
