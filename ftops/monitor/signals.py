"""The drift signals, computed by Evidently on two frames (current vs reference):

- text: a domain classifier tells current from reference texts (ROC AUC, Evidently's
  `abs_text_content_drift`), plus offline-safe descriptors (length, words, non-letter and
  upper-case share) with Evidently's default per-column tests;
- predictions: the predicted-label distribution and the confidence;
- labels and live quality (accuracy, macro-F1), when enough feedback has arrived;
- pooled embeddings of a sample (optional: only when an embedder is passed).

Two of Evidently's internals are replaced for the length of one report, for speed only
(each is left alone when Evidently moves it): a memo for its repeated domain-classifier fits
and a PCA picture instead of its t-SNE one.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from ftops.config import Config
from ftops.monitor.frames import feedback_count
from ftops.monitor.results import (CONFIDENCE, DESCRIPTORS, EMBEDDING, LABEL, PREDICTION, SEED, TEXT, Embedder,
                                   Signal)

log = logging.getLogger("ftops.monitor")

TEXT_METHOD = "abs_text_content_drift"

def text_descriptors(texts: pd.Series) -> pd.DataFrame:
    """Cheap text descriptors that need no downloads (Evidently's Sentiment / OOV / IncludesWords
    would fetch NLTK data), vectorised so 100k rows stay fast."""
    texts = texts.astype(str)
    length = texts.str.len()
    letters = texts.str.count(r"[^\W\d_]")
    return pd.DataFrame({
        "text_length": length,
        "word_count": texts.str.count(r"\S+"),
        "non_letter_share": 1.0 - letters / length.clip(lower=1),
        "upper_share": texts.str.count(r"[A-Z]") / letters.clip(lower=1),
    }, index=texts.index)


def _prepared(frame: pd.DataFrame, with_label: bool) -> pd.DataFrame:
    columns = [TEXT, PREDICTION, CONFIDENCE] + ([LABEL] if with_label else [])
    out = frame[columns].reset_index(drop=True).copy()
    out[TEXT] = out[TEXT].astype(str)
    out[PREDICTION] = out[PREDICTION].astype(str)
    out[CONFIDENCE] = out[CONFIDENCE].astype(float)
    if with_label:
        out[LABEL] = out[LABEL].astype(object).where(out[LABEL].notna(), None)
    return pd.concat([out, text_descriptors(out[TEXT])], axis=1)


def _definition(with_label: bool, with_quality: bool):
    from evidently import DataDefinition, MulticlassClassification

    return DataDefinition(
        text_columns=[TEXT], numerical_columns=[*DESCRIPTORS, CONFIDENCE],
        categorical_columns=[PREDICTION] + ([LABEL] if with_label else []),
        classification=[MulticlassClassification(target=LABEL, prediction_labels=PREDICTION)] if with_quality else None,
    )


def drift_columns() -> list[str]:
    """The signals behind the drifted share: all present in every window, so the share means the
    same from check to check (one series on the dashboard). Label drift is scored beside them,
    not counted in: feedback arrives late, for some rows, often for complaints."""
    return [TEXT, *DESCRIPTORS, PREDICTION, CONFIDENCE]


def drift_report(config: Config, current: pd.DataFrame, reference: pd.DataFrame, now: datetime):
    """Run the Evidently report (drift per signal, drifted share, prediction distribution, and
    live quality when feedback allows); returns (snapshot, its dict)."""
    from evidently import Dataset, Report
    from evidently.metrics import (Accuracy, DriftedColumnsCount, F1Score, MeanValue, RowCount,
                                   UniqueValueCount, ValueDrift)

    monitoring = config.monitoring
    with_label = LABEL in reference.columns and feedback_count(current) >= monitoring.min_feedback
    columns = drift_columns()
    text_args = {"method": TEXT_METHOD, "threshold": monitoring.text_auc_threshold}
    metrics = [
        DriftedColumnsCount(columns=columns, drift_share=monitoring.drift_share, text_method=TEXT_METHOD,
                            text_threshold=monitoring.text_auc_threshold),
        *[ValueDrift(column=c, **(text_args if c == TEXT else {})) for c in columns + [LABEL] * with_label],
        RowCount(), UniqueValueCount(column=PREDICTION), MeanValue(column=CONFIDENCE),
    ]
    if with_label:
        metrics += [Accuracy(), F1Score()]
    definition = _definition(with_label, with_label)
    datasets = [Dataset.from_pandas(_prepared(frame, with_label), data_definition=definition)
                for frame in (current, reference)]
    with warnings.catch_warnings(), _one_domain_classifier_per_text_pair():
        warnings.simplefilter("ignore")  # sklearn / pandas chatter inside Evidently
        snapshot = Report(metrics, include_tests=True).run(*datasets, timestamp=now.replace(tzinfo=None),
                                                           tags=["drift"], name=config.project.name)
    return snapshot, snapshot.dict()


@contextmanager
def _one_domain_classifier_per_text_pair():
    """Evidently fits the same seeded TF-IDF domain classifier on the same split four times per
    text column (score and plot data, once for DriftedColumnsCount and once for ValueDrift):
    half of a 10k-row check. Within one report, identical inputs reuse the first fit
    (left alone if Evidently's internals move)."""
    from evidently.legacy.utils import data_drift_utils

    original = getattr(data_drift_utils, "roc_auc_domain_classifier", None)
    if original is None:
        yield
        return
    fits: dict[bytes, Any] = {}

    def memoized(x_train, x_test, y_train, y_test):
        key = b"".join(pd.util.hash_pandas_object(pd.Series(part), index=True).to_numpy().tobytes()
                       for part in (x_train, x_test, y_train, y_test))
        if key not in fits:
            fits[key] = original(x_train, x_test, y_train, y_test)
        return fits[key]

    data_drift_utils.roc_auc_domain_classifier = memoized
    try:
        yield
    finally:
        data_drift_utils.roc_auc_domain_classifier = original


def read_signals(result: dict) -> tuple[dict[str, Signal], dict[str, Any]]:
    """Per-column Signals and the dataset-level numbers out of a snapshot's dict."""
    failed = {t["metric_config"]["metric_id"] for t in result["tests"] if t["status"] == "FAIL"}
    signals: dict[str, Signal] = {}
    summary: dict[str, Any] = {}
    for metric in result["metrics"]:
        kind = metric["config"]["type"].rsplit(":", 1)[-1]
        value = metric["value"]
        if kind == "ValueDrift":
            name = metric["config"]["column"]
            signals[name] = Signal(name, float(value), float(metric["config"]["threshold"]),
                                   str(metric["config"]["method"]), metric["id"] in failed)
        elif kind == "DriftedColumnsCount":
            summary["drifted_share"] = float(value["share"])
            summary["drifted_count"] = int(value["count"])
            summary["signals_checked"] = len(metric["config"]["columns"])
        elif kind == "Accuracy":
            summary["accuracy"] = float(value)
        elif kind == "F1Score":
            summary["macro_f1"] = float(value)
    return signals, summary


def embedding_report(config: Config, current: pd.DataFrame, reference: pd.DataFrame, embed: Embedder,
                     now: datetime):
    """Embedding drift on a sample (Evidently's EmbeddingsDrift renders a t-SNE of every row it
    gets, so it only ever gets `embedding_sample` rows a side, reduced by PCA first)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift
    from evidently.metrics.embeddings import ModelDriftMethod

    monitoring = config.monitoring
    ref_vectors = reference[EMBEDDING].dropna().to_list() if EMBEDDING in reference.columns else []
    if len(ref_vectors) < 20:
        log.warning("embedding drift skipped: the reference holds %d embedding vectors (at least 20 needed; "
                    "build it with build_reference or add_embeddings)", len(ref_vectors))
        return None
    ref = np.stack([np.asarray(v, dtype=np.float32) for v in ref_vectors])
    ref = ref[np.random.default_rng(SEED).permutation(len(ref))[:monitoring.embedding_sample]]
    texts = current[TEXT].astype(str).sample(min(monitoring.embedding_sample, len(current)), random_state=SEED)
    cur = np.asarray(embed(list(texts)), dtype=np.float32)
    ref, cur = reduce_dims(ref, cur, monitoring.embedding_dims)
    names = [f"pc{i}" for i in range(ref.shape[1])]
    definition = DataDefinition(numerical_columns=names, embeddings={EMBEDDING: names})
    method = ModelDriftMethod(threshold=monitoring.text_auc_threshold)
    with warnings.catch_warnings(), _pca_instead_of_tsne():
        warnings.simplefilter("ignore")
        snapshot = Report([EmbeddingsDrift(embeddings_name=EMBEDDING, drift_method=method)]).run(
            Dataset.from_pandas(pd.DataFrame(cur, columns=names), data_definition=definition),
            Dataset.from_pandas(pd.DataFrame(ref, columns=names), data_definition=definition),
            timestamp=now.replace(tzinfo=None), tags=["embeddings"], name=config.project.name)
    score = float(snapshot.dict()["metrics"][0]["value"])
    signal_ = Signal(EMBEDDING, score, monitoring.text_auc_threshold, f"domain classifier, PCA {ref.shape[1]}",
                     score > monitoring.text_auc_threshold)
    return snapshot, signal_


def reduce_dims(reference: np.ndarray, current: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """PCA fitted on the reference; Evidently profiles every column it gets (~2 s for 384 x 400),
    so it gets the components, not the raw vectors."""
    from sklearn.decomposition import PCA

    dims = max(1, min(dims, reference.shape[1], len(reference) - 1))
    pca = PCA(n_components=dims, random_state=SEED).fit(reference)
    return pca.transform(reference), pca.transform(current)


class _Pca2d:
    """Stands in for t-SNE in Evidently's embedding-drift picture: same call, a linear 2-D map."""

    def __init__(self, n_components: int = 2, **_):
        self.n_components = n_components

    def fit_transform(self, data):
        from sklearn.decomposition import PCA

        return PCA(n_components=self.n_components, random_state=SEED).fit_transform(np.asarray(data))


@contextmanager
def _pca_instead_of_tsne():
    """Evidently draws embedding drift with a t-SNE of every row it gets: ~9 s for 200 + 200
    rows on two busy cores, 95% of a check. The score does not use it, so the picture gets a
    PCA projection instead (left alone if Evidently's internals move)."""
    from evidently.legacy.metrics.data_drift import embeddings_drift

    original = getattr(embeddings_drift, "TSNE", None)
    if original is None:
        yield
        return
    embeddings_drift.TSNE = _Pca2d
    try:
        yield
    finally:
        embeddings_drift.TSNE = original
