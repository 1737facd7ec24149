"""Alert delivery: a check is stored first (an alert as `event_state='pending'`), then the
event goes out, then the row is marked `sent`; a check that cannot be stored sends nothing.
Only a delivered alert starts the cooldown. An undelivered one stays pending and is re-sent
by the next check and by `resend_pending` (`ftops up`, the supervisor): only the newest
pending alert of the project goes out (older ones become `superseded`: one retraining per
episode), and a sender first claims the row (`sending`) with a conditional UPDATE, so two
processes never both send; a claim older than CLAIM_STALE_S (its sender died) is pending again.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import exists, func, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from ftops.config import Config
from ftops.monitor import events
from ftops.monitor.results import PENDING, SENDING, SENT, SUPERSEDED, CheckResult, MonitorError, first_line, utc
from ftops.monitor.store import checks_engine, drift_checks, last_delivered, safe_url

log = logging.getLogger("ftops.monitor")

CLAIM_STALE_S = 300.0  # a `sending` claim this old lost its sender: pending again


def resend_pending(config: Config, now: datetime | None = None) -> int:
    """Deliver the project's newest undelivered alert (older ones are superseded: one retraining
    per episode); how many events went out (0 or 1). Safe to call from several processes at
    once, and cheap when nothing is pending (`ftops up`, the supervisor)."""
    cfg = config.resolved()
    eng = checks_engine(cfg)
    try:
        return deliver_pending(cfg, eng, utc(now or datetime.now(UTC)))
    except SQLAlchemyError as exc:
        raise MonitorError(f"Could not re-send pending drift alerts: the check store ({safe_url(cfg.uris.prediction_log)}) "
                           f"failed: {first_line(exc)}. Nothing was sent twice; retry when it answers.") from exc
    finally:
        eng.dispose()


def pending_alerts(config: Config) -> list[CheckResult]:
    """Undelivered alerts of the project (pending, or claimed by a sender), newest first."""
    eng = checks_engine(config)
    try:
        query = (select(drift_checks).where(drift_checks.c.project == config.project.name,
                                            drift_checks.c.event_state.in_((PENDING, SENDING)))
                 .order_by(drift_checks.c.id.desc()))
        with eng.connect() as conn:
            return [CheckResult.from_row(dict(r._mapping)) for r in conn.execute(query)]
    finally:
        eng.dispose()


def _stale_before() -> datetime:
    return datetime.now(UTC) - timedelta(seconds=CLAIM_STALE_S)


def _claimable():
    """Pending, or claimed by a sender that has not finished in CLAIM_STALE_S (it died)."""
    c = drift_checks.c
    return or_(c.event_state == PENDING, (c.event_state == SENDING) & (c.event_claimed_at < _stale_before()))


def deliver_pending(cfg: Config, eng: Engine, now: datetime) -> int:
    project = cfg.project.name
    newest = _newest_claimable(eng, project)
    if newest is None:
        return 0
    _set_state(eng, project, SUPERSEDED, drift_checks.c.id < newest["id"])
    if _delivered_within_cooldown(cfg, eng, now):  # another sender delivered this episode meanwhile
        _set_state(eng, project, SUPERSEDED, drift_checks.c.id == newest["id"])
        return 0
    claimed_at = _claim(cfg, eng, newest["id"], now)
    if claimed_at is None:
        return 0
    return int(_send_claimed(cfg, eng, newest, claimed_at, now))


def _newest_claimable(eng: Engine, project: str) -> dict | None:
    query = (select(drift_checks).where(drift_checks.c.project == project, _claimable())
             .order_by(drift_checks.c.id.desc()).limit(1))
    with eng.connect() as conn:
        row = conn.execute(query).first()
    return None if row is None else dict(row._mapping)


def _set_state(eng: Engine, project: str, state: str, which) -> int:
    """Claimable rows of the project matching `which` become `state` (a row a live sender
    holds is left alone); how many."""
    with eng.begin() as conn:
        return conn.execute(update(drift_checks).where(drift_checks.c.project == project, _claimable(), which)
                            .values(event_state=state, event_claimed_at=None)).rowcount


def _delivered_within_cooldown(cfg: Config, eng: Engine, now: datetime) -> bool:
    alerted = last_delivered(eng, cfg.project.name, now)
    return alerted is not None and now < alerted + timedelta(hours=cfg.monitoring.cooldown_hours)


def _claim(cfg: Config, eng: Engine, row_id: int, now: datetime) -> datetime | None:
    """Mark the row `sending`, only if it is still claimable, no other row of the project is
    being sent, and no alert was delivered within the cooldown: one UPDATE, so of several
    processes exactly one sees rowcount 1 (SQLite serialises writers; PostgreSQL re-checks
    the WHERE on the locked row). The claim's time, or None when another sender has it."""
    other = drift_checks.alias("other")
    busy = exists().where(other.c.project == cfg.project.name, other.c.id != row_id,
                          other.c.event_state == SENDING, other.c.event_claimed_at >= _stale_before())
    delivered_at = func.coalesce(other.c.event_sent_at, other.c.ts)
    delivered = exists().where(other.c.project == cfg.project.name, other.c.event_sent.is_(True),
                               delivered_at <= now,
                               delivered_at > now - timedelta(hours=cfg.monitoring.cooldown_hours))
    claimed_at = datetime.now(UTC)
    claim = (update(drift_checks).where(drift_checks.c.id == row_id, _claimable(), ~busy, ~delivered)
             .values(event_state=SENDING, event_claimed_at=claimed_at,
                     event_attempts=func.coalesce(drift_checks.c.event_attempts, 0) + 1))
    with eng.begin() as conn:
        return claimed_at if conn.execute(claim).rowcount == 1 else None


def _send_claimed(cfg: Config, eng: Engine, row: dict, claimed_at: datetime, now: datetime) -> bool:
    """Send a claimed alert; mark it sent (and every other pending alert of the project
    superseded: this delivery covers the episode), or pending again when it did not go out."""
    result = CheckResult.from_row(row)
    sent = False
    try:
        sent = bool(events.emit_drift_event(cfg, result))
    finally:
        mine = (drift_checks.c.id == row["id"]) & (drift_checks.c.event_state == SENDING) & \
            (drift_checks.c.event_claimed_at == claimed_at)
        values = ({"event_state": SENT, "event_sent": True, "event_sent_at": now} if sent
                  else {"event_state": PENDING, "event_claimed_at": None})
        with eng.begin() as conn:
            conn.execute(update(drift_checks).where(mine).values(**values))
    if sent:
        _set_state(eng, cfg.project.name, SUPERSEDED, drift_checks.c.id != row["id"])
        log.warning("drift alert of %s (check #%s, %s) delivered to Prefect", cfg.project.name, row["id"],
                    f"{result.ts:%Y-%m-%d %H:%M} UTC")
    return sent
