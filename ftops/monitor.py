"""Drift monitoring: logged traffic vs the champion's reference data, checked with Evidently.

Reference = the champion's validation split with its predictions (an MLflow artifact of its
training run); current = the last `monitoring.window_size` served rows of the prediction log
(or the last `window_hours`). Every check compares them on several signals:

- text: a domain classifier tells current from reference texts (ROC AUC, Evidently's
  `abs_text_content_drift`), plus offline-safe descriptors (length, words, non-letter and
  upper-case share) with Evidently's default per-column tests;
- predictions: the predicted-label distribution and the confidence;
- labels and live quality (accuracy, macro-F1), when enough feedback has arrived;
- pooled embeddings of a sample (optional: only when an embedder is passed).

One window drifts when Evidently's DriftedColumnsCount share over the traffic signals (text,
descriptors, prediction, confidence: present in every window, so the share is comparable over
time) reaches `drift_share`, or a domain classifier (text or embeddings) reaches `strong_auc`
on its own; label drift is scored and shown, not voted. An alert needs that in
`persistence_hits` of the last `persistence_windows` checks and no alert in the last
`cooldown_hours`, so one shift gives one alert. Every check is a row of `drift_checks` in the
prediction-log database, so history, persistence and cooldown survive restarts. Outputs: an
HTML report per check, a snapshot in the Evidently workspace (dashboard panels per project),
and on an alert the Prefect event `ftops.drift.detected` that starts retraining.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import JSON, Boolean, Column, DateTime, Float, Integer, MetaData, String, Table, Text, select
from sqlalchemy.engine import Engine

from ftops import predlog, procs
from ftops.config import Config
from ftops.errors import FtopsError

log = logging.getLogger("ftops.monitor")

EVENT = "ftops.drift.detected"
REFERENCE_DIR = "reference"
REFERENCE_FILE = "reference.parquet"
TEXT, PREDICTION, CONFIDENCE, LABEL, EMBEDDING = "text", "prediction", "confidence", "label", "embedding"
DESCRIPTORS = ("text_length", "word_count", "non_letter_share", "upper_share")
CONTENT_SIGNALS = (TEXT, EMBEDDING)  # domain classifiers: ROC AUC, compared with strong_auc
TEXT_METHOD = "abs_text_content_drift"
UI_READY_TIMEOUT_S = 60.0
ANY_REFERENCE = "*"  # recent_checks: checks against any reference version
SEED = 13

Embedder = Callable[[list[str]], np.ndarray]


class MonitorError(FtopsError):
    pass


# ---------------------------------------------------------------- the check table

_metadata = MetaData()
drift_checks = Table(
    "drift_checks", _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", DateTime(timezone=True), nullable=False, index=True),
    Column("project", String(256), nullable=False, index=True),
    Column("reference_version", String(32), nullable=True),
    Column("window_size", Integer, nullable=False),        # current rows compared
    Column("reference_size", Integer, nullable=False),
    Column("feedback_rows", Integer, nullable=False),      # current rows with a true label
    Column("drifted_share", Float, nullable=True),         # Evidently DriftedColumnsCount share
    Column("drifted_count", Integer, nullable=True),
    Column("signals_checked", Integer, nullable=True),     # columns behind that share
    Column("scores", JSON, nullable=False),                # {signal: {score, threshold, method, drifted}}
    Column("accuracy", Float, nullable=True),              # live, on feedback rows
    Column("macro_f1", Float, nullable=True),
    Column("decision", String(16), nullable=False),        # drift | no_drift | too_small
    Column("alert", Boolean, nullable=False),
    Column("reason", Text, nullable=False),
    Column("event_sent", Boolean, nullable=True),          # None: no alert, so no event
    Column("report_path", Text, nullable=True),
    Column("snapshot_id", String(64), nullable=True),
    Column("seconds", Float, nullable=True),
)


def checks_engine(config: Config) -> Engine:
    """The prediction-log database, with `drift_checks` created beside `predictions`."""
    cfg = config.resolved()
    cfg.project.dir.mkdir(parents=True, exist_ok=True)  # the embedded SQLite file lives there
    eng = predlog.engine(cfg.uris.prediction_log)
    _metadata.create_all(eng)
    return eng


# ---------------------------------------------------------------- results


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
        values["ts"] = _utc(row["ts"])
        values["signals"] = {name: Signal(**s) for name, s in (row["scores"] or {}).items()}
        return cls(**values)


def _utc(value: datetime) -> datetime:
    """SQLite hands datetimes back naive; everything here is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# ---------------------------------------------------------------- reference and current data


