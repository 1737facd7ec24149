"""Labels and splits: the stable label order, the stratified sample, and the seeded train /
validation / test split that keeps every hinted row in its split."""

from __future__ import annotations

import pandas as pd
from sklearn.model_selection import train_test_split

from ftops.config import DataSection
from ftops.data.report import CleaningReport
from ftops.errors import DataError

SPLITS = ("train", "validation", "test")
MIN_TO_STRATIFY = 3  # rows of a label a two-step stratified split needs (2 must reach the second step)


def label_map(frame: pd.DataFrame, cfg: DataSection) -> list[str]:
    """Stable label order: data.labels when given, else sorted; saved with the snapshot."""
    if cfg.labels:
        return list(cfg.labels)
    return sorted(frame["label"].unique())


def subsample(frame: pd.DataFrame, cfg: DataSection, report: CleaningReport) -> pd.DataFrame:
    if cfg.max_rows is None or len(frame) <= cfg.max_rows:
        return frame
    kept, _ = train_test_split(frame, train_size=cfg.max_rows, stratify=frame["label"],
                               random_state=cfg.seed)
    report.subsampled = len(frame) - len(kept)
    return kept.sort_values("row")


def split(frame: pd.DataFrame, cfg: DataSection, report: CleaningReport | None = None) -> dict[str, pd.DataFrame]:
    """Stratified, seeded train / validation / test. Rows with a `split_hint` keep that
    split: when retraining, the champion's training rows must never land in the test split
    it is judged on (it has memorised them), and feedback rows go where their request id's
    hash sends them. A label with too few unhinted rows to stratify stays in train (counted
    in `report.kept_in_train`) instead of failing the split."""
    if "split_hint" not in frame:
        frame = frame.assign(split_hint=None)
    frame = small_labels_to_train(frame, frame["split_hint"].isna(), MIN_TO_STRATIFY, report)
    hinted = frame[frame["split_hint"].notna()]
    free = frame.drop(hinted.index)
    parts = dict(zip(SPLITS, _stratified(free, cfg))) if len(free) else {s: free for s in SPLITS}
    out = {}
    for name in SPLITS:
        part = pd.concat([parts[name], hinted[hinted["split_hint"] == name]])
        out[name] = part.drop(columns=["split_hint"], errors="ignore").sort_values("row").reset_index(drop=True)
    return out


def small_labels_to_train(frame: pd.DataFrame, among: pd.Series, fewer_than: int,
                           report: CleaningReport | None) -> pd.DataFrame:
    """Hint to train the rows (of `among`) of every label with fewer than `fewer_than` of them."""
    counts = frame.loc[among, "label"].value_counts()
    small = counts[counts < fewer_than]
    if small.empty:
        return frame
    moved = among & frame["label"].isin(small.index)
    out = frame.copy()
    out.loc[moved, "split_hint"] = "train"
    if report is not None:
        for label, n in small.items():
            report.kept_in_train[label] = report.kept_in_train.get(label, 0) + int(n)
    return out


def _stratified(frame: pd.DataFrame, cfg: DataSection) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rest, test = train_test_split(frame, test_size=cfg.test_size, stratify=frame["label"],
                                  random_state=cfg.seed)
    share = cfg.validation_size / (1 - cfg.test_size)
    train, validation = train_test_split(rest, test_size=share, stratify=rest["label"],
                                         random_state=cfg.seed)
    return train, validation, test


def split_or_refuse(frame: pd.DataFrame, cfg: DataSection, origin: str,
                    report: CleaningReport) -> dict[str, pd.DataFrame]:
    """`split`, refusing (before anything is written) a split that fails or comes out empty."""
    try:
        splits = split(frame, cfg, report)
    except ValueError as exc:  # sklearn: too few rows to stratify at these sizes
        raise DataError(f"{origin}: cannot split {len(frame)} rows into train / validation / test "
                        f"({exc}). Add rows, or raise data.min_rows_per_class.") from None
    empty = [name for name, part in splits.items() if part.empty]
    if empty:
        sizes = ", ".join(f"{name} {len(part)}" for name, part in splits.items())
        raise DataError(f"{origin}: the {' and '.join(empty)} split would be empty ({sizes} rows). "
                        "Every split needs rows: add rows, or check the split hints of in-memory rows.")
    return splits
