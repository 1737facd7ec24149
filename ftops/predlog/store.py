"""The prediction log's store: the tables, the engine (with the schema brought up to date),
and the reads and writes.

One row per model answer: the answer the caller got has route `champion` or `challenger`;
a shadow copy has route `shadow` and the same request id.

Labels: one current label per request id (on its rows, with its sender in `feedback_by`),
and every label ever given in the append-only `feedback` table, replacements included.

Fallbacks: a request the traffic policy gave to the challenger, which the champion answered
because the challenger failed, is logged as the answer it is (route `champion`, the
champion's model) with `fallback_from = 'challenger'`; the A/B report counts those rows for
the challenger arm and leaves them out of both arms' numbers (they are neither arm's sample).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd
from sqlalchemy import (JSON, Boolean, Column, DateTime, Float, Integer, MetaData, String, Table, Text,
                        create_engine, event, inspect, select, text, update)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, ProgrammingError

from ftops.security import ANONYMOUS

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
