"""The alert policy. One window drifts when Evidently's DriftedColumnsCount share over the
traffic signals (text, descriptors, prediction, confidence: present in every window, so the
share is comparable over time) reaches `drift_share`, or a domain classifier (text or
embeddings) reaches `strong_auc` on its own; label drift is scored and shown, not voted. An
alert needs that in `persistence_hits` of the last `persistence_windows` checks and no
delivered alert in the last `cooldown_hours`, so one shift gives one alert."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.engine import Engine

from ftops.config import Config
from ftops.monitor.results import CONTENT_SIGNALS, Signal
from ftops.monitor.store import last_delivered, recent_checks

def window_drifts(config: Config, signals: dict[str, Signal], share: float) -> tuple[bool, str]:
    """This window alone: drifted share at the threshold, or a domain classifier that tells
    traffic from reference on its own."""
    monitoring = config.monitoring
    strong = [s for s in signals.values() if s.name in CONTENT_SIGNALS and s.score >= monitoring.strong_auc]
    if share >= monitoring.drift_share:
        return True, f"drifted share {share:.2f} >= {monitoring.drift_share:.2f}"
    if strong:
        names = ", ".join(f"{s.name} AUC {s.score:.2f}" for s in strong)
        return True, f"{names} >= strong_auc {monitoring.strong_auc:.2f} (drifted share {share:.2f})"
    return False, f"drifted share {share:.2f} < {monitoring.drift_share:.2f}"


def should_alert(config: Config, eng: Engine, drift: bool, now: datetime,
                 reference_version: str | None = None) -> tuple[bool, str]:
    """Persistence (hits in the last windows against the same reference, this one included) and
    cooldown after the project's last DELIVERED alert, from its delivery (a new champion does
    not restart the clock; an alert that never reached Prefect started no retraining, so it
    starts no cooldown either)."""
    monitoring = config.monitoring
    project = config.project.name
    earlier = recent_checks(eng, project, now, limit=monitoring.persistence_windows - 1,
                            reference_version=reference_version)
    hits = int(drift) + sum(r["decision"] == "drift" for r in earlier)
    seen = 1 + len(earlier)
    if not drift:
        return False, f"no drift ({hits} of the last {seen} checks drifted)"
    if hits < monitoring.persistence_hits:
        return False, (f"drift in {hits} of the last {seen} checks; an alert needs "
                       f"{monitoring.persistence_hits} of {monitoring.persistence_windows}")
    alerted = last_delivered(eng, project, now)
    if alerted is not None:
        until = alerted + timedelta(hours=monitoring.cooldown_hours)
        if now < until:
            return False, (f"drift in {hits} of the last {seen} checks, but the last delivered alert "
                           f"({alerted:%Y-%m-%d %H:%M} UTC) is in cooldown until {until:%Y-%m-%d %H:%M} UTC")
    return True, f"drift in {hits} of the last {seen} checks: alert"
