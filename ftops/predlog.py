"""The prediction log: every answered request (and every shadow answer), later joined by
its feedback label. SQLAlchemy, so SQLite (embedded default) and Postgres (team) share
the code; only `uris.prediction_log` differs.

One row per model answer: the answer the caller got has route `champion` or `challenger`;
a shadow copy has route `shadow` and the same request id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd
from sqlalchemy import (JSON, Boolean, Column, DateTime, Float, Integer, MetaData, String, Table, Text,
                        create_engine, select, update)
from sqlalchemy.engine import Engine

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
    metadata.create_all(eng)
    return eng


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
