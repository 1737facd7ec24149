"""`ftops up / down / status`: every service of the embedded set-up on 127.0.0.1, each
started once (a second `up` finds it running), each stopped by PID, each marked wanted up
or down first (ftops.services.records) so the supervisor restarts only what is wanted. A
start or stop of one service holds `locks/<name>.lock`, so the supervisor and a person
never start it twice or restart what is being stopped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

from filelock import FileLock, Timeout

from ftops import procs, security
from ftops.config import Config
from ftops.errors import FtopsError
from ftops.services.records import DOWN, FAILED, UP, Wish, desired, folder, mark, restarts, wanted
from ftops.services.table import ORDER, SERVICES, environment

log = logging.getLogger("ftops.services")


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
        return SERVICES[name].start(config, env, config_path)


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
    return SERVICES[name].stop(config)


def _check_name(name: str) -> None:
    if name not in ORDER:
        raise procs.ServiceError(f"Unknown service {name!r}: one of {', '.join(ORDER)}.")


# ---------------------------------------------------------------- status


def pid(config: Config, name: str) -> int | None:
    """The PID of the service's running process (None: not running; 0: Triton is external)."""
    running = SERVICES[name].running(config)
    return None if running is None else running.pid


def status(config: Config) -> list[Row]:
    rows = []
    for name, entry in SERVICES.items():
        running = entry.running(config)
        rows.append(Row(name, "down", "", None, None) if running is None else
                    Row(name, "up", entry.url(running), getattr(running, "pid", None), getattr(running, "log", None)))
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
