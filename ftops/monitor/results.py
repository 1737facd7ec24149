"""What a drift check produces, and the words the monitor's files share: the columns of a
compared frame, the signals, the alert delivery states and the check record itself."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ftops.config import Config
from ftops.errors import FtopsError

TEXT, PREDICTION, CONFIDENCE, LABEL, EMBEDDING = "text", "prediction", "confidence", "label", "embedding"
DESCRIPTORS = ("text_length", "word_count", "non_letter_share", "upper_share")
CONTENT_SIGNALS = (TEXT, EMBEDDING)  # domain classifiers: ROC AUC, compared with strong_auc
SEED = 13
PENDING, SENDING, SENT, SUPERSEDED = "pending", "sending", "sent", "superseded"  # drift_checks.event_state
REPORT_MODE = 0o644  # what open() gave before the writes became atomic (a temp file starts 0600)

Embedder = Callable[[list[str]], np.ndarray]


class MonitorError(FtopsError):
    pass


@dataclass
class Signal:
    """One drift signal: Evidently's score, the threshold it was judged by, and the verdict."""

    name: str
    score: float
    threshold: float
    method: str
    drifted: bool

    @property
    def strength(self) -> float:
        """How far past its threshold (1 = at it), comparable across p-values, distances and AUCs."""
        score, threshold = float(self.score), float(self.threshold)
        if "p_value" in self.method:
            return float(np.log(max(score, 1e-300)) / np.log(threshold))
        if self.name in CONTENT_SIGNALS:
            return (score - 0.5) / max(threshold - 0.5, 1e-9)
        return score / threshold if threshold else 0.0


@dataclass
class CheckResult:
    """One check as stored in `drift_checks`: the decision, why, and every signal's score."""

    ts: datetime
    project: str
    decision: str
    alert: bool
    reason: str
    window_size: int
    reference_size: int
    feedback_rows: int = 0
    signals: dict[str, Signal] = field(default_factory=dict)
    drifted_share: float | None = None
    drifted_count: int | None = None
    signals_checked: int | None = None
    accuracy: float | None = None
    macro_f1: float | None = None
    reference_version: str | None = None
    report_path: str | None = None
    snapshot_id: str | None = None
    event_sent: bool | None = None
    seconds: float | None = None
    event_state: str | None = None        # pending | sending | sent | superseded (None: no alert)
    event_sent_at: datetime | None = None
    id: int | None = None

    @property
    def drift(self) -> bool:
        return self.decision == "drift"

    def top(self, n: int = 5) -> list[Signal]:
        """The signals furthest past their thresholds first."""
        return sorted(self.signals.values(), key=lambda s: s.strength, reverse=True)[:n]

    def scores(self) -> dict[str, float]:
        return {name: float(s.score) for name, s in self.signals.items()}

    def row(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("signals", "id")}
        out["scores"] = {name: asdict(s) for name, s in self.signals.items()}
        return out

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> CheckResult:
        values = {k: row[k] for k in cls.__dataclass_fields__ if k in row and k != "signals"}
        values["ts"] = utc(row["ts"])
        if values.get("event_sent_at") is not None:
            values["event_sent_at"] = utc(values["event_sent_at"])
        values["signals"] = {name: Signal(**s) for name, s in (row["scores"] or {}).items()}
        return cls(**values)


def utc(value: datetime) -> datetime:
    """SQLite hands datetimes back naive; everything here is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def first_line(exc: BaseException) -> str:
    return (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]


def monitoring_dir(config: Config) -> Path:
    return config.resolved().project.dir / "monitoring"
