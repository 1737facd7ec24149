"""Paired significance tests of two models on the same rows: a bootstrap CI of a metric's
difference and the exact McNemar test. The bootstrap scores thousands of resamples from one
bincount each, in chunks, so it stays cheap enough to run on every slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

from ftops.evaluate.metrics import EvaluationError

CHUNK = 500  # bootstrap resamples per vectorised batch: bounds memory at CHUNK x n ints


@dataclass
class BootstrapResult:
    metric: str
    delta: float  # metric(b) - metric(a) on all rows
    ci_low: float
    ci_high: float
    p_value: float  # one-sided: share of resamples with delta <= 0
    p_two_sided: float  # min(1, 2 * min(share <= 0, share >= 0))
    resamples: int
    alpha: float


def paired_bootstrap(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray,
                     metric: str = "macro_f1", resamples: int = 2000, seed: int = 0,
                     alpha: float = 0.05) -> BootstrapResult:
    """Percentile CI of metric(b) - metric(a), resampling the SAME rows for both models.

    Pairing cancels the row-to-row difficulty both models share, so the interval is far
    tighter than two independent ones. Resample r uses the rows
    `np.random.default_rng(seed).integers(0, n, size=(resamples, n))[r]` (drawn in chunks;
    the stream is the same). Each resample's confusion matrices come from one bincount.
    """
    if metric not in BATCH_METRICS:
        raise EvaluationError(f"Unknown bootstrap metric '{metric}'; use one of "
                              f"{', '.join(BATCH_METRICS)}.")
    y, a, b = (np.asarray(v, dtype=int) for v in (y_true, pred_a, pred_b))
    k = int(max(y.max(), a.max(), b.max())) + 1
    codes_a, codes_b = y * k + a, y * k + b
    delta = point_score(codes_b, k, metric) - point_score(codes_a, k, metric)
    scores_b, scores_a = bootstrap_scores([codes_b, codes_a], k, metric, resamples, np.random.default_rng(seed))
    d = scores_b - scores_a
    low, high = np.quantile(d, [alpha / 2, 1 - alpha / 2])
    below, above = float(np.mean(d <= 0)), float(np.mean(d >= 0))
    return BootstrapResult(metric, delta, float(low), float(high), below,
                           min(1.0, 2 * min(below, above)), resamples, alpha)


def point_score(codes: np.ndarray, k: int, metric: str = "macro_f1") -> float:
    """`metric` on all rows; `codes` is true * k + predicted per row."""
    return float(BATCH_METRICS[metric](_confusions(codes, np.arange(len(codes))[None, :], k))[0])


def bootstrap_scores(codes: Sequence[np.ndarray], k: int, metric: str, resamples: int,
                     rng: np.random.Generator, chunk: int = CHUNK) -> list[np.ndarray]:
    """`metric` on each of `resamples` bootstrap resamples of the rows, one array per entry of
    `codes` (true * k + predicted, each of the same rows): every entry is scored on the same
    resampled rows, so two entries are paired. Drawn `chunk` resamples at a time, which
    bounds memory at chunk x n ints; the stream is rng.integers(0, n, size=(resamples, n))'s."""
    score, n = BATCH_METRICS[metric], len(codes[0])
    draws: list[list[np.ndarray]] = [[] for _ in codes]
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        for out, entry in zip(draws, codes):
            out.append(score(_confusions(entry, idx, k)))
    return [np.concatenate(found) for found in draws]


def _confusions(codes: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    """(r, k, k) confusion matrices (true x predicted) of r resamples of row indices."""
    r = len(idx)
    offsets = (np.arange(r) * k * k)[:, None]
    return np.bincount((codes[idx] + offsets).ravel(), minlength=r * k * k).reshape(r, k, k)


def _batch_macro_f1(cm: np.ndarray) -> np.ndarray:
    """Macro-F1 over classes seen in truth or prediction, as sklearn's default does."""
    tp = np.diagonal(cm, axis1=1, axis2=2)
    seen = cm.sum(axis=2) + cm.sum(axis=1)  # 2tp + fp + fn
    f1 = 2 * tp / np.maximum(seen, 1)
    return f1.sum(axis=1) / (seen > 0).sum(axis=1)


def _batch_accuracy(cm: np.ndarray) -> np.ndarray:
    return np.trace(cm, axis1=1, axis2=2) / cm.sum(axis=(1, 2))


BATCH_METRICS = {"macro_f1": _batch_macro_f1, "accuracy": _batch_accuracy}


@dataclass
class McNemarResult:
    b01: int  # a right, b wrong
    b10: int  # a wrong, b right
    statistic: float  # min(b01, b10), as statsmodels reports for the exact test
    p_value: float


def mcnemar(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> McNemarResult:
    """Exact McNemar test. Only rows where exactly one model is right carry information;
    under H0 each favours either model with probability 1/2, so b10 ~ Bin(b01 + b10, 1/2)."""
    y = np.asarray(y_true)
    right_a, right_b = np.asarray(pred_a) == y, np.asarray(pred_b) == y
    b01, b10 = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    p = 1.0 if b01 + b10 == 0 else float(binomtest(b10, b01 + b10, 0.5).pvalue)
    return McNemarResult(b01, b10, float(min(b01, b10)), p)
