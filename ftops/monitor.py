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

Alert delivery: a check is stored first (an alert as `event_state='pending'`), then the event
goes out, then the row is marked `sent`; a check that cannot be stored sends nothing. Only a
delivered alert starts the cooldown. An undelivered one stays pending and is re-sent by the
next check and by `resend_pending` (`ftops up`, the supervisor): only the newest pending
alert of the project goes out (older ones become `superseded`: one retraining per episode),
and a sender first claims the row (`sending`) with a conditional UPDATE, so two processes
never both send; a claim older than CLAIM_STALE_S (its sender died) is pending again.

Without MLflow: the champion's reference is cached in `monitoring/reference/` with an index
(`champion.json`: the champion's version and the run of every cached version), so a check
runs from the cache when the registry does not answer (and says so in its reason).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
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
from sqlalchemy import (JSON, Boolean, Column, DateTime, Float, Integer, MetaData, String, Table, Text, exists,
                        func, inspect, or_, select, text, update)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, ProgrammingError, SQLAlchemyError

from ftops import atomic, predlog, procs
from ftops.config import Config
from ftops.errors import FtopsError

log = logging.getLogger("ftops.monitor")

EVENT = "ftops.drift.detected"
REFERENCE_DIR = "reference"
REFERENCE_FILE = "reference.parquet"
REFERENCE_INDEX = "champion.json"  # the champion's version and the run of every cached reference
TEXT, PREDICTION, CONFIDENCE, LABEL, EMBEDDING = "text", "prediction", "confidence", "label", "embedding"
DESCRIPTORS = ("text_length", "word_count", "non_letter_share", "upper_share")
CONTENT_SIGNALS = (TEXT, EMBEDDING)  # domain classifiers: ROC AUC, compared with strong_auc
TEXT_METHOD = "abs_text_content_drift"
UI_READY_TIMEOUT_S = 60.0
ANY_REFERENCE = "*"  # recent_checks: checks against any reference version
SEED = 13
PENDING, SENDING, SENT, SUPERSEDED = "pending", "sending", "sent", "superseded"  # drift_checks.event_state
REPORT_MODE = 0o644  # what open() gave before the writes became atomic (a temp file starts 0600)
CLAIM_STALE_S = 300.0  # a `sending` claim this old lost its sender: pending again

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
    Column("event_sent", Boolean, nullable=True),          # None: no alert, so no event; True: delivered
    Column("report_path", Text, nullable=True),
    Column("snapshot_id", String(64), nullable=True),
    Column("seconds", Float, nullable=True),
    Column("event_state", String(16), nullable=True),      # pending | sending | sent | superseded
    Column("event_claimed_at", DateTime(timezone=True), nullable=True),  # wall clock of a sender's claim
    Column("event_sent_at", DateTime(timezone=True), nullable=True),     # delivery: the cooldown starts here
    Column("event_attempts", Integer, nullable=True),
)
ADDED_COLUMNS = ("event_state", "event_claimed_at", "event_sent_at", "event_attempts")  # newer than the table


def checks_engine(config: Config) -> Engine:
    """The prediction-log database, with `drift_checks` created beside `predictions` (and the
    newer columns added to an older table); every wait on it is bounded by timeouts.database_s."""
    cfg = config.resolved()
    cfg.project.dir.mkdir(parents=True, exist_ok=True)  # the embedded SQLite file lives there
    url = cfg.uris.prediction_log
    try:
        eng = predlog.engine(url, timeout_s=cfg.timeouts.database_s)
        try:
            _metadata.create_all(eng)
        except (OperationalError, ProgrammingError):  # another process created it between check and create
            _metadata.create_all(eng)
        _add_columns(eng)
    except SQLAlchemyError as exc:
        raise _store_error(cfg, "opening the check store", exc) from exc
    return eng