def predictions_frame(texts, probs: np.ndarray, labels: list[str], true_labels=None) -> pd.DataFrame:
    """text, prediction, confidence (+ label) from class probabilities, the shape both the
    reference and the prediction log have."""
    probs = np.asarray(probs, dtype=float)
    frame = pd.DataFrame({TEXT: list(texts),
                          PREDICTION: np.asarray(labels, dtype=object)[probs.argmax(axis=1)],
                          CONFIDENCE: probs.max(axis=1)})
    if true_labels is not None:
        frame[LABEL] = list(true_labels)
    return frame


def embedder(model, tokenizer, max_length: int, batch_size: int = 64) -> Embedder:
    """texts -> mean-pooled last hidden states of a sequence classifier (masked, fp32); batches
    sorted by length, so little compute goes to padding."""

    def embed(texts: list[str]) -> np.ndarray:
        import torch

        order = np.argsort([len(t) for t in texts], kind="stable")
        out: np.ndarray | None = None
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                idx = order[start:start + batch_size]
                batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                  max_length=max_length, return_tensors="pt")
                hidden = model(**batch, output_hidden_states=True).hidden_states[-1].float()
                mask = batch["attention_mask"].unsqueeze(-1).float()
                pooled = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy()
                if out is None:
                    out = np.zeros((len(texts), pooled.shape[1]), dtype=np.float32)
                out[idx] = pooled
        return out if out is not None else np.zeros((0, 0), dtype=np.float32)

    return embed


def build_reference(model, tokenizer, labels: list[str], frame: pd.DataFrame, max_length: int,
                    embedding_sample: int = 200, seed: int = SEED) -> pd.DataFrame:
    """The champion's predictions on its validation split, with pooled embeddings for a
    sample of rows (embedding drift is checked on a sample, so only a sample is kept)."""
    from ftops import decide

    pred = decide.predict(model, tokenizer, labels, frame, max_length)
    reference = predictions_frame(frame[TEXT], pred.probs, labels, frame[LABEL])
    return add_embeddings(reference, embedder(model, tokenizer, max_length), embedding_sample, seed)


def add_embeddings(reference: pd.DataFrame, embed: Embedder, sample: int, seed: int = SEED) -> pd.DataFrame:
    """An `embedding` column: a vector for `sample` random rows, None elsewhere."""
    out = reference.reset_index(drop=True).copy()
    rows = out.sample(min(sample, len(out)), random_state=seed).index
    vectors = embed(list(out.loc[rows, TEXT]))
    column = pd.Series([None] * len(out), dtype=object)
    for row, vector in zip(rows, vectors):
        column[row] = np.asarray(vector, dtype=np.float32)
    out[EMBEDDING] = column
    return out


def save_reference(config: Config, run_id: str, frame: pd.DataFrame) -> str:
    """Log the reference as `reference/reference.parquet` on the model's training run; the URI."""
    from ftops import registry

    _require_columns(frame, (TEXT, PREDICTION, CONFIDENCE), "reference")
    mlflow_client = registry.client(config)
    with tempfile.TemporaryDirectory(prefix="ftops-reference-") as folder:
        path = Path(folder) / REFERENCE_FILE
        _to_parquet(frame, path)
        mlflow_client.log_artifact(run_id, str(path), REFERENCE_DIR)
    return f"{mlflow_client.get_run(run_id).info.artifact_uri}/{REFERENCE_DIR}/{REFERENCE_FILE}"


def save_champion_reference(config: Config, version: str, snapshot) -> str:
    """Build and log the reference of a freshly promoted version: its predictions (and a
    sample of embeddings) on the validation split of the snapshot it was judged on."""
    from ftops import decide, registry

    version_info = registry.get(config, version)
    model, tokenizer, labels = decide.load(decide.ModelRef(f"v{version}", registry.download(config, version), version))
    frame = build_reference(model, tokenizer, labels, snapshot.split("validation"), config.model.max_length,
                            embedding_sample=config.monitoring.embedding_sample)
    return save_reference(config, version_info.run_id, frame)


