"""Labelled traffic joining the champion's rows when retraining, under limits: its split
comes from a salted hash of the request id, a curated row outranks it, one sender's share
is capped, and a label too rare to hold out trains."""

from __future__ import annotations

import hashlib
import math

import pandas as pd

from ftops.config import Config, DataSection, FeedbackSection
from ftops.data.report import CleaningReport
from ftops.data.splitting import SPLITS, small_labels_to_train
from ftops.data.snapshot import Snapshot
from ftops.errors import DataError

FEEDBACK = "feedback"  # the `source` of labelled traffic; anything else is curated
LINEAGE = ("request_id", "sender", "ts")  # feedback bookkeeping: summarised in the manifest, not stored


def is_curated(frame: pd.DataFrame) -> pd.Series:
    """Rows not from labelled traffic; without a `source` column every row is curated."""
    if "source" not in frame:
        return pd.Series(True, index=frame.index)
    return frame["source"] != FEEDBACK


def feedback_split(request_id: str, salt: str, holdout_share: float, validation_share: float) -> str:
    """The split of one feedback row, from a salted hash of its request id (which the
    gateway assigns), never from the caller: `holdout_share` of rows are test, and of the
    rest `validation_share` are validation. The same id always gets the same split."""
    digest = hashlib.sha256(f"{salt}\x00{request_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2 ** 64
    if u < holdout_share:
        return "test"
    return "validation" if (u - holdout_share) / (1 - holdout_share) < validation_share else "train"


def retraining_frame(old: Snapshot, feedback: pd.DataFrame, config: Config) -> pd.DataFrame:
    """The champion's labelled rows (each kept in its split and source) plus labelled
    traffic (`predlog.labelled` columns), each tagged with its `source`. A feedback row's
    split comes from a hash of its request id salted with the project name, so whoever
    sends labels cannot choose the rows the A/B gate measures on."""
    missing = [c for c in ("request_id", "text", "label", "sender") if c not in feedback]
    if missing:
        raise DataError(f"Labelled traffic lacks column(s) {', '.join(missing)}: pass "
                        "predlog.labelled(...) rows (request_id, text, label, ts, sender).")
    parts = []
    for name in SPLITS:
        part = old.split(name)
        if "augmented" in part:
            part = part[~part["augmented"].astype(bool)]
        source = part["source"] if "source" in part else "original"
        parts.append(part[["text", "label"]].assign(source=source, split_hint=name))
    validation_share = config.data.validation_size / (1 - config.data.test_size)
    hints = [feedback_split(str(r), config.project.name, config.feedback.holdout_share, validation_share)
             for r in feedback["request_id"]]
    ts = feedback["ts"] if "ts" in feedback else pd.NaT
    new = feedback[["text", "label", "request_id", "sender"]].assign(
        source=FEEDBACK, split_hint=hints, ts=ts, sender=feedback["sender"].fillna("anonymous"))
    return pd.concat([*parts, new], ignore_index=True)


def limit_feedback(frame: pd.DataFrame, config: Config, offered: dict[str, int],
                   report: CleaningReport) -> pd.DataFrame:
    """Labelled traffic's limits: one sender's share capped, rare labels kept in train,
    per sender offered / kept recorded; the lineage columns then leave the rows."""
    frame = cap_senders(frame, config.feedback, report)
    frame = rare_feedback_to_train(frame, config.data, report)
    kept = sender_counts(frame)
    report.senders = {s: {"offered": n, "kept": kept.get(s, 0)} for s, n in offered.items()}
    return frame.drop(columns=[c for c in LINEAGE if c in frame])


def cap_senders(frame: pd.DataFrame, feedback: FeedbackSection, report: CleaningReport) -> pd.DataFrame:
    """Rows of one sender make up at most feedback.max_sender_share of the set that is
    kept, so no single credential can outweigh the curated data; beyond it the sender's
    newest rows are left out (counted in the report)."""
    if "sender" not in frame:
        return frame
    sent = ~is_curated(frame) & frame["sender"].notna()
    offered = frame.loc[sent, "sender"].value_counts()
    cap = sender_allowance(int((~sent).sum()), offered.tolist(), feedback.max_sender_share)
    order = frame[sent].sort_values(["ts", "row"], kind="stable") if "ts" in frame else frame[sent]
    rank = order.groupby("sender").cumcount().reindex(frame.index)
    beyond = sent & (rank >= cap)
    report.drop("feedback beyond one sender's share (feedback.max_sender_share)", frame.loc[beyond, "row"])
    return frame[~beyond]


def sender_allowance(others: int, offered: list[int], share: float) -> int:
    """Largest per-sender row count c such that every sender keeps min(offered, c) rows
    and none exceeds `share` of the rows kept in total (`others` + what senders keep).
    The share is of the kept set, so flooding with more rows cannot raise one's own cap."""
    total = others + sum(offered)
    while True:
        cap = math.floor(share * total + 1e-9)
        kept = others + sum(min(n, cap) for n in offered)
        if kept == total:
            return cap
        total = kept


def sender_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Feedback rows per sender."""
    if "sender" not in frame:
        return {}
    return {str(k): int(v) for k, v in frame.loc[~is_curated(frame), "sender"].value_counts().items()}


def rare_feedback_to_train(frame: pd.DataFrame, cfg: DataSection, report: CleaningReport) -> pd.DataFrame:
    """New feedback rows of a label with under min_rows_per_class of them train instead of
    being held out: a handful of test rows measures nothing (slices that small are not
    gated on) and would withhold the only examples training has of that label's traffic."""
    if "request_id" not in frame or "split_hint" not in frame:
        return frame
    new = ~is_curated(frame) & frame["request_id"].notna()
    return small_labels_to_train(frame, new, cfg.min_rows_per_class, report)
