"""The check store: every drift check is a row of `drift_checks` in the prediction-log
database, so history, persistence and cooldown survive restarts. A database failure becomes
one MonitorError saying that nothing was stored and no event was sent."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (JSON, Boolean, Column, DateTime, Float, Integer, MetaData, String, Table, Text, func,
                        inspect, select, text)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, ProgrammingError, SQLAlchemyError

from ftops import atomic, predlog
from ftops.config import Config
from ftops.monitor.results import CheckResult, MonitorError, first_line, monitoring_dir, utc

ANY_REFERENCE = "*"  # recent_checks: checks against any reference version

_metadata = MetaData()
drift_checks = Table(
    "drift_checks", _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", DateTime(timezone=True), nullable=False, index=True),
    Column("project", String(256), nullable=False, index=True),
    Column("reference_version", String(32), nullable=True),
    Column("window_size", Integer, nullable=False),        # current rows compared
    Column("reference_size", Integer, nullable=False),
    Column("feedback_rows", Integer, nullable=False),      # current rows with a true label
    Column("drifted_share", Float, nullable=True),         # Evidently DriftedColumnsCount share
    Column("drifted_count", Integer, nullable=True),
    Column("signals_checked", Integer, nullable=True),     # columns behind that share
    Column("scores", JSON, nullable=False),                # {signal: {score, threshold, method, drifted}}
    Column("accuracy", Float, nullable=True),              # live, on feedback rows
    Column("macro_f1", Float, nullable=True),
    Column("decision", String(16), nullable=False),        # drift | no_drift | too_small
    Column("alert", Boolean, nullable=False),
    Column("reason", Text, nullable=False),
    Column("event_sent", Boolean, nullable=True),          # None: no alert, so no event; True: delivered
    Column("report_path", Text, nullable=True),
    Column("snapshot_id", String(64), nullable=True),
    Column("seconds", Float, nullable=True),
    Column("event_state", String(16), nullable=True),      # pending | sending | sent | superseded
    Column("event_claimed_at", DateTime(timezone=True), nullable=True),  # wall clock of a sender's claim
    Column("event_sent_at", DateTime(timezone=True), nullable=True),     # delivery: the cooldown starts here
    Column("event_attempts", Integer, nullable=True),
)
ADDED_COLUMNS = ("event_state", "event_claimed_at", "event_sent_at", "event_attempts")  # newer than the table


def checks_engine(config: Config) -> Engine:
    """The prediction-log database, with `drift_checks` created beside `predictions` (and the
    newer columns added to an older table); every wait on it is bounded by timeouts.database_s."""
    cfg = config.resolved()
    cfg.project.dir.mkdir(parents=True, exist_ok=True)  # the embedded SQLite file lives there
    url = cfg.uris.prediction_log
    try:
        eng = predlog.engine(url, timeout_s=cfg.timeouts.database_s)
        try:
            _metadata.create_all(eng)
        except (OperationalError, ProgrammingError):  # another process created it between check and create
            _metadata.create_all(eng)
        _add_columns(eng)
    except SQLAlchemyError as exc:
        raise store_error(cfg, "opening the check store", exc) from exc
    return eng


def _add_columns(eng: Engine) -> None:
    """A `drift_checks` table from an older release lacks the delivery columns: add them (each
    nullable, only ever added, so one ALTER TABLE per column is the whole migration)."""
    present = {c["name"] for c in inspect(eng).get_columns(drift_checks.name)}
    for name in ADDED_COLUMNS:
        if name in present:
            continue
        column = drift_checks.c[name]
        try:
            with eng.begin() as conn:
                conn.execute(text(f"ALTER TABLE {drift_checks.name} ADD COLUMN {name} "
                                  f"{column.type.compile(eng.dialect)}"))
        except (OperationalError, ProgrammingError):  # another process added it first
            if name not in {c["name"] for c in inspect(eng).get_columns(drift_checks.name)}:
                raise


# ---------------------------------------------------------------- reading the history


def recent_checks(eng: Engine, project: str, before: datetime, limit: int | None = None,
                  alerts_only: bool = False, reference_version: str | None = ANY_REFERENCE) -> list[dict]:
    """Stored checks of a project before a time, newest first; too-small windows left out;
    `reference_version` (a version, or None for a reference passed in) keeps only checks
    against that reference."""
    query = (select(drift_checks).where(drift_checks.c.project == project)
             .where(drift_checks.c.ts <= before).where(drift_checks.c.decision != "too_small")
             .order_by(drift_checks.c.ts.desc(), drift_checks.c.id.desc()))
    if alerts_only:
        query = query.where(drift_checks.c.alert.is_(True))
    if reference_version is None:
        query = query.where(drift_checks.c.reference_version.is_(None))
    elif reference_version != ANY_REFERENCE:
        query = query.where(drift_checks.c.reference_version == reference_version)
    if limit is not None:
        query = query.limit(limit)
    with eng.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def _delivered_at():
    """When an alert reached Prefect (rows from before delivery tracking: their check time)."""
    return func.coalesce(drift_checks.c.event_sent_at, drift_checks.c.ts)


def last_delivered(eng: Engine, project: str, now: datetime) -> datetime | None:
    """Delivery time of the project's last alert delivered at or before `now`."""
    when = _delivered_at()
    query = (select(when).where(drift_checks.c.project == project, drift_checks.c.event_sent.is_(True), when <= now)
             .order_by(when.desc()).limit(1))
    with eng.connect() as conn:
        found = conn.execute(query).scalar()
    return None if found is None else utc(found)