def _add_columns(eng: Engine) -> None:
    """A `drift_checks` table from an older release lacks the delivery columns: add them (each
    nullable, only ever added, so one ALTER TABLE per column is the whole migration)."""
    present = {c["name"] for c in inspect(eng).get_columns(drift_checks.name)}
    for name in ADDED_COLUMNS:
        if name in present:
            continue
        column = drift_checks.c[name]
        try:
            with eng.begin() as conn:
                conn.execute(text(f"ALTER TABLE {drift_checks.name} ADD COLUMN {name} "
                                  f"{column.type.compile(eng.dialect)}"))
        except (OperationalError, ProgrammingError):  # another process added it first
            if name not in {c["name"] for c in inspect(eng).get_columns(drift_checks.name)}:
                raise


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for a message
        return "the prediction-log database"


def _first_line(exc: BaseException) -> str:
    return (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]


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
    event_state: str | None = None        # pending | sending | sent | superseded (None: no alert)
    event_sent_at: datetime | None = None
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
        if values.get("event_sent_at") is not None:
            values["event_sent_at"] = _utc(values["event_sent_at"])
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
    """Log the reference as `reference/reference.parquet` on the model's training run (and keep
    it in the local cache, so the monitor has it when MLflow is down); the URI."""
    from ftops import registry

    _require_columns(frame, (TEXT, PREDICTION, CONFIDENCE), "reference")
    mlflow_client = registry.client(config)
    cache = _cache_file(config, run_id)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".ftops-reference-", dir=cache.parent) as folder:
        path = Path(folder) / REFERENCE_FILE
        _to_parquet(frame, path)
        mlflow_client.log_artifact(run_id, str(path), REFERENCE_DIR)
        os.replace(path, cache)  # same folder: the cached file is whole or absent
    return f"{mlflow_client.get_run(run_id).info.artifact_uri}/{REFERENCE_DIR}/{REFERENCE_FILE}"


def save_champion_reference(config: Config, version: str, snapshot) -> str:
    """Build and log the reference of a freshly promoted version: its predictions (and a
    sample of embeddings) on the validation split of the snapshot it was judged on."""
    from ftops import decide, registry

    version_info = registry.get(config, version)
    model, tokenizer, labels = decide.load(decide.ModelRef(f"v{version}", registry.download(config, version), version))
    frame = build_reference(model, tokenizer, labels, snapshot.split("validation"), config.model.max_length,
                            embedding_sample=config.monitoring.embedding_sample)
    uri = save_reference(config, version_info.run_id, frame)
    _remember(config, version_info.version, version_info.run_id, champion=True)
    return uri


def _to_parquet(frame: pd.DataFrame, path: Path) -> None:
    out = frame.copy()
    if EMBEDDING in out:
        out[EMBEDDING] = [None if v is None else [float(x) for x in v] for v in out[EMBEDDING]]
    out.to_parquet(path, index=False)


def load_reference(config: Config, version: str | None = None) -> pd.DataFrame:
    """The reference of a registry version (default: the champion), cached in the project.
    When MLflow does not answer, the version comes from the serving route or the local index
    and the frame from the cache; `attrs["note"]` then says so."""
    cfg = config.resolved()
    try:
        found = _registry_version(cfg, version)
    except _RegistryDown as down:
        return _cached_reference(cfg, version, str(down))
    cache = _cache_file(cfg, found.run_id)
    if not cache.is_file():
        _download_reference(cfg, found, cache)
    _remember(cfg, found.version, found.run_id, champion=version is None)
    frame = pd.read_parquet(cache)
    frame.attrs["version"] = found.version
    return frame


class _RegistryDown(Exception):
    """MLflow did not answer (as opposed to answering that a version does not exist)."""


def _registry_version(config: Config, version: str | None):
    """registry.get, asked only after a health probe: a down tracking server costs one refused
    (or timeouts.mlflow_s-bounded) probe, not the client's retries with backoff."""
    from ftops import registry

    reachable, why = mlflow_reachable(config)
    if not reachable:
        raise _RegistryDown(why)
    try:
        return registry.get(config, version or registry.CHAMPION)
    except registry.RegistryError:
        reachable, why = mlflow_reachable(config)  # the client turns a dropped connection into "no version"
        if not reachable:
            raise _RegistryDown(why) from None
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to talk to the store is "down" here
        raise _RegistryDown(f"{type(exc).__name__}: {_first_line(exc)}") from exc