def _to_parquet(frame: pd.DataFrame, path: Path) -> None:
    out = frame.copy()
    if EMBEDDING in out:
        out[EMBEDDING] = [None if v is None else [float(x) for x in v] for v in out[EMBEDDING]]
    out.to_parquet(path, index=False)


def load_reference(config: Config, version: str | None = None) -> pd.DataFrame:
    """The reference of a registry version (default: the champion), cached in the project."""
    from ftops import registry

    cfg = config.resolved()
    found = registry.get(cfg, version or registry.CHAMPION)
    cache = monitoring_dir(cfg) / REFERENCE_DIR / f"{found.run_id}.parquet"
    if not cache.is_file():
        _download_reference(cfg, found, cache)
    frame = pd.read_parquet(cache)
    frame.attrs["version"] = found.version
    return frame


def _download_reference(config: Config, version, target: Path) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    from ftops import tracking

    tracking.use_project(config)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ftops-reference-") as folder:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=version.run_id, dst_path=folder,
                                                       artifact_path=f"{REFERENCE_DIR}/{REFERENCE_FILE}")
        except (MlflowException, OSError):
            raise MonitorError(
                f"Model version {version.version} (training run {version.run_id}) has no reference data "
                f"artifact {REFERENCE_DIR}/{REFERENCE_FILE}, so there is nothing to compare traffic with. "
                "Log it with ftops.monitor.save_reference(config, run_id, build_reference(...)) after "
                "training, or pass a reference frame to the check.") from None
        Path(path).replace(target)


def current_window(config: Config, eng: Engine | None = None, now: datetime | None = None) -> pd.DataFrame:
    """Served rows (champion and challenger routes): the last `window_hours` if set, else the
    last `window_size`. Rows logged without text cannot be compared and are left out."""
    cfg = config.resolved()
    monitoring = cfg.monitoring
    eng = eng or predlog.engine(cfg.uris.prediction_log)
    if monitoring.window_hours:
        now = _utc(now or datetime.now(UTC))
        rows = predlog.read(eng, since=now - timedelta(hours=monitoring.window_hours))
        rows = rows[rows["ts"].map(_utc) <= now] if len(rows) else rows
    else:
        rows = predlog.read(eng, last=monitoring.window_size)
    rows = rows.rename(columns={"feedback": LABEL})
    return rows[rows[TEXT].notna()].reset_index(drop=True)


