"""Background services of a project (Prefect server, MLflow UI, the deployment-serving
process, ...): started detached with a log file, polled until healthy, stopped by PID.

State lives in `<project>/services/<name>.json`; a state file whose pid is gone (or now
belongs to another program) is stale and removed, so a crash leaves nothing to clean up.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from ftops import atomic
from ftops.config import RetentionSection
from ftops.errors import FtopsError


class ServiceError(FtopsError):
    pass


@dataclass
class Service:
    name: str
    command: list[str]
    url: str                       # what the user opens (or the API base)
    health_url: str | None = None  # polled until it answers 200; None: process alive is enough
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 60.0
    marker: str = ""               # a string of the command line that identifies our process
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # e.g. auth for the health probe


@dataclass
class Running:
    name: str
    pid: int
    url: str
    log: str
    marker: str


def _state(folder: Path, name: str) -> Path:
    return folder / f"{name}.json"


def alive(pid: int, marker: str) -> bool:
    """The process runs (a zombie has exited) and its command line holds `marker` (a
    recycled PID of another program is not ours)."""
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and marker in " ".join(proc.cmdline())
    except psutil.Error:
        return False


_alive = alive


def status(folder: Path, name: str) -> Running | None:
    path = _state(folder, name)
    if not path.is_file():
        return None
    try:
        running = Running(**json.loads(path.read_text()))
    except (ValueError, TypeError):  # torn, or written by an older release: not a process we can vouch for
        path.unlink(missing_ok=True)
        return None
    if not alive(running.pid, running.marker):
        path.unlink(missing_ok=True)
        return None
    return running


def healthy(url: str | None, timeout: float = 2.0, headers: dict[str, str] | None = None) -> bool:
    if url is None:
        return True
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def start(folder: Path, service: Service, retention: RetentionSection | None = None) -> Running:
    """Start a service unless it already runs (a second `up` makes no duplicate); its log
    is rotated first when it outgrew retention.log_max_mb."""
    folder.mkdir(parents=True, exist_ok=True)
    existing = status(folder, service.name)
    if existing is not None:
        return existing
    log = folder / f"{service.name}.log"
    rotate_log(log, retention or RetentionSection())
    env = {**os.environ, **service.env}
    with open(log, "ab") as handle:
        proc = subprocess.Popen(service.command, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                cwd=folder, start_new_session=True, stdin=subprocess.DEVNULL)
    marker = service.marker or service.command[-1]
    running = Running(service.name, proc.pid, service.url, str(log), marker)
    atomic.write_text(_state(folder, service.name), json.dumps(asdict(running)))
    outcome = wait_ready(lambda: healthy(service.health_url, headers=service.headers),
                         lambda: proc.poll() is not None, service.ready_timeout_s)
    if outcome == READY:
        return running
    if outcome == EXITED:
        _state(folder, service.name).unlink(missing_ok=True)
        raise ServiceError(f"{service.name} exited with code {proc.returncode} at start. "
                           f"Last log lines ({log}):\n{tail(log)}")
    stop(folder, service.name)
    raise ServiceError(f"{service.name} was not healthy within {service.ready_timeout_s:.0f} s "
                       f"({service.health_url}). Last log lines ({log}):\n{tail(log)}")


READY, EXITED, TIMED_OUT = "ready", "exited", "timed out"  # what wait_ready found


def wait_ready(ready: Callable[[], bool], exited: Callable[[], bool], timeout_s: float,
               every_s: float = 0.3) -> str:
    """Poll a starting process until it is ready (READY), has exited (EXITED) or `timeout_s`
    passed (TIMED_OUT); the caller says what each means for its service."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if exited():
            return EXITED
        if ready():
            return READY
        time.sleep(every_s)
    return TIMED_OUT


def stop(folder: Path, name: str, grace_s: float = 15.0) -> bool:
    """SIGTERM the process group, SIGKILL what is left after `grace_s`."""
    running = status(folder, name)
    if running is None:
        return False
    terminate(running.pid, still_running(running.pid), grace_s)
    _state(folder, name).unlink(missing_ok=True)
    return True


def still_running(pid: int) -> Callable[[int], bool]:
    """Whether the process checked as ours is there yet: the same start time, not a zombie.
    Not the marker again: a process's command line empties while it exits."""
    try:
        started = psutil.Process(pid).create_time()
    except psutil.Error:
        return lambda _: False

    def check(_: int) -> bool:
        try:
            proc = psutil.Process(pid)
            return proc.create_time() == started and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False
    return check


def terminate(pid: int, alive: Callable[[int], bool], grace_s: float) -> None:
    """SIGTERM a service's process group, wait up to `grace_s` while `alive(pid)`, then
    SIGKILL the group (workers it forked go too); our own child is reaped, never a zombie.
    SIGCONT after the SIGTERM: a stopped (SIGSTOP) process could not act on it otherwise."""
    _signal(pid, signal.SIGTERM)
    _signal(pid, signal.SIGCONT)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and alive(pid):
        _reap(pid)
        time.sleep(0.05)
    if alive(pid):
        _signal(pid, signal.SIGKILL)
        time.sleep(0.2)
    _reap(pid)


def sweep(marker: str, env_key: str, env_value: str) -> list[int]:
    """Kill processes whose command line holds `marker` and whose environment has
    env_key=env_value: the last resort against an orphan whose state file is gone
    (e.g. a project dir deleted under a running service)."""
    killed = []
    for proc in psutil.process_iter(["cmdline", "environ"]):  # unreadable ones (other users) come as None
        if proc.pid == os.getpid():
            continue
        if marker in " ".join(proc.info["cmdline"] or ()) and (proc.info["environ"] or {}).get(env_key) == env_value:
            _signal(proc.pid, signal.SIGKILL)
            try:
                proc.kill()
            except psutil.Error:
                pass
            killed.append(proc.pid)
    return killed


def kill_group(pid: int) -> bool:
    """SIGKILL what is left of a dead service's process group (its leader's PID is the group
    id: start_new_session), e.g. Triton's python-backend stubs or MLflow's workers after a
    kill -9 of the leader, which would hold ports and memory; True if something was left."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _signal(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def rotate_log(log: Path, retention: RetentionSection) -> bool:
    """Rotate a log above retention.log_max_mb: log -> log.1 -> ... -> log.<log_keep>."""
    return rotate(log, int(retention.log_max_mb * 1024 * 1024), retention.log_keep)


def rotate(log: Path, max_bytes: int, keep: int) -> bool:
    """Size-based rotation keeping `keep` old files (log.1 the newest); True if it rotated.

    Not logging.handlers.RotatingFileHandler: the writer is a service's stdout, a file
    descriptor the child opened in append mode, not a handler in this process. A rename
    would leave the child writing on into log.1; so the content is copied to log.1 and the
    file truncated in place (copytruncate), and the child's next write lands at the start
    of the same, now empty, file. A line written between the copy and the truncate is lost.
    """
    try:
        if log.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    for extra in log.parent.glob(f"{log.name}.*"):
        suffix = extra.name[len(log.name) + 1:]
        if suffix.isdigit() and int(suffix) >= keep:
            extra.unlink(missing_ok=True)  # the oldest, and any left by a larger log_keep
    for n in range(keep - 1, 0, -1):
        older = log.with_name(f"{log.name}.{n}")
        if older.exists():
            os.replace(older, log.with_name(f"{log.name}.{n + 1}"))
    shutil.copyfile(log, log.with_name(f"{log.name}.1"))
    os.truncate(log, 0)
    return True


def tail(path: Path | str, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