def mlflow_reachable(config: Config) -> tuple[bool, str]:
    """(answers, why not), from tracking.unreachable."""
    from ftops import tracking

    why = tracking.unreachable(config)
    return why is None, why or ""


def _cached_reference(config: Config, version: str | None, why: str) -> pd.DataFrame:
    """The cached reference of `version` (default: the champion as routed, else as last seen)."""
    index = _read_index(config)
    wanted = (version or _routed_champion(config) or index.get("champion") or "").removeprefix("v")
    run_id = index.get("versions", {}).get(wanted)
    cache = _cache_file(config, run_id) if run_id else None
    if cache is None or not cache.is_file():
        raise MonitorError(
            f"MLflow does not answer ({why}) and no reference of "
            f"{'version ' + wanted if wanted else 'the champion'} is cached in {_reference_dir(config)}, so "
            "there is nothing to compare traffic with. Start MLflow (`ftops up`) and check again; the "
            "reference is cached by the first check that reaches it.")
    frame = pd.read_parquet(cache)
    frame.attrs["version"] = wanted
    frame.attrs["note"] = f"MLflow unreachable ({why}): used the cached reference of v{wanted}"
    log.warning("drift check of %s: %s", config.project.name, frame.attrs["note"])
    return frame


def _routed_champion(config: Config) -> str | None:
    """The version the champion route serves (what the logged traffic comes from), if any."""
    try:
        from ftops.serve import deploy

        route = deploy.routing(config).get("champion")
    except Exception as exc:  # noqa: BLE001 - a missing or unreadable route falls back to the index
        log.debug("no champion route readable: %s", exc)
        return None
    return str(route.version) if route is not None and route.version else None


def _reference_dir(config: Config) -> Path:
    return monitoring_dir(config) / REFERENCE_DIR


def _cache_file(config: Config, run_id: str) -> Path:
    return _reference_dir(config) / f"{run_id}.parquet"


def _read_index(config: Config) -> dict:
    path = _reference_dir(config) / REFERENCE_INDEX
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _remember(config: Config, version: str, run_id: str, champion: bool) -> None:
    """Record version -> run (and the champion) in the index; a failure here costs only the
    MLflow-free fallback, so it is logged, never raised."""
    from filelock import FileLock

    folder = _reference_dir(config)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder / f".{REFERENCE_INDEX}.lock"), timeout=30):
            index = _read_index(config)
            versions = {**index.get("versions", {}), str(version): run_id}
            new = {"champion": str(version) if champion else index.get("champion"), "versions": versions}
            if new != index:
                atomic.write_text(folder / REFERENCE_INDEX, json.dumps(new, indent=2), mode=REPORT_MODE)
    except Exception as exc:  # noqa: BLE001 - the index is a cache
        log.warning("could not update the reference index in %s: %s", folder, exc)