def history(config: Config, last: int = 20) -> list[CheckResult]:
    """Stored checks of this project, newest first."""
    eng = checks_engine(config)
    try:
        query = (select(drift_checks).where(drift_checks.c.project == config.project.name)
                 .order_by(drift_checks.c.ts.desc(), drift_checks.c.id.desc()).limit(last))
        with eng.connect() as conn:
            return [CheckResult.from_row(dict(r._mapping)) for r in conn.execute(query)]
    finally:
        eng.dispose()


# ---------------------------------------------------------------- failures, in words


def guard_store(cfg: Config, doing: str, work: Callable[[], Any]) -> Any:
    """Run `work` (which reads or writes the check store); a database failure becomes one clear
    MonitorError saying that nothing was stored and no event was sent."""
    try:
        return work()
    except SQLAlchemyError as exc:
        raise store_error(cfg, doing, exc) from exc


def store_error(cfg: Config, doing: str, exc: SQLAlchemyError) -> MonitorError:
    url = cfg.uris.prediction_log
    folder = _sqlite_folder(url)
    if atomic.disk_full(exc) or (folder is not None and _low_space(folder)):  # SQLite says "disk I/O error" at times
        return no_space(folder or monitoring_dir(cfg), f"the check store {safe_url(url)} failed {doing}, so the "
                                                       "check was not stored and no event was sent", exc)
    return MonitorError(
        f"The drift check store {safe_url(url)} failed {doing} ({first_line(exc)}; waited at most "
        f"timeouts.database_s={cfg.timeouts.database_s:g} s): the check was not stored, no event was sent, and "
        "the next check decides again from the stored history. Check that the database is up and not locked "
        "by another process.")


def no_space(folder: Path, what: str, exc: BaseException) -> MonitorError:
    free = shutil.disk_usage(folder).free if folder.exists() else 0
    return MonitorError(
        f"No space left on the device holding {folder} ({free / 2**20:.1f} MiB free): {what}. Nothing "
        f"half-written is left and the stored checks are intact; free space there (older reports: "
        f"monitoring.keep_reports; `ftops prune`) and the next check runs normally. ({first_line(exc)})")


def safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for a message
        return "the prediction-log database"


def _sqlite_folder(url: str) -> Path | None:
    """The folder of an SQLite database file (None for a server or an in-memory database)."""
    from sqlalchemy.engine import make_url

    database = make_url(url).database if url.startswith("sqlite") else None
    return Path(database).parent if database and database != ":memory:" else None


def _low_space(folder: Path, below: int = 1 << 20) -> bool:
    try:
        return shutil.disk_usage(folder).free < below
    except OSError:
        return False
