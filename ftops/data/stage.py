"""The data stage end to end: source (or in-memory rows) -> validated, cleaned, split and
optionally augmented snapshot."""

from __future__ import annotations

import hashlib

import pandas as pd

from ftops.config import Config
from ftops.data.augmentation import augment
from ftops.data.cleaning import clean
from ftops.data.feedback import limit_feedback, sender_counts
from ftops.data.load import read_source
from ftops.data.report import CleaningReport
from ftops.data.snapshot import Snapshot, snapshot_root, write_snapshot
from ftops.data.splitting import label_map, split_or_refuse, subsample
from ftops.data.validation import check_rows, validate


def prepare(config: Config, frame: pd.DataFrame | None = None, origin: str | None = None) -> Snapshot:
    """Source -> validated, cleaned, split (and optionally augmented) snapshot.

    `frame` (columns text, label and any others) replaces the configured source, e.g. the
    old training rows plus labelled traffic when retraining (`retraining_frame`); `origin`
    names it in messages. Refuses, writing nothing, a set with no rows, one label, a label
    under min_rows_per_class, or an empty split.
    """
    cfg = config.data
    in_memory = frame is not None
    if frame is None:
        frame, source_sha = read_source(cfg)
        origin = cfg.source
    else:
        frame = frame.reset_index(drop=True)
        if "row" not in frame:
            frame.insert(0, "row", range(1, len(frame) + 1))
        source_sha = hashlib.sha256(pd.util.hash_pandas_object(frame[["text", "label"]].astype(str), index=False)
                                    .to_numpy().tobytes()).hexdigest()
        origin = origin or "in-memory rows"
        cfg = cfg.model_copy(update={"source": origin})
    report = CleaningReport(rows_in=len(frame))
    offered = sender_counts(frame) if in_memory else {}
    frame = validate(frame, cfg, origin, report)
    frame = clean(frame, cfg, report)
    if in_memory:
        frame = limit_feedback(frame, config, offered, report)
    check_rows(frame, cfg, origin, report)
    frame = subsample(frame, cfg, report)
    labels = label_map(frame, cfg)
    splits = split_or_refuse(frame, cfg, origin, report)
    splits["train"] = augment(splits["train"], cfg)
    report.rows_out = sum(len(p) for p in splits.values())
    return write_snapshot(splits, labels, report, cfg, source_sha, snapshot_root(config))
