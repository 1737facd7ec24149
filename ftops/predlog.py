"""The prediction log: every answered request (and every shadow answer), later joined by
its feedback label. SQLAlchemy, so SQLite (embedded default) and Postgres (team) share
the code; only `uris.prediction_log` differs.

One row per model answer: the answer the caller got has route `champion` or `challenger`;
a shadow copy has route `shadow` and the same request id. The gateway writes through
`LogWriter` (bounded buffer, batched background writes), so requests never wait for the store;
rows the store refuses are set aside in a dead-letter file, so one bad row never blocks the rest.

Labels: one current label per request id (on its rows, with its sender in `feedback_by`),
and every label ever given in the append-only `feedback` table, replacements included.

Fallbacks: a request the traffic policy gave to the challenger, which the champion answered
because the challenger failed, is logged as the answer it is (route `champion`, the
champion's model) with `fallback_from = 'challenger'`; the A/B report counts those rows for
the challenger arm and leaves them out of both arms' numbers (they are neither arm's sample).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from sqlalchemy import (JSON, Boolean, Column, DateTime, Float, Integer, MetaData, String, Table, Text,
                        create_engine, event, inspect, select, text, update)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, ProgrammingError

from ftops.security import ANONYMOUS

log = logging.getLogger(__name__)

ROUTES = ("champion", "challenger", "shadow")
CHUNK_ROWS = 10_000  # rows per read from the store: a large log is never fetched in one piece

metadata = MetaData()
predictions = Table(
    "predictions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False, index=True),
    Column("ts", DateTime(timezone=True), nullable=False, index=True),
    Column("text", Text, nullable=True),           # None when serving is configured not to keep text
    Column("text_sha256", String(64), nullable=False),
    Column("text_chars", Integer, nullable=False),
    Column("prediction", String(128), nullable=False),
    Column("confidence", Float, nullable=False),
    Column("probs", JSON, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("model", String(256), nullable=False),   # Triton ensemble name
    Column("version", String(32), nullable=True),   # registry version, when known
    Column("route", String(16), nullable=False),
    Column("served", Boolean, nullable=False),      # False for shadow answers
    Column("user_key", String(256), nullable=True),
    Column("feedback", String(128), nullable=True),
    Column("feedback_ts", DateTime(timezone=True), nullable=True),
    Column("feedback_by", String(64), nullable=True),  # the current label's sender
    Column("fallback_from", String(16), nullable=True),  # the route assigned when the champion answered instead
)
ADDED_COLUMNS = (predictions.c.feedback_by, predictions.c.fallback_from)  # newer than the table's first release

feedback = Table(
    "feedback", metadata,  # append-only: every label given, replacements included
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False, index=True),
    Column("label", String(128), nullable=False),
    Column("sender", String(64), nullable=False),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("replaces", Boolean, nullable=False),  # True when it replaced an earlier label
)


class AlreadyLabelled(Exception):
    """A request id has a label already and the caller did not ask to replace it."""

    def __init__(self, request_id: str, label: str, sender: str | None):
        super().__init__(f"{request_id} is labelled '{label}' by {sender or ANONYMOUS}")
        self.request_id, self.label, self.sender = request_id, label, sender or ANONYMOUS


@dataclass
class Record:
    request_id: str
    text: str
    prediction: str
    confidence: float
    probs: list[float]
    latency_ms: float
    model: str
    version: str | None
    route: str
    user_key: str | None = None
    ts: datetime | None = None
    fallback_from: str | None = None  # the route the request was assigned, when another answered it

    def row(self, keep_text: bool = True) -> dict:
        return {
            "request_id": self.request_id, "ts": self.ts or datetime.now(UTC),
            "text": self.text if keep_text else None,
            "text_sha256": hashlib.sha256(self.text.encode("utf-8")).hexdigest(),
            "text_chars": len(self.text), "prediction": self.prediction, "confidence": self.confidence,
            "probs": self.probs, "latency_ms": self.latency_ms, "model": self.model,
            "version": self.version, "route": self.route, "served": self.route != "shadow",
            "user_key": self.user_key, "fallback_from": self.fallback_from,
        }


def engine(url: str, timeout_s: float | None = None) -> Engine:
    """An engine with the tables created and newer columns added (idempotent).

    `timeout_s` (timeouts.database_s) bounds a connection attempt (PostgreSQL's
    connect_timeout) and, on SQLite, a wait for another writer's lock; a store that is down
    then costs that long and an error, never a hang. Default: 30 s on SQLite, libpq's own."""
    eng = create_engine(url, **_engine_options(url, timeout_s))
    if url.startswith("sqlite") and ":memory:" not in url:
        event.listen(eng, "connect", _sqlite_wal)
    try:
        metadata.create_all(eng)
    except (OperationalError, ProgrammingError):  # another process created it between the check and the create
        metadata.create_all(eng)
    _add_columns(eng)
    return eng


def _engine_options(url: str, timeout_s: float | None) -> dict:
    if url.startswith("sqlite"):
        return {"connect_args": {"check_same_thread": False, "timeout": 30 if timeout_s is None else timeout_s}}
    options: dict = {"pool_pre_ping": True}
    if timeout_s is not None and url.startswith("postgresql"):
        options["connect_args"] = {"connect_timeout": max(2, math.ceil(timeout_s))}  # libpq: whole seconds, >= 2
        options["pool_timeout"] = timeout_s
    return options


