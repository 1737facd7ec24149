"""One promotion at a time per project.

Deploy, stage / unstage, rollback, registry promotions, `reconcile` and the lifecycle's
export-and-deploy step each read routing.json and the registry aliases, then write them;
two of them interleaved lose one's write (a rollback undone by a deploy that read the
routes before it). They hold this lock instead, and a waiter says whom it waits for.

Embedded set-up: a file lock on `<project>/locks/promotion.lock` (the kernel drops it when
its holder dies, however it dies) with a holder record beside it. Team set-up, where the
processes are on several hosts and share no folder: when the prediction log is PostgreSQL,
a PostgreSQL advisory lock keyed by the project name, on a connection of its own (dropped,
with the lock, when its holder dies); the holder is read from pg_stat_activity, where the
connection's application_name says who it is.

Re-entrant in the thread that holds it (deploy called inside a held lock does not wait on
itself); another thread of the same process waits like another process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from ftops import atomic
from ftops.config import Config
from ftops.errors import FtopsError

log = logging.getLogger(__name__)

POLL_S = 0.25
_held = threading.local()


class LockError(FtopsError):
    """The promotion lock could not be taken (its store does not answer)."""


class LockTimeout(LockError):
    """Another holder kept it longer than the wait allowed; the message names the holder."""


@dataclass
class Holder:
    what: str
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    since: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def describe(self) -> str:
        return f"'{self.what}' (pid {self.pid} on {self.host}, since {self.since})"


@contextmanager
def promotion_lock(config: Config, what: str, wait_s: float | None = None) -> Iterator[Holder]:
    """Hold the project's promotion lock; wait at most `wait_s` (default timeouts.lock_s)
    for another holder, then raise LockTimeout naming it. Yields who holds it (the outermost
    holder when re-entered)."""
    backend = _backend(config)
    held = _holders()
    if backend.key in held:  # this thread holds it already: the outer hold releases it
        yield held[backend.key]
        return
    holder = Holder(what)
    backend.acquire(holder, config.timeouts.lock_s if wait_s is None else wait_s)
    held[backend.key] = holder
    try:
        yield holder
    finally:
        del held[backend.key]
        backend.release()


def _holders() -> dict[str, Holder]:
    """This thread's holds, by lock."""
    if not hasattr(_held, "holders"):
        _held.holders = {}
    return _held.holders


def _backend(config: Config) -> _FileLock | _PostgresLock:
    cfg = config.resolved()
    if cfg.uris.prediction_log.startswith("postgresql"):
        return _PostgresLock(cfg)
    return _FileLock(cfg)


def _timeout(config: Config, what: str, wait_s: float, holder: str, where: str) -> LockTimeout:
    return LockTimeout(
        f"'{what}' waited {wait_s:g} s for the promotion lock of project '{config.project.name}' ({where}); it is "
        f"held by {holder}. Wait for that to finish and try again, or raise timeouts.lock_s; if that process "
        "is gone, its lock went with it and the next try gets it.")


class _FileLock:
    def __init__(self, config: Config):
        self.config = config
        folder = config.project.dir / "locks"
        self.path, self.record = folder / "promotion.lock", folder / "promotion.holder.json"
        self.key = f"file:{self.path}"
        self.lock = None

    def acquire(self, holder: Holder, wait_s: float) -> None:
        from filelock import FileLock, Timeout

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = FileLock(str(self.path), thread_local=False)
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            log.info("%s waits for the promotion lock held by %s", holder.what, self.holder())
            try:
                self.lock.acquire(timeout=wait_s)
            except Timeout:
                raise _timeout(self.config, holder.what, wait_s, self.holder(), str(self.path)) from None
        try:
            atomic.write_text(self.record, json.dumps(asdict(holder)))
        except OSError as exc:  # a full disk costs waiters the holder's name, not the lock
            log.warning("could not record the promotion lock's holder in %s: %s", self.record, exc)

    def release(self) -> None:
        try:
            self.record.unlink(missing_ok=True)
        finally:
            self.lock.release()

    def holder(self) -> str:
        """The recorded holder (a holder that died leaves a record, and no lock, behind)."""
        try:
            return Holder(**json.loads(self.record.read_text())).describe()
        except (OSError, ValueError, TypeError):
            return "a process that has not recorded itself yet"


def lock_key(project: str) -> int:
    """The advisory lock's bigint: the first 8 bytes of the project name's sha256."""
    digest = hashlib.sha256(f"ftops promotion {project}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


HOLDER_SQL = """
select a.pid, a.application_name, a.client_addr::text, a.query_start
from pg_locks l join pg_stat_activity a on a.pid = l.pid
where l.locktype = 'advisory' and l.granted and l.objsubid = 1
  and l.classid::int8 = %s and l.objid::int8 = %s
"""


class _PostgresLock:
    def __init__(self, config: Config):
        self.config = config
        self.key_id = lock_key(config.project.name)
        self.key = f"pg:{self.key_id}"
        self.conn = None

    def _connect(self, holder: Holder):
        import psycopg
        from sqlalchemy.engine import make_url

        url = make_url(self.config.uris.prediction_log).set(drivername="postgresql")
        name = f"ftops {holder.what} pid {holder.pid}@{holder.host}"
        try:
            return psycopg.connect(url.render_as_string(hide_password=False), autocommit=True,
                                   connect_timeout=max(2, math.ceil(self.config.timeouts.database_s)),
                                   application_name=name.encode()[:63].decode(errors="ignore"))
        except psycopg.Error as exc:
            raise LockError(f"'{holder.what}' cannot take the promotion lock: PostgreSQL at "
                              f"{url.render_as_string()} (uris.prediction_log) does not answer ({exc}). "
                              "Start it, or check the URI.") from None

    def acquire(self, holder: Holder, wait_s: float) -> None:
        self.conn = self._connect(holder)
        deadline = time.monotonic() + wait_s
        announced = False
        try:
            while not self.conn.execute("select pg_try_advisory_lock(%s)", (self.key_id,)).fetchone()[0]:
                if time.monotonic() >= deadline:
                    raise _timeout(self.config, holder.what, wait_s, self.holder(),
                                   f"PostgreSQL advisory lock {self.key_id}")
                if not announced:
                    log.info("%s waits for the promotion lock held by %s", holder.what, self.holder())
                    announced = True
                time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
        except BaseException:
            self.conn.close()
            raise

    def release(self) -> None:
        try:
            self.conn.execute("select pg_advisory_unlock(%s)", (self.key_id,))
        finally:
            self.conn.close()  # the lock goes with the session in any case

    def holder(self) -> str:
        unsigned = self.key_id & 0xFFFFFFFFFFFFFFFF
        row = self.conn.execute(HOLDER_SQL, (unsigned >> 32, unsigned & 0xFFFFFFFF)).fetchone()
        if row is None:
            return "a session that has just let go"
        pid, name, addr, since = row
        when = since.isoformat(timespec="seconds") if since is not None else "unknown"
        return f"'{name or 'another session'}' (PostgreSQL backend {pid} from {addr or 'a local socket'}, since {when})"
