"""The champion's reference: its predictions on the validation split it was judged on (and
pooled embeddings of a sample), logged as an MLflow artifact of its training run.

Without MLflow: the reference is also cached in `monitoring/reference/` with an index
(`champion.json`: the champion's version and the run of every cached version), so a check
runs from the cache when the registry does not answer (and says so in its reason).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from ftops import atomic, names
from ftops.artifacts.batches import batched_forward
from ftops.config import Config
from ftops.monitor.frames import predictions_frame, require_columns
from ftops.monitor.results import (CONFIDENCE, EMBEDDING, LABEL, PREDICTION, REPORT_MODE, SEED, TEXT, Embedder,
                                   MonitorError, first_line, monitoring_dir)

log = logging.getLogger("ftops.monitor")

REFERENCE_DIR = "reference"
REFERENCE_FILE = "reference.parquet"
REFERENCE_INDEX = "champion.json"  # the champion's version and the run of every cached reference


# ---------------------------------------------------------------- building and saving


def embedder(model, tokenizer, max_length: int, batch_size: int = 64) -> Embedder:
    """texts -> mean-pooled last hidden states of a sequence classifier (masked, fp32); batches
    sorted by length, so little compute goes to padding."""

    def embed(texts: list[str]) -> np.ndarray:
        import torch

        def pooled(chunk: list[str]) -> np.ndarray:
            batch = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            hidden = model(**batch, output_hidden_states=True).hidden_states[-1].float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            return ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy()

        with torch.inference_mode():
            return batched_forward(texts, batch_size, pooled)

    return embed


def build_reference(model, tokenizer, labels: list[str], frame: pd.DataFrame, max_length: int,
                    embedding_sample: int = 200, seed: int = SEED) -> pd.DataFrame:
    """The champion's predictions on its validation split, with pooled embeddings for a
    sample of rows (embedding drift is checked on a sample, so only a sample is kept). A
    TF-IDF champion (tokenizer None) has no embeddings: its drift is read from the rest."""
    from ftops import decide

    pred = decide.predict(model, tokenizer, labels, frame, max_length)
    reference = predictions_frame(frame[TEXT], pred.probs, labels, frame[LABEL])
    if tokenizer is None:
        return reference.reset_index(drop=True)
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

    require_columns(frame, (TEXT, PREDICTION, CONFIDENCE), "reference")
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


# ---------------------------------------------------------------- loading, with or without MLflow


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
        return registry.get(config, version or names.CHAMPION)
    except registry.RegistryError:
        reachable, why = mlflow_reachable(config)  # the client turns a dropped connection into "no version"
        if not reachable:
            raise _RegistryDown(why) from None
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to talk to the store is "down" here
        raise _RegistryDown(f"{type(exc).__name__}: {first_line(exc)}") from exc


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

        route = deploy.routing(config).get(names.CHAMPION)
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
