"""Row-level checks, and the refusal of a set no classifier can be trained and judged on;
errors name the file, the rows and the field."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ftops.config import DataSection
from ftops.data.report import CleaningReport, drop_summary
from ftops.data.splitting import MIN_TO_STRATIFY
from ftops.errors import DataError

MAX_LISTED = 8  # problems listed in one error message; the rest are counted


def validate(frame: pd.DataFrame, cfg: DataSection, origin: str, report: CleaningReport) -> pd.DataFrame:
    """Row-level checks. With on_invalid=error any problem stops the stage, listing rows;
    with on_invalid=drop the rows are dropped and counted in the report."""
    problems: list[tuple[str, pd.Series, str]] = []

    text = frame["text"]
    is_str = text.map(lambda v: isinstance(v, str))
    missing = text.isna()
    non_text = ~is_str & ~missing
    blank = is_str & text.map(lambda v: isinstance(v, str) and not v.strip())
    problems.append(("text is empty", frame.loc[missing | blank, "row"], "field 'text': empty"))
    problems.append(("text is not text", frame.loc[non_text, "row"],
                     "field 'text': not text (a number, list or object)"))

    label = frame["label"]
    no_label = label.isna() | label.map(lambda v: isinstance(v, str) and not v.strip())
    problems.append(("label is empty", frame.loc[no_label, "row"], "field 'label': empty"))
    labels_as_text = label.map(_label_text)
    if cfg.labels:
        outside = ~no_label & ~labels_as_text.isin(cfg.labels)
        allowed = ", ".join(cfg.labels)
        problems.append(("label not in data.labels", frame.loc[outside, "row"],
                         f"field 'label': value not one of {allowed} (data.labels)"))

    bad_rows = pd.Series(dtype="int64")
    messages = []
    for reason, rows, message in problems:
        if len(rows) == 0:
            continue
        bad_rows = pd.concat([bad_rows, rows])
        if cfg.on_invalid == "drop":
            report.drop(reason, rows)
            continue
        listed = ", ".join(str(r) for r in rows[:MAX_LISTED])
        more = f" and {len(rows) - MAX_LISTED} more" if len(rows) > MAX_LISTED else ""
        example = ""
        if reason == "label not in data.labels":
            seen = labels_as_text[frame["row"].isin(rows)].unique()[:MAX_LISTED]
            example = f" (found: {', '.join(repr(s) for s in seen)})"
        noun = "row" if len(rows) == 1 else "rows"
        messages.append(f"{noun} {listed}{more}: {message}{example}")
    if messages:
        raise DataError(f"{origin}: {'; '.join(messages)}. Fix these rows, or set "
                        "data.on_invalid: drop to drop them (they are then counted in the "
                        "cleaning report).")
    out = frame[~frame["row"].isin(bad_rows)].copy()
    out["label"] = out["label"].map(_label_text)
    return out


def _label_text(value: Any) -> Any:
    """Labels are strings everywhere downstream; 1 and 1.0 both become '1'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else (None if pd.isna(value) else str(value))


def check_rows(frame: pd.DataFrame, cfg: DataSection, origin: str, report: CleaningReport) -> None:
    """Refuse, before anything is written, a set no classifier can be trained and judged on."""
    if frame.empty:
        dropped = "; ".join(f"{reason}: {n}" for reason, n in drop_summary(report)) or "nothing dropped"
        raise DataError(f"{origin}: no rows left after cleaning ({report.rows_in} read; {dropped}). "
                        "Check that the file holds data rows (not just a header), data.text_column / "
                        "data.label_column, and data.min_chars / data.on_invalid.")
    present = frame["label"].value_counts()
    if len(present) < 2:
        missing = [l for l in cfg.labels or [] if l not in present.index]
        absent = f"; absent: {', '.join(missing)}" if missing else ""
        raise DataError(f"{origin}: only one label occurs ('{present.index[0]}', {present.iloc[0]} rows"
                        f"{absent}); a classifier needs rows of at least two labels. Add rows of the "
                        "other labels, or check data.label_column.")
    check_class_counts(frame, cfg, origin)


def check_class_counts(frame: pd.DataFrame, cfg: DataSection, origin: str) -> None:
    """Every label present, and every data.labels label (absent ones count as 0 unless
    data.absent_labels is allow), needs min_rows_per_class rows."""
    counts = frame["label"].value_counts()
    if cfg.labels and cfg.absent_labels == "error":
        counts = counts.reindex(list(dict.fromkeys([*cfg.labels, *counts.index])), fill_value=0)
    needed = max(cfg.min_rows_per_class, MIN_TO_STRATIFY)  # one row per split at the very least
    few = counts[counts < needed]
    if len(few):
        listed = ", ".join(f"'{k}' has {v}" for k, v in few.items())
        absent = ("; a data.labels label with no rows counts as 0 (data.absent_labels: allow keeps it "
                  "without rows)") if (few == 0).any() else ""
        raise DataError(f"{origin}: too few rows per class after cleaning ({listed}); "
                        f"data.min_rows_per_class is {cfg.min_rows_per_class}{absent}. Add labelled "
                        "rows, merge rare labels, or lower data.min_rows_per_class.")