def _download_reference(config: Config, version, target: Path) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    from ftops import tracking

    tracking.use_project(config)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".ftops-reference-", dir=target.parent) as folder:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=version.run_id, dst_path=folder,
                                                       artifact_path=f"{REFERENCE_DIR}/{REFERENCE_FILE}")
        except (MlflowException, OSError):
            raise MonitorError(
                f"Model version {version.version} (training run {version.run_id}) has no reference data "
                f"artifact {REFERENCE_DIR}/{REFERENCE_FILE}, so there is nothing to compare traffic with. "
                "Log it with ftops.monitor.save_reference(config, run_id, build_reference(...)) after "
                "training, or pass a reference frame to the check.") from None
        os.replace(path, target)  # same filesystem: whole or absent


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
    cooldown after the project's last DELIVERED alert, from its delivery (a new champion does
    not restart the clock; an alert that never reached Prefect started no retraining, so it
    starts no cooldown either)."""
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
    alerted = last_delivered(eng, project, now)
    if alerted is not None:
        until = alerted + timedelta(hours=monitoring.cooldown_hours)
        if now < until:
            return False, (f"drift in {hits} of the last {seen} checks, but the last delivered alert "
                           f"({alerted:%Y-%m-%d %H:%M} UTC) is in cooldown until {until:%Y-%m-%d %H:%M} UTC")
    return True, f"drift in {hits} of the last {seen} checks: alert"


def _delivered_at():
    """When an alert reached Prefect (rows from before delivery tracking: their check time)."""
    return func.coalesce(drift_checks.c.event_sent_at, drift_checks.c.ts)


def last_delivered(eng: Engine, project: str, now: datetime) -> datetime | None:
    """Delivery time of the project's last alert delivered at or before `now`."""
    when = _delivered_at()
    query = (select(when).where(drift_checks.c.project == project, drift_checks.c.event_sent.is_(True), when <= now)
             .order_by(when.desc()).limit(1))
    with eng.connect() as conn:
        found = conn.execute(query).scalar()
    return None if found is None else _utc(found)


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
    """One self-contained HTML page (Evidently inlines its JS) for all of a check's snapshots,
    written atomically: a full disk or a kill leaves no half page."""
    if len(snapshots) == 1:
        return atomic.write_text(path, snapshots[0].get_html_str(as_iframe=False), mode=REPORT_MODE)
    from evidently.core.metric_types import render_widgets
    from evidently.legacy.renderers.html_widgets import group_widget

    titles = ["", *["Embedding drift (sampled, PCA)"] * (len(snapshots) - 1)]
    widgets = [group_widget(title=t, widgets=s._widgets) for t, s in zip(titles, snapshots)]
    tests = [w for s in snapshots for w in s._tests_widgets]
    return atomic.write_text(path, render_widgets(widgets + tests, as_iframe=False), mode=REPORT_MODE)


disk_full = atomic.disk_full


def _no_space(folder: Path, what: str, exc: BaseException) -> MonitorError:
    free = shutil.disk_usage(folder).free if folder.exists() else 0
    return MonitorError(
        f"No space left on the device holding {folder} ({free / 2**20:.1f} MiB free): {what}. Nothing "
        f"half-written is left and the stored checks are intact; free space there (older reports: "
        f"monitoring.keep_reports; `ftops prune`) and the next check runs normally. ({_first_line(exc)})")


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
        "report": result.report_path, "checked_at": result.ts.isoformat(), "check_id": result.id,
    }


def emit_drift_event(config: Config, result: CheckResult, timeout: float | None = None) -> bool:
    """`ftops.drift.detected` on the Prefect server at uris.prefect_api; False (and a warning)
    when none answers within `timeout` (default timeouts.prefect_s), so a check never fails
    for want of an orchestrator: the alert stays pending and is re-sent."""
    api_url = config.uris.prefect_api
    timeout = config.timeouts.prefect_s if timeout is None else timeout
    if not prefect_reachable(api_url, timeout):
        log.warning("drift alert for %s NOT sent: no Prefect server answers at %s within %g s (start one with "
                    "`ftops up`); it stays pending and is re-sent by the next check or `ftops up`",
                    config.project.name, api_url, timeout)
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
    except Exception as exc:  # noqa: BLE001 - an unsent event stays pending, never fatal to the check
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


# ---------------------------------------------------------------- delivery: store, claim, send, mark


def resend_pending(config: Config, now: datetime | None = None) -> int:
    """Deliver the project's newest undelivered alert (older ones are superseded: one retraining
    per episode); how many events went out (0 or 1). Safe to call from several processes at
    once, and cheap when nothing is pending (`ftops up`, the supervisor)."""
    cfg = config.resolved()
    eng = checks_engine(cfg)
    try:
        return _deliver_pending(cfg, eng, _utc(now or datetime.now(UTC)))
    except SQLAlchemyError as exc:
        raise MonitorError(f"Could not re-send pending drift alerts: the check store ({_safe_url(cfg.uris.prediction_log)}) "
                           f"failed: {_first_line(exc)}. Nothing was sent twice; retry when it answers.") from exc
    finally:
        eng.dispose()


def pending_alerts(config: Config) -> list[CheckResult]:
    """Undelivered alerts of the project (pending, or claimed by a sender), newest first."""
    eng = checks_engine(config)
    try:
        query = (select(drift_checks).where(drift_checks.c.project == config.project.name,
                                            drift_checks.c.event_state.in_((PENDING, SENDING)))
                 .order_by(drift_checks.c.id.desc()))
        with eng.connect() as conn:
            return [CheckResult.from_row(dict(r._mapping)) for r in conn.execute(query)]
    finally:
        eng.dispose()


