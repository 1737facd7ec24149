"""One model's numbers on evaluation rows: headline metrics, per-class scores, calibration,
and the same headline numbers per slice (text length, each categorical column's values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support, roc_auc_score

from ftops.errors import FtopsError

ECE_BINS = 15
MIN_SLICE_ROWS = 20  # smaller slices are noise: recorded as skipped, never gated on
MAX_CATEGORIES = 50  # more distinct values than this is an id or free text, not a slice
LENGTH_EDGES = (10, 20, 40)  # word counts; buckets <=10, 11-20, 21-40, >40
LENGTH_LABELS = ("<=10", "11-20", "21-40", ">40")
NOT_SLICED = ("text", "label", "row")


class EvaluationError(FtopsError):
    pass


@dataclass
class Predictions:
    """One model's class probabilities on evaluation rows; `frame` holds text, row and slices."""

    labels: list[str]
    y_true: np.ndarray
    probs: np.ndarray
    frame: pd.DataFrame

    def __post_init__(self) -> None:
        self.y_true = np.asarray(self.y_true, dtype=int)
        self.probs = np.asarray(self.probs, dtype=float)
        n, k = len(self.y_true), len(self.labels)
        if n == 0:
            raise EvaluationError("No predictions to evaluate: the evaluation rows are empty.")
        if self.probs.shape != (n, k) or len(self.frame) != n:
            raise EvaluationError(
                f"Predictions do not line up: {n} true labels, probabilities of shape "
                f"{self.probs.shape} and {len(self.frame)} frame rows for {k} labels. Expected "
                "probabilities of shape (rows, labels) and one frame row per prediction.")
        if not np.allclose(self.probs.sum(axis=1), 1.0, atol=1e-3):
            raise EvaluationError("Prediction probabilities do not sum to 1 per row; pass "
                                  "softmax outputs, not logits.")

    @property
    def y_pred(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


def metrics(pred: Predictions) -> dict[str, Any]:
    """Headline numbers, per-class precision/recall/F1 and calibration of one model."""
    y, p = pred.y_true, pred.y_pred
    ids = list(range(len(pred.labels)))
    precision, recall, f1, support = precision_recall_fscore_support(y, p, labels=ids,
                                                                     zero_division=0)
    per_class = {label: {"precision": float(precision[i]), "recall": float(recall[i]),
                         "f1": float(f1[i]), "support": int(support[i])}
                 for i, label in enumerate(pred.labels)}
    return {**headline(y, p), "roc_auc": roc_auc(y, pred.probs), "ece": ece(y, pred.probs),
            "per_class": per_class}


def headline(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """n, accuracy, macro- and weighted-F1. F1 averages over the classes seen in y or p
    (sklearn's default), so a slice is not penalised for classes it does not contain."""
    return {"n": int(len(y)), "accuracy": float(accuracy_score(y, p)),
            "macro_f1": float(f1_score(y, p, average="macro", zero_division=0)),
            "weighted_f1": float(f1_score(y, p, average="weighted", zero_division=0))}


def roc_auc(y: np.ndarray, probs: np.ndarray) -> float | None:
    """One-vs-rest macro AUC; None when a class has no true rows (its AUC is undefined)."""
    k = probs.shape[1]
    if len(np.unique(y)) < k:
        return None
    if k == 2:
        return float(roc_auc_score(y, probs[:, 1]))
    return float(roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=list(range(k))))


def ece(y: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top-class confidence."""
    # Guo et al. 2017: split (0, 1] into `bins` equal-width bins by confidence (bin i holds
    # (i/bins, (i+1)/bins]), then sum |accuracy - mean confidence| over bins, each weighted
    # by its share of rows. sklearn only has a binary calibration curve, hence by hand.
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges, right=True) - 1, 0, bins - 1)
    total = 0.0
    for b in np.unique(which):
        inside = which == b
        total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def slices(pred: Predictions, columns: list[str] | None = None) -> dict[str, dict[str, dict]]:
    """Headline metrics per text-length bucket and per value of each categorical column.

    Slices under MIN_SLICE_ROWS rows appear as {"n", "skipped"}: their numbers are noise.
    """
    y, p = pred.y_true, pred.y_pred
    return {name: {value: slice_metrics(y, p, mask) for value, mask in masks.items()}
            for name, masks in slice_masks(pred.frame, columns).items()}


def slice_metrics(y: np.ndarray, p: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    n = int(mask.sum())
    if n < MIN_SLICE_ROWS:
        return {"n": n, "skipped": f"fewer than {MIN_SLICE_ROWS} rows"}
    return headline(y[mask], p[mask])


def slice_masks(frame: pd.DataFrame, columns: list[str] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """{slice name: {value: boolean row mask}}; `length` always, then categorical columns."""
    words = frame["text"].fillna("").astype(str).str.split().str.len().to_numpy()
    buckets = np.array(LENGTH_LABELS, dtype=object)[np.searchsorted(LENGTH_EDGES, words)]
    out = {"length": {v: buckets == v for v in LENGTH_LABELS if (buckets == v).any()}}
    for column in categorical_columns(frame, columns):
        values = frame[column].astype("string").fillna("<missing>").to_numpy(dtype=object)
        out[column] = {str(v): values == v for v in sorted(set(values))}
    return out


def categorical_columns(frame: pd.DataFrame, only: list[str] | None = None) -> list[str]:
    """Text-like or category columns with few distinct values; `only` restricts them."""
    found = [c for c in frame.columns if c not in NOT_SLICED and _is_categorical(frame[c])]
    if only is None:
        return found
    wanted = [c for c in only if c != "length"]
    missing = [c for c in wanted if c not in found]
    if missing:
        raise EvaluationError(
            f"Cannot slice by {', '.join(missing)}: not a categorical column of the evaluation "
            f"rows (at most {MAX_CATEGORIES} distinct text values). Categorical columns found: "
            f"{', '.join(found) or 'none'}.")
    return wanted


def _is_categorical(series: pd.Series) -> bool:
    dtype = series.dtype
    texty = isinstance(dtype, pd.CategoricalDtype) or dtype == object or pd.api.types.is_string_dtype(dtype)
    return bool(texty) and series.nunique() <= MAX_CATEGORIES
