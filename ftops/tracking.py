"""MLflow tracking: one experiment per project, lineage tags on every run.

Tag names are the one vocabulary for lineage everywhere (runs, model versions, logs).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from ftops.config import Config

TAG_SNAPSHOT = "ftops.data_snapshot"
TAG_SNAPSHOT_SHA = "ftops.data_sha256"
TAG_CONFIG_SHA = "ftops.config_sha256"
TAG_GIT_SHA = "ftops.git_sha"
TAG_PARENT_MODEL = "ftops.parent_model_version"
TAG_CANDIDATE = "ftops.candidate"
TAG_STRATEGY = "ftops.strategy"
TAG_ROUND = "ftops.round"


def use_project(config: Config) -> str:
    """Point MLflow at the project's tracking URI; return the experiment id.

    A database store (the embedded sqlite default) gets an explicit artifact location under
    project.dir, else artifacts land in ./mlruns of whatever the current directory is. A
    tracking server (http/https, the team set-up) keeps its own artifact root, so artifacts
    go through the server to its object store (`mlflow server --artifacts-destination`).
    """
    import mlflow

    cfg = config.resolved()
    cfg.project.dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(cfg.uris.mlflow_tracking)
    experiment = mlflow.get_experiment_by_name(cfg.project.name)
    if experiment is None:
        served = cfg.uris.mlflow_tracking.startswith(("http://", "https://"))
        artifacts = None if served else (cfg.project.dir / "mlartifacts").as_uri()
        experiment_id = mlflow.create_experiment(cfg.project.name, artifact_location=artifacts)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def config_sha256(config: Config) -> str:
    return hashlib.sha256(json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def git_sha() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def lineage_tags(config: Config, snapshot, parent_model_version: str | None = None) -> dict[str, str]:
    manifest = json.loads((snapshot.path / "manifest.json").read_text())
    return {
        TAG_SNAPSHOT: snapshot.id,
        TAG_SNAPSHOT_SHA: manifest["sha256"],
        TAG_CONFIG_SHA: config_sha256(config),
        TAG_GIT_SHA: git_sha(),
        TAG_PARENT_MODEL: parent_model_version or "none",
    }


def flat_params(prefix: str, values: dict) -> dict[str, str]:
    """Nested settings as MLflow params (`lora.rank`), values cut to MLflow's 6000 chars."""
    out = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.update(flat_params(name, value))
        else:
            out[name] = str(value)[:6000]
    return out