def _stale_before() -> datetime:
    return datetime.now(UTC) - timedelta(seconds=CLAIM_STALE_S)


def _claimable():
    """Pending, or claimed by a sender that has not finished in CLAIM_STALE_S (it died)."""
    c = drift_checks.c
    return or_(c.event_state == PENDING, (c.event_state == SENDING) & (c.event_claimed_at < _stale_before()))


def _deliver_pending(cfg: Config, eng: Engine, now: datetime) -> int:
    project = cfg.project.name
    newest = _newest_claimable(eng, project)
    if newest is None:
        return 0
    _set_state(eng, project, SUPERSEDED, drift_checks.c.id < newest["id"])
    if _delivered_within_cooldown(cfg, eng, now):  # another sender delivered this episode meanwhile
        _set_state(eng, project, SUPERSEDED, drift_checks.c.id == newest["id"])
        return 0
    claimed_at = _claim(cfg, eng, newest["id"], now)
    if claimed_at is None:
        return 0
    return int(_send_claimed(cfg, eng, newest, claimed_at, now))


def _newest_claimable(eng: Engine, project: str) -> dict | None:
    query = (select(drift_checks).where(drift_checks.c.project == project, _claimable())
             .order_by(drift_checks.c.id.desc()).limit(1))
    with eng.connect() as conn:
        row = conn.execute(query).first()
    return None if row is None else dict(row._mapping)


def _set_state(eng: Engine, project: str, state: str, which) -> int:
    """Claimable rows of the project matching `which` become `state` (a row a live sender
    holds is left alone); how many."""
    with eng.begin() as conn:
        return conn.execute(update(drift_checks).where(drift_checks.c.project == project, _claimable(), which)
                            .values(event_state=state, event_claimed_at=None)).rowcount


def _delivered_within_cooldown(cfg: Config, eng: Engine, now: datetime) -> bool:
    alerted = last_delivered(eng, cfg.project.name, now)
    return alerted is not None and now < alerted + timedelta(hours=cfg.monitoring.cooldown_hours)


def _claim(cfg: Config, eng: Engine, row_id: int, now: datetime) -> datetime | None:
    """Mark the row `sending`, only if it is still claimable, no other row of the project is
    being sent, and no alert was delivered within the cooldown: one UPDATE, so of several
    processes exactly one sees rowcount 1 (SQLite serialises writers; PostgreSQL re-checks
    the WHERE on the locked row). The claim's time, or None when another sender has it."""
    other = drift_checks.alias("other")
    busy = exists().where(other.c.project == cfg.project.name, other.c.id != row_id,
                          other.c.event_state == SENDING, other.c.event_claimed_at >= _stale_before())
    delivered_at = func.coalesce(other.c.event_sent_at, other.c.ts)
    delivered = exists().where(other.c.project == cfg.project.name, other.c.event_sent.is_(True),
                               delivered_at <= now,
                               delivered_at > now - timedelta(hours=cfg.monitoring.cooldown_hours))
    claimed_at = datetime.now(UTC)
    claim = (update(drift_checks).where(drift_checks.c.id == row_id, _claimable(), ~busy, ~delivered)
             .values(event_state=SENDING, event_claimed_at=claimed_at,
                     event_attempts=func.coalesce(drift_checks.c.event_attempts, 0) + 1))
    with eng.begin() as conn:
        return claimed_at if conn.execute(claim).rowcount == 1 else None


