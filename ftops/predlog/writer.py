"""The prediction log's buffered writer: the gateway writes through `LogWriter` (bounded
buffer, batched background writes), so requests never wait for the store; rows the store
refuses are set aside in a dead-letter file (`DeadLetterFile`), so one bad row never blocks
the rest.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

log = logging.getLogger("ftops.predlog")


def store_down(exc: BaseException) -> bool:
    """True when a failed write means the store is unreachable (retry the same rows later),
    False when the store answered and refused the rows (retrying cannot help)."""
    if isinstance(exc, (OperationalError, InterfaceError, OSError, ConnectionError, TimeoutError)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def describe_error(exc: BaseException) -> str:
    """The driver's own message (SQLAlchemy's text repeats the statement and every row)."""
    return f"{type(exc).__name__}: {getattr(exc, 'orig', None) or exc}"[:500]


class DeadLetterFile:
    """Rows the store refused, one JSON object a line (`reason`, `ts`, `row`), so they can be
    inspected and replayed. Bounded: past `max_bytes` rows are only counted (`unsaved`) and
    logged, so a store that refuses everything cannot fill the disk."""

    def __init__(self, path: Path, max_bytes: int = 64 * 2 ** 20):
        self.path, self.max_bytes = Path(path), max_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.size = self.path.stat().st_size if self.path.exists() else 0
        self.unsaved = 0
        self._lock = threading.Lock()

    def __call__(self, row: dict, reason: str) -> None:
        line = json.dumps({"reason": reason, "ts": datetime.now(UTC).isoformat(), "row": row}, default=str) + "\n"
        with self._lock:
            if self.size + len(line) > self.max_bytes:
                self.unsaved += 1
                if self.unsaved == 1 or self.unsaved % 1000 == 0:
                    log.error("dead-letter file %s is over its %d byte limit: %d refused rows not saved "
                              "(latest: request %s, %s)", self.path, self.max_bytes, self.unsaved,
                              row.get("request_id"), reason)
                return
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)  # rows hold users' text
            with os.fdopen(fd, "a", encoding="ascii") as handle:
                handle.write(line)
            self.size += len(line)


class _StoreDown(Exception):
    """The store went away mid-batch: `rows` (in order) are still to be written."""

    def __init__(self, rows: list[dict], error: BaseException):
        super().__init__(str(error))
        self.rows, self.error = rows, error


class LogWriter:
    """Requests never wait for the store: rows go into a bounded in-memory buffer that a
    background thread writes in batches (every `batch_rows` rows or `flush_ms`).

    A write that fails because the store is down keeps its rows (at the front, order kept)
    and is retried with backoff, so a briefly unavailable store loses nothing. A write the
    store refuses (a constraint, a value it cannot hold) is split down to the rows it
    refuses; those go to `dead_letter(row, reason)` and are counted (`dead_lettered`), the
    rest are written, so one bad row never blocks the log. Only a full buffer drops rows,
    and every dropped row is counted (`dropped`) and logged, never silent.
    """

    def __init__(self, sink: Callable[[list[dict]], None], capacity: int = 10000, batch_rows: int = 200,
                 flush_ms: int = 200, max_backoff_s: float = 2.0,
                 dead_letter: Callable[[dict, str], None] | None = None):
        self.sink, self.capacity, self.batch_rows = sink, capacity, batch_rows
        self.flush_s, self.max_backoff_s = flush_ms / 1000, max_backoff_s
        self.dead_letter = dead_letter
        self.written = self.dropped = self.write_errors = self.dead_lettered = 0
        self.last_error: str | None = None
        self._rows: deque[dict] = deque()
        self._in_flight = 0
        self._accepted = 0  # rows ever accepted; `_done` catches up as they are written or set aside
        self._done = 0
        self._urgent = False
        self._stopping = False
        self._closed = False  # close() gave up: what is left was counted as dropped
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="predlog-writer", daemon=True)

    def start(self) -> LogWriter:
        self._thread.start()
        return self

    @property
    def buffered(self) -> int:
        """Rows accepted but not yet written."""
        return len(self._rows) + self._in_flight

    def put(self, rows: list[dict]) -> int:
        """Buffer rows; the number accepted (the rest are dropped and counted, as is every
        row put after close(): nothing would write it)."""
        with self._cond:
            room = 0 if self._closed else max(0, self.capacity - self.buffered)
            accepted, lost = rows[:room], len(rows) - min(room, len(rows))
            self._rows.extend(accepted)
            self._accepted += len(accepted)
            self.dropped += lost
            if len(self._rows) >= self.batch_rows:
                self._cond.notify_all()
        if lost:
            log.error("prediction log %s: dropped %d rows", "closed" if self._closed else
                      f"buffer full ({self.capacity} rows)", lost)
        return len(accepted)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every row accepted so far is written (or set aside); False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            target = self._accepted
            self._urgent = True
            self._cond.notify_all()
            while self._done < target:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout_s: float = 30.0) -> int:
        """Write everything (retrying up to `timeout_s`), stop the thread; rows lost."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        with self._cond:
            self._closed = True  # the thread may still be retrying: what is left is lost
            lost = self.buffered
            if lost:
                self.dropped += lost
                self._rows.clear()
                log.error("prediction log: %d rows could not be written at shutdown (%s)", lost, self.last_error)
        return lost

    def _run(self) -> None:
        backoff = 0.05
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if not batch:
                continue
            try:
                self._write(batch)
            except _StoreDown as down:  # keep the rows, retry
                self._requeue(down.rows, down.error)
                self._pause(backoff)
                backoff = min(self.max_backoff_s, backoff * 2)
                continue
            backoff = 0.05

    def _write(self, batch: list[dict]) -> None:
        try:
            self.sink(batch)
        except Exception as exc:
            if store_down(exc):
                raise _StoreDown(batch, exc) from exc
            self._salvage(batch, exc)
            return
        self._settle(written=len(batch))

    def _salvage(self, batch: list[dict], exc: Exception) -> None:
        """The store refused a batch: write it in halves, down to single rows, and set aside
        each single row it still refuses (a few writes per bad row, not one per row)."""
        with self._cond:
            self.write_errors += 1
            self.last_error = describe_error(exc)
        log.warning("prediction log refused a batch of %d rows (%s); finding the refused rows",
                    len(batch), self.last_error)
        parts = [batch[len(batch) // 2:], batch[:len(batch) // 2]]  # a stack: the first half on top
        while parts:
            part = parts.pop()
            try:
                self.sink(part)
            except Exception as error:
                if store_down(error):
                    raise _StoreDown([row for p in [part, *reversed(parts)] for row in p], error) from error
                if len(part) > 1:
                    parts += [part[len(part) // 2:], part[:len(part) // 2]]
                else:
                    self._set_aside(part[0], describe_error(error))
                continue
            self._settle(written=len(part))

    def _set_aside(self, row: dict, reason: str) -> None:
        log.error("prediction log refused the row of request %s (%s): set aside", row.get("request_id"), reason)
        if self.dead_letter is not None:
            try:
                self.dead_letter(row, reason)
            except Exception:  # a dead-letter sink that fails must not stop the log
                log.exception("could not set aside the row of request %s", row.get("request_id"))
        self._settle(dead_lettered=1)

    def _settle(self, written: int = 0, dead_lettered: int = 0) -> None:
        """Rows that left the buffer for good: written, or refused and set aside."""
        with self._cond:
            done = written + dead_lettered
            if self._closed:  # counted as lost by close(), yet it was settled after all
                self.dropped -= done
            self._in_flight -= done
            self.written += written
            self.dead_lettered += dead_lettered
            self._done += done
            self._cond.notify_all()

    def _next_batch(self) -> list[dict] | None:
        """Up to `batch_rows` rows once enough are waiting, `flush_ms` passed or a flush
        was asked for; None when stopping with nothing left."""
        with self._cond:
            deadline = time.monotonic() + self.flush_s
            while len(self._rows) < self.batch_rows and not (self._urgent or self._stopping):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if not self._rows:
                self._urgent = False
                return None if self._stopping else []
            batch = [self._rows.popleft() for _ in range(min(self.batch_rows, len(self._rows)))]
            if not self._rows:
                self._urgent = False
            self._in_flight = len(batch)
            return batch

    def _requeue(self, batch: list[dict], exc: BaseException) -> None:
        with self._cond:
            if not self._closed:
                self._rows.extendleft(reversed(batch))
            self._in_flight = 0
            self.write_errors += 1
            self.last_error = describe_error(exc)
        log.warning("prediction log write failed (%s); %d rows kept for retry", self.last_error, len(batch))

    def _pause(self, seconds: float) -> None:
        with self._cond:
            self._cond.wait(seconds)  # a close() wakes it for a last try at once
