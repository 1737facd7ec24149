"""MLflow tracking: one experiment per project, lineage tags on every run.

Tag names come from ftops.names, the one vocabulary for lineage everywhere (runs, model
versions, logs).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import urllib.request
from pathlib import Path

from ftops.config import Config

from ftops.names import (TAG_CANDIDATE, TAG_CONFIG_SHA, TAG_GIT_SHA, TAG_PARENT_MODEL,  # noqa: F401
                         TAG_ROUND, TAG_SNAPSHOT, TAG_SNAPSHOT_SHA, TAG_STRATEGY)


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
    os.environ.update(http_limits(cfg.timeouts.mlflow_s))
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


RETRIES, BACKOFF_S = 2, 1  # urllib3: no sleep before the first retry, 2 s before the second


def http_limits(seconds: float) -> dict[str, str]:
    """MLflow's HTTP settings (read from the environment at every request) for a request,
    retries and back-off included, to give up within `seconds`: by default it retries 7
    times with exponential back-off on a 120 s limit per try, which is many minutes of
    hanging on a tracking server that is down. The embedded sqlite store has no HTTP."""
    retries = RETRIES if seconds >= 15 else 0  # below that a retry would cut each try too short
    sleeps = sum(BACKOFF_S * 2 ** (n - 1) for n in range(2, retries + 1))
    per_try = max(1, int((seconds - sleeps) // (retries + 1)))
    return {"MLFLOW_HTTP_REQUEST_TIMEOUT": str(per_try), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(BACKOFF_S), "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
            "MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER": "false"}


def unreachable(config: Config) -> str | None:
    """Why the tracking server does not answer GET /health within timeouts.mlflow_s (None:
    it answers). No connection, a timeout or a 5xx is down; a 4xx is an answer, left to the
    call that follows to report. An embedded store (sqlite, a folder) has no server and
    always answers. The probe's URL carries no credentials, so neither does the reason."""
    import urllib.error
    from urllib.parse import urlsplit

    cfg = config.resolved()
    uri = cfg.uris.mlflow_tracking
    if not uri.startswith(("http://", "https://")):
        return None
    parts = urlsplit(uri)
    base = f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path.rstrip('/')}"
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=cfg.timeouts.mlflow_s):
            return None
    except urllib.error.HTTPError as exc:
        return None if exc.code < 500 else f"the MLflow tracking server at {base} answers {exc.code} {exc.reason}"
    except OSError as exc:
        return f"no MLflow tracking server answers at {base} ({getattr(exc, 'reason', exc)})"


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
