"""Text cleaning and duplicates: NFKC, control characters out, whitespace collapsed, length
limits, and dedup in which a curated row always outranks labelled traffic."""

from __future__ import annotations

import re
import unicodedata

import numpy as np
import pandas as pd

from ftops.config import DataSection
from ftops.data.feedback import is_curated
from ftops.data.report import CleaningReport

CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\ufeff]")
WHITESPACE = re.compile(r"\s+")
NON_WORD = re.compile(r"[\W_]+")


def clean_text(text: str) -> str:
    """NFKC, control/zero-width characters out, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text)
    text = CONTROL.sub(" ", text)
    return WHITESPACE.sub(" ", text).strip()


def normalized_key(text: str) -> str:
    """Duplicate key that ignores case, punctuation and spacing (keeps @mentions' words)."""
    return NON_WORD.sub(" ", text.casefold()).strip()


def clean(frame: pd.DataFrame, cfg: DataSection, report: CleaningReport) -> pd.DataFrame:
    out = frame.copy()
    out["text"] = out["text"].map(clean_text)
    report.drop("empty after cleaning", out.loc[out["text"] == "", "row"])
    out = out[out["text"] != ""]
    short = out["text"].str.len() < cfg.min_chars
    report.drop(f"shorter than {cfg.min_chars} chars", out.loc[short, "row"])
    out = out[~short]
    long = out["text"].str.len() > cfg.max_chars
    report.truncated = int(long.sum())
    out.loc[long, "text"] = out.loc[long, "text"].str.slice(0, cfg.max_chars)
    if cfg.dedup != "none":
        out = _dedup(out, cfg.dedup, report)
    return out


def _dedup(frame: pd.DataFrame, mode: str, report: CleaningReport) -> pd.DataFrame:
    key = frame["text"] if mode == "exact" else frame["text"].map(normalized_key)
    curated = is_curated(frame)
    # Labelled traffic cannot overrule the curated data: a feedback row that gives a curated
    # text another label is dropped, the curated row kept (else crafted feedback erases it).
    contradicting = _contradicts_curated(key, frame["label"], curated)
    report.drop("feedback contradicting a curated row", frame.loc[contradicting, "row"])
    frame, key, curated = frame[~contradicting], key[~contradicting], curated[~contradicting]
    # Otherwise the same text with different labels cannot be learned from: drop every copy.
    labels_per_key = frame.groupby(key)["label"].transform("nunique")
    conflicting = labels_per_key > 1
    report.drop("duplicate text with conflicting labels", frame.loc[conflicting, "row"])
    kept, kept_key, kept_curated = frame[~conflicting], key[~conflicting], curated[~conflicting]
    curated_first = kept.index[np.argsort(~kept_curated.to_numpy(), kind="stable")]
    repeated = kept_key.loc[curated_first].duplicated(keep="first").reindex(kept.index)
    report.drop(f"duplicate ({mode})", kept.loc[repeated, "row"])
    return kept[~repeated]


def _contradicts_curated(key: pd.Series, label: pd.Series, curated: pd.Series) -> pd.Series:
    curated_pairs = set(zip(key[curated], label[curated]))
    curated_keys = {k for k, _ in curated_pairs}
    return pd.Series([not c and k in curated_keys and (k, l) not in curated_pairs
                      for k, l, c in zip(key, label, curated)], index=key.index, dtype=bool)
