"""The TF-IDF baseline every candidate is shown against."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sklearn.metrics import accuracy_score, f1_score


@dataclass
class BaselineResult:
    val_macro_f1: float
    test_macro_f1: float
    test_accuracy: float
    wall_seconds: float
    pipeline: Any = None


def fit_baseline(snapshot, seed: int = 13) -> BaselineResult:
    """TF-IDF (word 1-2 grams + char 2-5 grams) + logistic regression: the cheap bar every
    candidate is shown against."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    train, val, test = (snapshot.split(s) for s in ("train", "validation", "test"))
    started = time.perf_counter()
    pipeline = make_pipeline(
        make_union(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                   TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True)),
        LogisticRegression(max_iter=2000, C=4.0, class_weight="balanced", random_state=seed),
    )
    pipeline.fit(train["text"], train["label"])
    wall = time.perf_counter() - started
    val_pred, test_pred = pipeline.predict(val["text"]), pipeline.predict(test["text"])
    return BaselineResult(
        val_macro_f1=float(f1_score(val["label"], val_pred, average="macro")),
        test_macro_f1=float(f1_score(test["label"], test_pred, average="macro")),
        test_accuracy=float(accuracy_score(test["label"], test_pred)),
        wall_seconds=wall, pipeline=pipeline,
    )
