"""The frames a check compares: one row per prediction (text, prediction, confidence, and the
true label where feedback arrived), built from class probabilities or read from the
prediction log's current window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from ftops import predlog
from ftops.config import Config
from ftops.monitor.results import CONFIDENCE, LABEL, PREDICTION, TEXT, MonitorError, utc


def predictions_frame(texts, probs: np.ndarray, labels: list[str], true_labels=None) -> pd.DataFrame:
    """text, prediction, confidence (+ label) from class probabilities, the shape both the
    reference and the prediction log have."""
    probs = np.asarray(probs, dtype=float)
    frame = pd.DataFrame({TEXT: list(texts),
                          PREDICTION: np.asarray(labels, dtype=object)[probs.argmax(axis=1)],
                          CONFIDENCE: probs.max(axis=1)})
    if true_labels is not None:
        frame[LABEL] = list(true_labels)
    return frame


def current_window(config: Config, eng: Engine | None = None, now: datetime | None = None) -> pd.DataFrame:
    """Served rows (champion and challenger routes): the last `window_hours` if set, else the
    last `window_size`. Rows logged without text cannot be compared and are left out."""
    cfg = config.resolved()
    monitoring = cfg.monitoring
    eng = eng or predlog.engine(cfg.uris.prediction_log)
    if monitoring.window_hours:
        now = utc(now or datetime.now(UTC))
        rows = predlog.read(eng, since=now - timedelta(hours=monitoring.window_hours))
        rows = rows[rows["ts"].map(utc) <= now] if len(rows) else rows
    else:
        rows = predlog.read(eng, last=monitoring.window_size)
    rows = rows.rename(columns={"feedback": LABEL})
    return rows[rows[TEXT].notna()].reset_index(drop=True)


def require_columns(frame: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise MonitorError(f"The {what} data lacks column(s) {', '.join(missing)}; it needs "
                           f"{', '.join(columns)} (one row per prediction), as written by "
                           "ftops.monitor.predictions_frame or read from the prediction log.")


def feedback_count(frame: pd.DataFrame) -> int:
    return int(frame[LABEL].notna().sum()) if LABEL in frame.columns else 0
