"""The prediction log: every answered request (and every shadow answer), later joined by
its feedback label. SQLAlchemy, so SQLite (embedded default) and Postgres (team) share
the code; only `uris.prediction_log` differs.

One row per model answer: the answer the caller got has route `champion` or `challenger`;
a shadow copy has route `shadow` and the same request id. The gateway writes through
`LogWriter` (bounded buffer, batched background writes), so requests never wait for the store.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd
from sqlalchemy import (JSON, Boolean, Column, DateTime, Float, Integer, MetaData, String, Table, Text,
                        create_engine, event, select, update)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

log = logging.getLogger(__name__)

ROUTES = ("champion", "challenger", "shadow")

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
)


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

    def row(self, keep_text: bool = True) -> dict:
        return {
            "request_id": self.request_id, "ts": self.ts or datetime.now(UTC),
            "text": self.text if keep_text else None,
            "text_sha256": hashlib.sha256(self.text.encode("utf-8")).hexdigest(),
            "text_chars": len(self.text), "prediction": self.prediction, "confidence": self.confidence,
            "probs": self.probs, "latency_ms": self.latency_ms, "model": self.model,
            "version": self.version, "route": self.route, "served": self.route != "shadow",
            "user_key": self.user_key,
        }


def engine(url: str) -> Engine:
    """An engine with the table created (idempotent)."""
    kwargs = {"connect_args": {"check_same_thread": False, "timeout": 30}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    eng = create_engine(url, **kwargs)
    if url.startswith("sqlite") and ":memory:" not in url:
        event.listen(eng, "connect", _sqlite_wal)
    try:
        metadata.create_all(eng)
    except OperationalError:  # another process created it between the check and the create
        metadata.create_all(eng)
    return eng


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


def add_feedback(eng: Engine, request_id: str, label: str) -> int:
    """Attach a true label to a request's rows (served and shadow); the number of rows."""
    with eng.begin() as conn:
        result = conn.execute(update(predictions).where(predictions.c.request_id == request_id)
                              .values(feedback=label, feedback_ts=datetime.now(UTC)))
        return result.rowcount


def request_models(eng: Engine, request_id: str) -> list[str]:
    """The models that answered a request (served and shadow); empty if it is unknown."""
    with eng.connect() as conn:
        rows = conn.execute(select(predictions.c.model).where(predictions.c.request_id == request_id).distinct())
        return [r[0] for r in rows]


def read(eng: Engine, last: int | None = None, since: datetime | None = None,
         routes: tuple[str, ...] = ("champion", "challenger"), model: str | None = None) -> pd.DataFrame:
    """Logged rows, oldest first: the last N (by id) and/or since a time."""
    query = select(predictions).where(predictions.c.route.in_(routes))
    if since is not None:
        query = query.where(predictions.c.ts >= since)
    if model is not None:
        query = query.where(predictions.c.model == model)
    query = query.order_by(predictions.c.id.desc())
    if last is not None:
        query = query.limit(last)
    with eng.connect() as conn:
        frame = pd.read_sql(query, conn)
    return frame.sort_values("id").reset_index(drop=True)


def labelled(eng: Engine) -> pd.DataFrame:
    """Served requests that got a feedback label: text + label, one row per request id
    (shadow copies share the request id and are not counted twice)."""
    query = (select(predictions.c.request_id, predictions.c.text, predictions.c.feedback, predictions.c.ts)
             .where(predictions.c.served.is_(True), predictions.c.feedback.is_not(None),
                    predictions.c.text.is_not(None))
             .order_by(predictions.c.id))
    with eng.connect() as conn:
        frame = pd.read_sql(query, conn)
    frame = frame.drop_duplicates("request_id")
    return frame.rename(columns={"feedback": "label"})[["request_id", "text", "label", "ts"]]


# ---------------------------------------------------------------- buffered writer


class LogWriter:
    """Requests never wait for the store: rows go into a bounded in-memory buffer that a
    background thread writes in batches (every `batch_rows` rows or `flush_ms`).

    A failed write keeps its rows (at the front, order kept) and is retried with backoff,
    so a briefly unavailable store loses nothing. Only a full buffer drops rows, and every
    dropped row is counted (`dropped`) and logged, never silent.
    """

    def __init__(self, sink: Callable[[list[dict]], None], capacity: int = 10000, batch_rows: int = 200,
                 flush_ms: int = 200, max_backoff_s: float = 2.0):
        self.sink, self.capacity, self.batch_rows = sink, capacity, batch_rows
        self.flush_s, self.max_backoff_s = flush_ms / 1000, max_backoff_s
        self.written = self.dropped = self.write_errors = 0
        self.last_error: str | None = None
        self._rows: deque[dict] = deque()
        self._in_flight = 0
        self._accepted = 0  # rows ever accepted; `_done` catches up as they are written
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
        """Buffer rows; the number accepted (the rest are dropped and counted)."""
        with self._cond:
            room = max(0, self.capacity - self.buffered)
            accepted, lost = rows[:room], len(rows) - min(room, len(rows))
            self._rows.extend(accepted)
            self._accepted += len(accepted)
            self.dropped += lost
            if len(self._rows) >= self.batch_rows:
                self._cond.notify_all()
        if lost:
            log.error("prediction log buffer full (%d rows): dropped %d rows", self.capacity, lost)
        return len(accepted)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every row accepted so far is written; False on timeout."""
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
                self.sink(batch)
            except Exception as exc:  # the store is down or refused: keep the rows, retry
                self._requeue(batch, exc)
                self._pause(backoff)
                backoff = min(self.max_backoff_s, backoff * 2)
                continue
            backoff = 0.05
            with self._cond:
                if self._closed:  # counted as lost by close(), yet it made it after all
                    self.dropped -= len(batch)
                self._in_flight = 0
                self.written += len(batch)
                self._done += len(batch)
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

    def _requeue(self, batch: list[dict], exc: Exception) -> None:
        with self._cond:
            if not self._closed:
                self._rows.extendleft(reversed(batch))
            self._in_flight = 0
            self.write_errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:500]
        log.warning("prediction log write failed (%s); %d rows kept for retry", self.last_error, len(batch))

    def _pause(self, seconds: float) -> None:
        with self._cond:
            self._cond.wait(seconds)  # a close() wakes it for a last try at once