def _send_claimed(cfg: Config, eng: Engine, row: dict, claimed_at: datetime, now: datetime) -> bool:
    """Send a claimed alert; mark it sent (and every other pending alert of the project
    superseded: this delivery covers the episode), or pending again when it did not go out."""
    result = CheckResult.from_row(row)
    sent = False
    try:
        sent = bool(emit_drift_event(cfg, result))
    finally:
        mine = (drift_checks.c.id == row["id"]) & (drift_checks.c.event_state == SENDING) & \
            (drift_checks.c.event_claimed_at == claimed_at)
        values = ({"event_state": SENT, "event_sent": True, "event_sent_at": now} if sent
                  else {"event_state": PENDING, "event_claimed_at": None})
        with eng.begin() as conn:
            conn.execute(update(drift_checks).where(mine).values(**values))
    if sent:
        _set_state(eng, cfg.project.name, SUPERSEDED, drift_checks.c.id != row["id"])
        log.warning("drift alert of %s (check #%s, %s) delivered to Prefect", cfg.project.name, row["id"],
                    f"{result.ts:%Y-%m-%d %H:%M} UTC")
    return sent


# ---------------------------------------------------------------- the check


def check(config: Config, current: pd.DataFrame | None = None, reference: pd.DataFrame | None = None,
          now: datetime | None = None, embed: Embedder | None = None) -> CheckResult:
    """Compare the current window with the reference, decide, store, and alert when it holds.

    `current` defaults to the prediction log's window, `reference` to the champion's; `embed`
    (texts -> vectors, see `embedder`) adds embedding drift when the reference holds vectors.
    Order: report (atomic) -> stored row -> event -> row marked sent; a pending alert of an
    earlier check is re-sent here whatever this check decides.
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
            current = _guard_store(cfg, "reading the current window", lambda: current_window(cfg, eng, now))
        if len(current) and LABEL not in current.columns and "feedback" in current.columns:
            current = current.rename(columns={"feedback": LABEL})
        result, snapshots = _guard_store(cfg, "reading the check history",
                                         lambda: _evaluate(cfg, eng, current, reference, now, embed))
        _write_report(cfg, result, snapshots)
        result.seconds = time.perf_counter() - started
        result.id = _store(cfg, eng, result)
        _deliver(cfg, eng, result, now)
        _add_to_workspace(cfg, eng, result, snapshots, _labels(current, reference) if snapshots else [])
    finally:
        eng.dispose()
    return result


def _evaluate(cfg: Config, eng: Engine, current: pd.DataFrame, reference: pd.DataFrame, now: datetime,
              embed: Embedder | None) -> tuple[CheckResult, list]:
    """The decision and the snapshots behind it; nothing is written here."""
    note = reference.attrs.get("note")
    base = {"ts": now, "project": cfg.project.name, "window_size": len(current), "reference_size": len(reference),
            "feedback_rows": feedback_count(current), "reference_version": reference.attrs.get("version")}
    if len(current) < cfg.monitoring.min_window:
        return CheckResult(decision="too_small", alert=False, **base,
                           reason=_with_note(f"{len(current)} rows in the window, fewer than monitoring.min_window="
                                             f"{cfg.monitoring.min_window}; not judged", note)), []
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
    out = CheckResult(decision="drift" if drift else "no_drift", alert=alert,
                      reason=_with_note(f"{why}; {reason}", note), signals=signals, **summary, **base)
    if alert:
        out.event_sent, out.event_state = False, PENDING
    return out, snapshots


def _with_note(reason: str, note: str | None) -> str:
    return f"{reason} [{note}]" if note else reason


def _labels(current: pd.DataFrame, reference: pd.DataFrame) -> list[str]:
    values = set(reference[PREDICTION].astype(str)) | set(current[PREDICTION].astype(str))
    if LABEL in reference.columns:
        values |= set(reference[LABEL].dropna().astype(str))
    return sorted(values)


def _write_report(cfg: Config, result: CheckResult, snapshots: list) -> None:
    """The HTML report (atomic); a full disk stops the check here, before anything is stored."""
    if not snapshots:
        return
    folder = monitoring_dir(cfg) / "reports"
    try:
        result.report_path = str(write_html(snapshots, report_path(cfg, result.ts)))
        prune_reports(cfg)
    except OSError as exc:
        if disk_full(exc):
            raise _no_space(folder, "the drift report could not be written, so the check was not stored "
                                    "and no event was sent", exc) from exc
        raise


def _guard_store(cfg: Config, doing: str, work: Callable[[], Any]) -> Any:
    """Run `work` (which reads or writes the check store); a database failure becomes one clear
    MonitorError saying that nothing was stored and no event was sent."""
    try:
        return work()
    except SQLAlchemyError as exc:
        raise _store_error(cfg, doing, exc) from exc


def _store_error(cfg: Config, doing: str, exc: SQLAlchemyError) -> MonitorError:
    url = cfg.uris.prediction_log
    folder = _sqlite_folder(url)
    if disk_full(exc) or (folder is not None and _low_space(folder)):  # SQLite says "disk I/O error" at times
        return _no_space(folder or monitoring_dir(cfg), f"the check store {_safe_url(url)} failed {doing}, so the "
                                                        "check was not stored and no event was sent", exc)
    return MonitorError(
        f"The drift check store {_safe_url(url)} failed {doing} ({_first_line(exc)}; waited at most "
        f"timeouts.database_s={cfg.timeouts.database_s:g} s): the check was not stored, no event was sent, and "
        "the next check decides again from the stored history. Check that the database is up and not locked "
        "by another process.")


def _sqlite_folder(url: str) -> Path | None:
    """The folder of an SQLite database file (None for a server or an in-memory database)."""
    from sqlalchemy.engine import make_url

    database = make_url(url).database if url.startswith("sqlite") else None
    return Path(database).parent if database and database != ":memory:" else None


def _low_space(folder: Path, below: int = 1 << 20) -> bool:
    try:
        return shutil.disk_usage(folder).free < below
    except OSError:
        return False


def _store(cfg: Config, eng: Engine, result: CheckResult) -> int:
    """Insert the check (an alert as pending); on failure the report of the unstored check is
    removed too, so every report on disk belongs to a stored check."""
    row = result.row()
    row["ts"] = result.ts
    row["scores"] = json.loads(json.dumps(row["scores"], default=float))

    def insert() -> int:
        with eng.begin() as conn:
            return int(conn.execute(drift_checks.insert().values(**row)).inserted_primary_key[0])

    try:
        return _guard_store(cfg, "storing the check", insert)
    except MonitorError:
        if result.report_path:
            Path(result.report_path).unlink(missing_ok=True)
            result.report_path = None
        raise


def _deliver(cfg: Config, eng: Engine, result: CheckResult, now: datetime) -> None:
    """Send this check's alert, or an earlier pending one (re-sent whatever this check decided);
    a store failure here leaves the alert pending (stored, re-sent later), never raised."""
    if result.alert:
        top = ", ".join(f"{s.name}={s.score:.3g}" for s in result.top(3))
        log.warning("DRIFT ALERT %s: %s; top signals %s; report %s", cfg.project.name, result.reason, top,
                    result.report_path)
    try:
        _deliver_pending(cfg, eng, now)
        if result.alert:
            _refresh_event(eng, result)
    except SQLAlchemyError as exc:
        log.warning("drift alert delivery of %s interrupted by the check store (%s): the alert stays pending "
                    "and is re-sent by the next check or resend_pending", cfg.project.name, _first_line(exc))


def _refresh_event(eng: Engine, result: CheckResult) -> None:
    columns = (drift_checks.c.event_sent, drift_checks.c.event_state, drift_checks.c.event_sent_at)
    with eng.connect() as conn:
        row = conn.execute(select(*columns).where(drift_checks.c.id == result.id)).first()
    result.event_sent, result.event_state = bool(row.event_sent), row.event_state
    result.event_sent_at = _utc(row.event_sent_at) if row.event_sent_at else None


def _add_to_workspace(cfg: Config, eng: Engine, result: CheckResult, snapshots: list, labels: list[str]) -> None:
    """Dashboard snapshots after the decision is safe; a failing dashboard must not lose the
    check, so failures are logged, not raised."""
    if not snapshots:
        return
    try:
        result.snapshot_id = add_snapshots(cfg, snapshots, labels)
        with eng.begin() as conn:
            conn.execute(update(drift_checks).where(drift_checks.c.id == result.id)
                         .values(snapshot_id=result.snapshot_id))
    except Exception as exc:  # noqa: BLE001 - the decision record matters more than the dashboard
        log.warning("could not add the check to the Evidently workspace %s: %s", cfg.uris.evidently_workspace, exc)


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