def _require_columns(frame: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise MonitorError(f"The {what} data lacks column(s) {', '.join(missing)}; it needs "
                           f"{', '.join(columns)} (one row per prediction), as written by "
                           "ftops.monitor.predictions_frame or read from the prediction log.")


# ---------------------------------------------------------------- signals (Evidently)


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


def feedback_count(frame: pd.DataFrame) -> int:
    return int(frame[LABEL].notna().sum()) if LABEL in frame.columns else 0


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


# ---------------------------------------------------------------- decision


def window_drifts(config: Config, signals: dict[str, Signal], share: float) -> tuple[bool, str]:
    """This window alone: drifted share at the threshold, or a domain classifier that tells
    traffic from reference on its own."""
    monitoring = config.monitoring
    strong = [s for s in signals.values() if s.name in CONTENT_SIGNALS and s.score >= monitoring.strong_auc]
    if share >= monitoring.drift_share:
        return True, f"drifted share {share:.2f} >= {monitoring.drift_share:.2f}"
    if strong:
        names = ", ".join(f"{s.name} AUC {s.score:.2f}" for s in strong)
        return True, f"{names} >= strong_auc {monitoring.strong_auc:.2f} (drifted share {share:.2f})"
    return False, f"drifted share {share:.2f} < {monitoring.drift_share:.2f}"


def recent_checks(eng: Engine, project: str, before: datetime, limit: int | None = None,
                  alerts_only: bool = False, reference_version: str | None = ANY_REFERENCE) -> list[dict]:
    """Stored checks of a project before a time, newest first; too-small windows left out;
    `reference_version` (a version, or None for a reference passed in) keeps only checks
    against that reference."""
    query = (select(drift_checks).where(drift_checks.c.project == project)
             .where(drift_checks.c.ts <= before).where(drift_checks.c.decision != "too_small")
             .order_by(drift_checks.c.ts.desc(), drift_checks.c.id.desc()))
    if alerts_only:
        query = query.where(drift_checks.c.alert.is_(True))
    if reference_version is None:
        query = query.where(drift_checks.c.reference_version.is_(None))
    elif reference_version != ANY_REFERENCE:
        query = query.where(drift_checks.c.reference_version == reference_version)
    if limit is not None:
        query = query.limit(limit)
    with eng.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def should_alert(config: Config, eng: Engine, drift: bool, now: datetime,
                 reference_version: str | None = None) -> tuple[bool, str]:
    """Persistence (hits in the last windows against the same reference, this one included) and
    cooldown after any alert of the project (a new champion does not restart the clock)."""
    monitoring = config.monitoring
    project = config.project.name
    earlier = recent_checks(eng, project, now, limit=monitoring.persistence_windows - 1,
                            reference_version=reference_version)
    hits = int(drift) + sum(r["decision"] == "drift" for r in earlier)
    seen = 1 + len(earlier)
    if not drift:
        return False, f"no drift ({hits} of the last {seen} checks drifted)"
    if hits < monitoring.persistence_hits:
        return False, (f"drift in {hits} of the last {seen} checks; an alert needs "
                       f"{monitoring.persistence_hits} of {monitoring.persistence_windows}")
    last_alert = recent_checks(eng, project, now, limit=1, alerts_only=True)
    if last_alert:
        alerted = _utc(last_alert[0]["ts"])
        until = alerted + timedelta(hours=monitoring.cooldown_hours)
        if now < until:
            return False, (f"drift in {hits} of the last {seen} checks, but the last alert ({alerted:%Y-%m-%d %H:%M} "
                           f"UTC) is in cooldown until {until:%Y-%m-%d %H:%M} UTC")
    return True, f"drift in {hits} of the last {seen} checks: alert"


# ---------------------------------------------------------------- outputs


def monitoring_dir(config: Config) -> Path:
    return config.resolved().project.dir / "monitoring"


def report_path(config: Config, now: datetime) -> Path:
    folder = monitoring_dir(config) / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    stem = now.strftime("%Y-%m-%dT%H-%M-%SZ")
    path, n = folder / f"{stem}.html", 1
    while path.exists():
        path, n = folder / f"{stem}-{n}.html", n + 1
    return path


def prune_reports(config: Config) -> int:
    """Delete the oldest reports beyond `keep_reports` (checks every few minutes add up); how many."""
    reports = sorted((monitoring_dir(config) / "reports").glob("*.html"), key=lambda p: (p.stat().st_mtime, p.name))
    stale = reports[:max(0, len(reports) - config.monitoring.keep_reports)]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def write_html(snapshots: list, path: Path) -> Path:
    """One self-contained HTML page (Evidently inlines its JS) for all of a check's snapshots."""
    if len(snapshots) == 1:
        snapshots[0].save_html(str(path))  # save_html writes nothing when given a Path
        return path
    from evidently.core.metric_types import render_widgets
    from evidently.legacy.renderers.html_widgets import group_widget

    titles = ["", *["Embedding drift (sampled, PCA)"] * (len(snapshots) - 1)]
    widgets = [group_widget(title=t, widgets=s._widgets) for t, s in zip(titles, snapshots)]
    tests = [w for s in snapshots for w in s._tests_widgets]
    path.write_text(render_widgets(widgets + tests, as_iframe=False), encoding="utf-8")
    return path


def workspace(config: Config):
    from evidently.ui.workspace import Workspace

    return Workspace(config.resolved().uris.evidently_workspace)


def workspace_project(config: Config, labels: list[str], ws=None):
    """The project named after the model, created with its dashboard panels the first time."""
    ws = ws or workspace(config)
    name = config.project.name
    found = [p for p in ws.list_projects() if p.name == name]
    if found:
        return found[0]
    project = ws.create_project(name, description=f"ftops drift monitoring of {name}")
    for panel in dashboard_panels(labels):
        project.dashboard.add_panel(panel, tab="Drift")
    return project


def dashboard_panels(labels: list[str]) -> list:
    """Drift share over time, per-signal scores, prediction distribution, live quality."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import bar_plot_panel, counter_panel, line_plot_panel

    def drift(column: str) -> PanelMetric:
        return PanelMetric(legend=column, metric="ValueDrift", metric_labels={"column": column})

    share = PanelMetric(legend="drifted share", metric="DriftedColumnsCount", metric_labels={"value_type": "share"})
    return [
        counter_panel("Drifted share (last check)", [share], size="half", aggregation="last"),
        counter_panel("Rows in the last window", [PanelMetric(legend="rows", metric="RowCount")],
                      size="half", aggregation="last"),
        line_plot_panel("Drifted share over time", [share], size="full"),
        line_plot_panel("Content drift: domain classifier ROC AUC (text, embeddings)",
                        [drift(TEXT), PanelMetric(legend=EMBEDDING, metric="EmbeddingsDrift")], size="half"),
        line_plot_panel("Descriptor, prediction and label drift scores",
                        [drift(c) for c in (*DESCRIPTORS, PREDICTION, CONFIDENCE, LABEL)], size="half"),
        bar_plot_panel("Prediction distribution (share per label)",
                       [PanelMetric(legend=label, metric="UniqueValueCount",
                                    metric_labels={"column": PREDICTION, "value_type": "share", "label": label})
                        for label in labels], size="half", stacked=True),
        line_plot_panel("Live quality on feedback rows",
                        [PanelMetric(legend="accuracy", metric="Accuracy"),
                         PanelMetric(legend="macro-F1", metric="F1Score")], size="half"),
    ]


def add_snapshots(config: Config, snapshots: list, labels: list[str]) -> str | None:
    """Add a check's snapshots to the workspace; the id of the first (the drift snapshot)."""
    ws = workspace(config)
    project = workspace_project(config, labels, ws)
    ids = [str(ws.add_run(project.id, snapshot, include_data=False).id) for snapshot in snapshots]
    return ids[0] if ids else None


def prune_workspace(config: Config) -> int:
    """Delete this project's oldest workspace snapshots beyond retention.evidently_snapshots
    (a check adds one or two every few minutes, and the UI reads them all); how many.
    Evidently's snapshot ids are uuid7, so their order is the order they were added."""
    import uuid

    if not Path(config.resolved().uris.evidently_workspace).is_dir():
        return 0
    ws = workspace(config)
    removed = 0
    for project in (p for p in ws.list_projects() if p.name == config.project.name):
        runs = sorted(ws.list_runs(project.id), key=lambda sid: uuid.UUID(str(sid)).int)
        for snapshot_id in runs[:max(0, len(runs) - config.retention.evidently_snapshots)]:
            ws.delete_run(project.id, snapshot_id)
            removed += 1
    return removed


def prefect_reachable(api_url: str, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def event_payload(result: CheckResult) -> dict[str, Any]:
    return {
        "project": result.project, "reference_version": result.reference_version,
        "window_size": result.window_size, "drifted_share": result.drifted_share,
        "scores": result.scores(), "drifted": [s.name for s in result.top(len(result.signals)) if s.drifted],
        "accuracy": result.accuracy, "macro_f1": result.macro_f1, "reason": result.reason,
        "report": result.report_path, "checked_at": result.ts.isoformat(),
    }


def emit_drift_event(config: Config, result: CheckResult, timeout: float = 10.0) -> bool:
    """`ftops.drift.detected` on the Prefect server at uris.prefect_api; False (and a warning)
    when none answers, so a check never fails for want of an orchestrator."""
    api_url = config.uris.prefect_api
    if not prefect_reachable(api_url):
        log.warning("drift alert for %s NOT sent: no Prefect server answers at %s (start one with "
                    "`prefect server start --host 127.0.0.1`); the check is stored with event_sent=false",
                    config.project.name, api_url)
        return False
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from ftops import security

    name = config.project.name
    settings = {PREFECT_API_URL: api_url}
    auth = security.prefect_auth(config)
    if auth:
        settings[PREFECT_API_AUTH_STRING] = auth
    try:
        with temporary_settings(updates=settings):
            event = emit_event(EVENT, resource={"prefect.resource.id": f"ftops.model.{name}",
                                                "prefect.resource.name": name},
                               payload=event_payload(result))
            pending = _drain(EventsWorker, timeout)
    except Exception as exc:  # noqa: BLE001 - an unsent event is recorded, never fatal to the check
        log.warning("drift alert for %s: emitting the Prefect event to %s failed: %s", name, api_url, exc)
        return False
    if event is None or pending:
        log.warning("drift alert for %s: the Prefect event could not be delivered to %s", name, api_url)
        return False
    return True


def _drain(worker, timeout: float) -> bool:
    """Wait until queued events are sent (sync callers); True if some are still pending. Inside
    a running event loop (an async flow) the worker flushes on its own, at the latest at exit."""
    import asyncio

    try:
        asyncio.get_running_loop()
        return False
    except RuntimeError:
        _, pending = worker.drain_all(timeout=timeout, at_exit=False)
        return bool(pending)


# ---------------------------------------------------------------- the check


def check(config: Config, current: pd.DataFrame | None = None, reference: pd.DataFrame | None = None,
          now: datetime | None = None, embed: Embedder | None = None) -> CheckResult:
    """Compare the current window with the reference, decide, record, and alert when it holds.

    `current` defaults to the prediction log's window, `reference` to the champion's; `embed`
    (texts -> vectors, see `embedder`) adds embedding drift when the reference holds vectors.
    """
    started = time.perf_counter()
    cfg = config.resolved()
    now = _utc(now or datetime.now(UTC))
    eng = checks_engine(cfg)
    try:
        if reference is None:
            reference = load_reference(cfg)
        _require_columns(reference, (TEXT, PREDICTION, CONFIDENCE), "reference")
        if current is None:
            current = current_window(cfg, eng, now)
        if len(current) and LABEL not in current.columns and "feedback" in current.columns:
            current = current.rename(columns={"feedback": LABEL})
        result = _evaluate(cfg, eng, current, reference, now, embed)
        result.seconds = time.perf_counter() - started
        result.id = _store(eng, result)
    finally:
        eng.dispose()
    return result


def _evaluate(cfg: Config, eng: Engine, current: pd.DataFrame, reference: pd.DataFrame, now: datetime,
              embed: Embedder | None) -> CheckResult:
    base = {"ts": now, "project": cfg.project.name, "window_size": len(current), "reference_size": len(reference),
            "feedback_rows": feedback_count(current), "reference_version": reference.attrs.get("version")}
    if len(current) < cfg.monitoring.min_window:
        return CheckResult(decision="too_small", alert=False, **base,
                           reason=f"{len(current)} rows in the window, fewer than monitoring.min_window="
                                  f"{cfg.monitoring.min_window}; not judged")
    _require_columns(current, (TEXT, PREDICTION, CONFIDENCE), "current")
    snapshot, result = drift_report(cfg, current, reference, now)
    signals, summary = read_signals(result)
    snapshots = [snapshot]
    if embed is not None:
        extra = embedding_report(cfg, current, reference, embed, now)
        if extra is not None:
            snapshots.append(extra[0])
            signals[EMBEDDING] = extra[1]
    drift, why = window_drifts(cfg, signals, summary["drifted_share"])
    alert, reason = should_alert(cfg, eng, drift, now, base["reference_version"])
    out = CheckResult(decision="drift" if drift else "no_drift", alert=alert, reason=f"{why}; {reason}",
                      signals=signals, **summary, **base)
    _publish(cfg, out, snapshots, _labels(current, reference))
    return out


def _labels(current: pd.DataFrame, reference: pd.DataFrame) -> list[str]:
    values = set(reference[PREDICTION].astype(str)) | set(current[PREDICTION].astype(str))
    if LABEL in reference.columns:
        values |= set(reference[LABEL].dropna().astype(str))
    return sorted(values)


def _publish(cfg: Config, result: CheckResult, snapshots: list, labels: list[str]) -> None:
    """Report file, workspace snapshot and (on an alert) the Prefect event; a failing
    dashboard must not lose the check, so those failures are logged, not raised."""
    result.report_path = str(write_html(snapshots, report_path(cfg, result.ts)))
    prune_reports(cfg)
    try:
        result.snapshot_id = add_snapshots(cfg, snapshots, labels)
    except Exception as exc:  # noqa: BLE001 - the decision record matters more than the dashboard
        log.warning("could not add the check to the Evidently workspace %s: %s", cfg.uris.evidently_workspace, exc)
    if result.alert:
        top = ", ".join(f"{s.name}={s.score:.3g}" for s in result.top(3))
        log.warning("DRIFT ALERT %s: %s; top signals %s; report %s", cfg.project.name, result.reason, top,
                    result.report_path)
        result.event_sent = emit_drift_event(cfg, result)


def _store(eng: Engine, result: CheckResult) -> int:
    row = result.row()
    row["ts"] = result.ts
    row["scores"] = json.loads(json.dumps(row["scores"], default=float))
    with eng.begin() as conn:
        return int(conn.execute(drift_checks.insert().values(**row)).inserted_primary_key[0])


def history(config: Config, last: int = 20) -> list[CheckResult]:
    """Stored checks of this project, newest first."""
    eng = checks_engine(config)
    try:
        query = (select(drift_checks).where(drift_checks.c.project == config.project.name)
                 .order_by(drift_checks.c.ts.desc(), drift_checks.c.id.desc()).limit(last))
        with eng.connect() as conn:
            return [CheckResult.from_row(dict(r._mapping)) for r in conn.execute(query)]
    finally:
        eng.dispose()


# ---------------------------------------------------------------- the Evidently UI process


@dataclass
class UiInfo:
    pid: int
    host: str
    port: int
    workspace: str
    log: str

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def ui_dir(config: Config) -> Path:
    return config.resolved().project.dir / "evidently-ui"


def _ui_state(config: Config) -> Path:
    return ui_dir(config) / "ui.json"


def _running(pid: int) -> bool:
    """The process exists and has not exited (a zombie has)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _alive(pid: int) -> bool:
    """A running Evidently UI (a recycled PID of some other program is not ours)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"evidently" in cmdline and _running(pid)


def ui_status(config: Config) -> UiInfo | None:
    """The running UI of this project, or None (a stale state file is removed)."""
    path = _ui_state(config)
    if not path.is_file():
        return None
    info = UiInfo(**json.loads(path.read_text()))
    if not _alive(info.pid):
        path.unlink(missing_ok=True)
        return None
    return info


def ui_ready(info: UiInfo, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{info.url}/api/version", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def ui_start(config: Config, port: int | None = None) -> UiInfo:
    """Start `evidently ui` on 127.0.0.1 for the project's workspace (no-op if it runs)."""
    running = ui_status(config)
    if running is not None:
        return running
    cfg = config.resolved()
    folder = ui_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    ws = Path(cfg.uris.evidently_workspace)
    ws.mkdir(parents=True, exist_ok=True)
    port = port or cfg.monitoring.ui_port
    log_path = folder / "ui.log"
    command = [sys.executable, "-m", "evidently.cli", "ui", "--workspace", str(ws),
               "--host", "127.0.0.1", "--port", str(port)]
    procs.rotate_log(log_path, config.retention)
    with open(log_path, "ab") as handle:
        proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=folder,
                                start_new_session=True, env={**os.environ, "DO_NOT_TRACK": "1"})
    info = UiInfo(proc.pid, "127.0.0.1", port, str(ws), str(log_path))
    _ui_state(cfg).write_text(json.dumps(asdict(info)))
    deadline = time.monotonic() + UI_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _ui_state(cfg).unlink(missing_ok=True)
            raise MonitorError(f"The Evidently UI exited with code {proc.returncode} at start (is port {port} "
                               f"taken? set monitoring.ui_port). Last log lines ({log_path}):\n{procs.tail(log_path)}")
        if ui_ready(info):
            return info
        time.sleep(0.25)
    ui_stop(cfg)
    raise MonitorError(f"The Evidently UI was not ready within {UI_READY_TIMEOUT_S:.0f} s. "
                       f"Last log lines ({log_path}):\n{procs.tail(log_path)}")


def ui_stop(config: Config, timeout: float = 10.0) -> bool:
    """SIGTERM the UI's process group, SIGKILL if it lingers; True if one was stopped."""
    info = ui_status(config)
    if info is None:
        return False
    procs.terminate(info.pid, _running, timeout)  # cmdline empties while it exits
    _ui_state(config).unlink(missing_ok=True)
    return True



