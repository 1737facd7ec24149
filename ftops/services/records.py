"""What is wanted of each service and what the supervisor did, as files under
`<project>/services`: `desired.json` (up / down / failed, and since when: `start_one` / `up`
mark a service up, `stop_one` / `down` mark it down before stopping it, so the supervisor
never restarts what someone stopped on purpose) and `restarts.json` (the supervisor's
restart counts). Both are rewritten whole, atomically, under a lock.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock

from ftops import atomic, procs
from ftops.config import Config

UP, DOWN, FAILED = "up", "down", "failed"
ABSENT = "absent"  # no wish recorded: never started through services, nor stopped


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


def heartbeat_file(config: Config) -> Path:
    return folder(config) / "supervisor.heartbeat"


def _desired_file(config: Config) -> Path:
    return folder(config) / "desired.json"


def _records_lock(config: Config, what: str) -> FileLock:
    folder(config).mkdir(parents=True, exist_ok=True)
    return FileLock(folder(config) / f".{what}.lock", timeout=config.timeouts.lock_s)


def desired(config: Config) -> dict[str, Wish]:
    """What is wanted of each service; a service never started nor stopped has no entry."""
    return {name: Wish(**wish) for name, wish in read_json(_desired_file(config)).items()}


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
    return {name: Restarts(**record) for name, record in read_json(_restarts_file(config)).items()}


def save_restart(config: Config, name: str, record: Restarts) -> None:
    with _records_lock(config, "restarts"):
        records = restarts(config)
        records[name] = record
        atomic.write_text(_restarts_file(config), json.dumps({k: asdict(v) for k, v in records.items()}, indent=2))


def read_json(path: Path) -> dict:
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
