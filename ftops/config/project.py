"""Where a project lives and how its services are reached: its folder, the service URIs,
credentials, timeouts, self-healing and what is kept of what grows with use."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ftops.config.section import Section


class ProjectSection(Section):
    name: str = Field("tweets-sentiment", pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    dir: Path = Path(".ftops")


class SecuritySection(Section):
    """Where credentials come from. The YAML names files, never a secret itself; the same
    values can come from the environment (FTOPS_GATEWAY_TOKENS, FTOPS_PREFECT_AUTH)."""

    tokens_file: Path | None = Field(None, description=(
        "file with the gateway's write tokens, one 'name token' per line; also $FTOPS_GATEWAY_TOKENS_FILE"))
    prefect_auth_file: Path | None = Field(None, description=(
        "file holding the Prefect server's 'user:password' auth string; also $FTOPS_PREFECT_AUTH"))


class RetentionSection(Section):
    """What ftops keeps of what grows with use; applied after every drift check (the
    monitor_drift flow) and by `ftops prune`."""

    prediction_days: int = Field(90, ge=1, description=(
        "prediction-log rows older than this are archived to Parquet under <project dir>/archive "
        "and deleted from the log (archived rows no longer feed monitoring or retraining)"))
    archive_chunk_rows: int = Field(10000, ge=100, description="rows read, archived and deleted at a time")
    log_max_mb: float = Field(20, gt=0, description="a service log larger than this is rotated (<name>.log.1 newest)")
    log_keep: int = Field(3, ge=1, description="rotated files kept per service log")
    downloads_keep: int = Field(3, ge=0, description=(
        "registry download folders (<project dir>/downloads) kept besides those of the aliased versions"))
    evidently_snapshots: int = Field(2000, ge=1, description=(
        "newest Evidently workspace snapshots kept (a check adds one or two; 2000 = about 3 weeks at 15 min)"))
    keep_checkpoints: bool = Field(False, description=(
        "keep the Trainer checkpoints of finished candidates (false: deleted; the trained model stays)"))


class TimeoutsSection(Section):
    """How long ftops waits on each service before it gives up on a call; a service that is
    down then costs a bounded wait and a clear error, never a hung loop. Inference calls
    have their own limit (serving.request_timeout_s)."""

    triton_control_s: float = Field(120.0, gt=0, description="loading or unloading a model in Triton")
    triton_probe_s: float = Field(5.0, gt=0, description="Triton readiness and health probes")
    mlflow_s: float = Field(30.0, gt=0, description=(
        "one MLflow tracking / registry request (retries included: a down server fails fast)"))
    prefect_s: float = Field(10.0, gt=0, description="one Prefect API call (health probe, event delivery)")
    database_s: float = Field(10.0, gt=0, description="connecting to (or waiting on a lock of) a database")
    lock_s: float = Field(600.0, gt=0, description=(
        "waiting for the project's promotion lock held by another deploy / rollback / promotion"))


class SupervisorSection(Section):
    """The embedded set-up's self-healing: a loop (started by `ftops up`) that restarts a
    service that died and reloads Triton's routes. Compose and Kubernetes use their own
    restart policies instead (infra/)."""

    enabled: bool = True
    interval_s: float = Field(2.0, gt=0, description="how often every service is checked")
    max_restarts: int = Field(5, ge=1, description="restarts of one service within window_s before it is left down")
    window_s: float = Field(600.0, gt=0, description="the window max_restarts counts in")
    unready_s: float = Field(30.0, gt=0, description=(
        "a running Triton that is not ready (and neither is the champion) this long is restarted"))


class UrisSection(Section):
    """Empty values resolve to embedded defaults under project.dir (see Config.resolved)."""

    mlflow_tracking: str | None = None
    mlflow_ui: str = "http://127.0.0.1:5000"
    prefect_api: str = "http://127.0.0.1:4200/api"
    prediction_log: str | None = None
    evidently_workspace: str | None = None
    triton: str | None = Field(None, description=(
        "HTTP URL of a Triton that ftops does not start (team: http://triton:8000); its gRPC "
        "and metrics ports are serving.grpc_port / metrics_port. Empty: ftops runs tritonserver"))
    triton_repository: str | None = Field(None, description=(
        "model repository folder that Triton reads too (a shared volume); empty: <project dir>/triton/repository"))
    tuning: str | None = Field(None, description=(
        "Optuna study storage (a database URL; team: postgresql+psycopg://...); empty: sqlite:///<project dir>/tuning.db"))
