"""One drift check, start to end: the current window and the reference in, Evidently's
signals, the decision, then the report (atomic) -> the stored row -> the event -> the row
marked sent, and last the dashboard snapshots (a failing dashboard never loses a check)."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from ftops import atomic
from ftops.config import Config
from ftops.monitor import publish
from ftops.monitor.delivery import deliver_pending
from ftops.monitor.frames import current_window, feedback_count, require_columns
from ftops.monitor.policy import should_alert, window_drifts
from ftops.monitor.reference import load_reference
from ftops.monitor.results import (CONFIDENCE, EMBEDDING, LABEL, PENDING, PREDICTION, TEXT, CheckResult, Embedder,
                                   MonitorError, first_line, monitoring_dir, utc)
from ftops.monitor.signals import drift_report, embedding_report, read_signals
from ftops.monitor.store import checks_engine, drift_checks, guard_store, no_space

log = logging.getLogger("ftops.monitor")


def check(config: Config, current: pd.DataFrame | None = None, reference: pd.DataFrame | None = None,
          now: datetime | None = None, embed: Embedder | None = None) -> CheckResult:
    """Compare the current window with the reference, decide, store, and alert when it holds.

    `current` defaults to the prediction log's window, `reference` to the champion's; `embed`
    (texts -> vectors, see `embedder`) adds embedding drift when the reference holds vectors.
    Order: report (atomic) -> stored row -> event -> row marked sent; a pending alert of an
    earlier check is re-sent here whatever this check decides.
    """
    started = time.perf_counter()
    cfg = config.resolved()
    now = utc(now or datetime.now(UTC))
    eng = checks_engine(cfg)
    try:
        if reference is None:
            reference = load_reference(cfg)
        require_columns(reference, (TEXT, PREDICTION, CONFIDENCE), "reference")
        if current is None:
            current = guard_store(cfg, "reading the current window", lambda: current_window(cfg, eng, now))
        if len(current) and LABEL not in current.columns and "feedback" in current.columns:
            current = current.rename(columns={"feedback": LABEL})
        result, snapshots = guard_store(cfg, "reading the check history",
                                         lambda: _evaluate(cfg, eng, current, reference, now, embed))
        _write_report(cfg, result, snapshots)
        result.seconds = time.perf_counter() - started
        result.id = _store(cfg, eng, result)
        _deliver(cfg, eng, result, now)
        _add_to_workspace(cfg, eng, result, snapshots, _labels(current, reference) if snapshots else [])
    finally:
        eng.dispose()
    return result


def _evaluate(cfg: Config, eng: Engine, current: pd.DataFrame, reference: pd.DataFrame, now: datetime,
              embed: Embedder | None) -> tuple[CheckResult, list]:
    """The decision and the snapshots behind it; nothing is written here."""
    note = reference.attrs.get("note")
    base = {"ts": now, "project": cfg.project.name, "window_size": len(current), "reference_size": len(reference),
            "feedback_rows": feedback_count(current), "reference_version": reference.attrs.get("version")}
    if len(current) < cfg.monitoring.min_window:
        return CheckResult(decision="too_small", alert=False, **base,
                           reason=_with_note(f"{len(current)} rows in the window, fewer than monitoring.min_window="
                                             f"{cfg.monitoring.min_window}; not judged", note)), []
    require_columns(current, (TEXT, PREDICTION, CONFIDENCE), "current")
    snapshot, result = drift_report(cfg, current, reference, now)
    signals, summary = read_signals(result)
    snapshots = [snapshot]
    if embed is not None:
        extra = embedding_report(cfg, current, reference, embed, now)
        if extra is not None:
            snapshots.append(extra[0])
            signals[EMBEDDING] = extra[1]
    drift, why = window_drifts(cfg, signals, summary["drifted_share"])
    alert, reason = should_alert(cfg, eng, drift, now, base["reference_version"])
    out = CheckResult(decision="drift" if drift else "no_drift", alert=alert,
                      reason=_with_note(f"{why}; {reason}", note), signals=signals, **summary, **base)
    if alert:
        out.event_sent, out.event_state = False, PENDING
    return out, snapshots


def _with_note(reason: str, note: str | None) -> str:
    return f"{reason} [{note}]" if note else reason


def _labels(current: pd.DataFrame, reference: pd.DataFrame) -> list[str]:
    values = set(reference[PREDICTION].astype(str)) | set(current[PREDICTION].astype(str))
    if LABEL in reference.columns:
        values |= set(reference[LABEL].dropna().astype(str))
    return sorted(values)


def _write_report(cfg: Config, result: CheckResult, snapshots: list) -> None:
    """The HTML report (atomic); a full disk stops the check here, before anything is stored."""
    if not snapshots:
        return
    folder = monitoring_dir(cfg) / "reports"
    try:
        result.report_path = str(publish.write_html(snapshots, publish.report_path(cfg, result.ts)))
        publish.prune_reports(cfg)
    except OSError as exc:
        if atomic.disk_full(exc):
            raise no_space(folder, "the drift report could not be written, so the check was not stored "
                                   "and no event was sent", exc) from exc
        raise


def _store(cfg: Config, eng: Engine, result: CheckResult) -> int:
    """Insert the check (an alert as pending); on failure the report of the unstored check is
    removed too, so every report on disk belongs to a stored check."""
    row = result.row()
    row["ts"] = result.ts
    row["scores"] = json.loads(json.dumps(row["scores"], default=float))

    def insert() -> int:
        with eng.begin() as conn:
            return int(conn.execute(drift_checks.insert().values(**row)).inserted_primary_key[0])

    try:
        return guard_store(cfg, "storing the check", insert)
    except MonitorError:
        if result.report_path:
            Path(result.report_path).unlink(missing_ok=True)
            result.report_path = None
        raise


def _deliver(cfg: Config, eng: Engine, result: CheckResult, now: datetime) -> None:
    """Send this check's alert, or an earlier pending one (re-sent whatever this check decided);
    a store failure here leaves the alert pending (stored, re-sent later), never raised."""
    if result.alert:
        top = ", ".join(f"{s.name}={s.score:.3g}" for s in result.top(3))
        log.warning("DRIFT ALERT %s: %s; top signals %s; report %s", cfg.project.name, result.reason, top,
                    result.report_path)
    try:
        deliver_pending(cfg, eng, now)
        if result.alert:
            _refresh_event(eng, result)
    except SQLAlchemyError as exc:
        log.warning("drift alert delivery of %s interrupted by the check store (%s): the alert stays pending "
                    "and is re-sent by the next check or resend_pending", cfg.project.name, first_line(exc))


def _refresh_event(eng: Engine, result: CheckResult) -> None:
    columns = (drift_checks.c.event_sent, drift_checks.c.event_state, drift_checks.c.event_sent_at)
    with eng.connect() as conn:
        row = conn.execute(select(*columns).where(drift_checks.c.id == result.id)).first()
    result.event_sent, result.event_state = bool(row.event_sent), row.event_state
    result.event_sent_at = utc(row.event_sent_at) if row.event_sent_at else None


def _add_to_workspace(cfg: Config, eng: Engine, result: CheckResult, snapshots: list, labels: list[str]) -> None:
    """Dashboard snapshots after the decision is safe; a failing dashboard must not lose the
    check, so failures are logged, not raised."""
    if not snapshots:
        return
    try:
        result.snapshot_id = publish.add_snapshots(cfg, snapshots, labels)
        with eng.begin() as conn:
            conn.execute(update(drift_checks).where(drift_checks.c.id == result.id)
                         .values(snapshot_id=result.snapshot_id))
    except Exception as exc:  # noqa: BLE001 - the decision record matters more than the dashboard
        log.warning("could not add the check to the Evidently workspace %s: %s", cfg.uris.evidently_workspace, exc)