def _add_columns(eng: Engine) -> None:
    """A log created by an older release lacks the newer columns: add them. Each is nullable
    (old rows read as NULL) and only ever added, so one ALTER TABLE is the whole migration;
    a migration tool (Alembic) would add a dependency and a version table to every store
    for that."""
    present = {c["name"] for c in inspect(eng).get_columns(predictions.name)}
    for column in ADDED_COLUMNS:
        if column.name in present:
            continue
        ddl = f"ALTER TABLE {predictions.name} ADD COLUMN {column.name} {column.type.compile(eng.dialect)}"
        try:
            with eng.begin() as conn:
                conn.execute(text(ddl))
        except (OperationalError, ProgrammingError):  # another process added it first
            if column.name not in {c["name"] for c in inspect(eng).get_columns(predictions.name)}:
                raise


def _sqlite_wal(dbapi_connection, _record) -> None:
    """WAL: readers (reports, monitoring) never block the gateway's writer, nor it them."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def write(eng: Engine, rows: list[dict]) -> None:
    if rows:
        with eng.begin() as conn:
            conn.execute(predictions.insert(), rows)


def add_feedback(eng: Engine, request_id: str, label: str, sender: str = ANONYMOUS, replace: bool = False) -> int:
    """Attach a true label to a request's rows (served and shadow); the number of rows (0:
    unknown id). A request keeps one label: a second one raises AlreadyLabelled unless
    `replace`; every label given is also appended to the `feedback` table."""
    now = datetime.now(UTC)
    values = {"feedback": label, "feedback_ts": now, "feedback_by": sender}
    served = (predictions.c.request_id == request_id) & predictions.c.served.is_(True)
    with eng.begin() as conn:
        previous = conn.execute(select(predictions.c.feedback, predictions.c.feedback_by).where(served)).first()
        if previous is None:
            return 0
        claim = update(predictions).where(served).values(**values)
        if not replace:  # the WHERE makes a concurrent first label lose the race instead of overwriting
            claim = claim.where(predictions.c.feedback.is_(None))
        rows = conn.execute(claim).rowcount
        if rows == 0:
            current = conn.execute(select(predictions.c.feedback, predictions.c.feedback_by).where(served)).first()
            raise AlreadyLabelled(request_id, current.feedback, current.feedback_by)
        rows += conn.execute(update(predictions).where(predictions.c.request_id == request_id,
                                                       predictions.c.served.is_(False)).values(**values)).rowcount
        conn.execute(feedback.insert().values(request_id=request_id, label=label, sender=sender, ts=now,
                                              replaces=previous.feedback is not None))
        return rows


def feedback_history(eng: Engine, request_id: str) -> pd.DataFrame:
    """Every label given to a request, oldest first (the `feedback` table)."""
    query = select(feedback).where(feedback.c.request_id == request_id).order_by(feedback.c.id)
    return read_chunked(eng, query)


def served_model(eng: Engine, request_id: str) -> str | None:
    """The model whose answer the caller got; None if the request id is unknown."""
    with eng.connect() as conn:
        return conn.execute(select(predictions.c.model).where(
            predictions.c.request_id == request_id, predictions.c.served.is_(True)).limit(1)).scalar()


def request_models(eng: Engine, request_id: str) -> list[str]:
    """The models that answered a request (served and shadow); empty if it is unknown."""
    with eng.connect() as conn:
        rows = conn.execute(select(predictions.c.model).where(predictions.c.request_id == request_id).distinct())
        return [r[0] for r in rows]


def read(eng: Engine, last: int | None = None, since: datetime | None = None,
         routes: tuple[str, ...] = ("champion", "challenger"), model: str | None = None,
         columns: Iterable[str] | None = None) -> pd.DataFrame:
    """Logged rows, oldest first: the last N (by id) and/or since a time; only `columns`
    (plus id) when given, so a report does not fetch every text."""
    picked = [predictions.c.id, *(predictions.c[c] for c in columns if c != "id")] if columns else [predictions]
    query = select(*picked).where(predictions.c.route.in_(routes))
    if since is not None:
        query = query.where(predictions.c.ts >= since)
    if model is not None:
        query = query.where(predictions.c.model == model)
    query = query.order_by(predictions.c.id.desc())
    if last is not None:
        query = query.limit(last)
    return read_chunked(eng, query).sort_values("id").reset_index(drop=True)


def labelled(eng: Engine, since: datetime | None = None, max_rows: int | None = None) -> pd.DataFrame:
    """Served requests that got a feedback label, one row per request id (shadow copies
    share the id and are not counted twice): request_id, text, label, ts (when it was
    answered) and sender (who gave the current label). Bounded by `since` (answered at or
    after) and/or the newest `max_rows`, read in chunks; oldest first."""
    query = (select(predictions.c.id, predictions.c.request_id, predictions.c.text, predictions.c.feedback,
                    predictions.c.ts, predictions.c.feedback_by)
             .where(predictions.c.served.is_(True), predictions.c.feedback.is_not(None),
                    predictions.c.text.is_not(None))
             .order_by(predictions.c.id.desc()))
    if since is not None:
        query = query.where(predictions.c.ts >= since)
    if max_rows is not None:
        query = query.limit(max_rows)
    frame = read_chunked(eng, query).sort_values("id").drop_duplicates("request_id")
    frame = frame.rename(columns={"feedback": "label", "feedback_by": "sender"})
    return frame[["request_id", "text", "label", "ts", "sender"]].reset_index(drop=True)


def read_chunked(eng: Engine, query, chunk_rows: int | None = None) -> pd.DataFrame:
    """A query's rows fetched `chunk_rows` (CHUNK_ROWS) at a time, through a server-side
    cursor where the store has one, so the driver never holds the whole result at once."""
    with eng.connect() as conn:
        stream = conn.execution_options(stream_results=True)
        chunks = list(pd.read_sql(query, stream, chunksize=chunk_rows or CHUNK_ROWS))
    if not chunks:  # no chunk at all: still the query's columns
        with eng.connect() as conn:
            return pd.read_sql(query.limit(0), conn)
    return pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0]


# ---------------------------------------------------------------- buffered writer


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
