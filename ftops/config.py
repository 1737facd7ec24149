"""One typed config per project, loaded from YAML with `FTOPS_...` environment overrides.

Every section forbids unknown keys, so a typo is an error rather than a silently ignored
setting. URIs left empty resolve to the embedded defaults under `project.dir`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ftops.errors import ConfigError

ENV_PREFIX = "FTOPS_"
ENV_NESTING = "__"
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "ftops.yaml"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ProjectSection(Section):
    name: str = Field("tweets-sentiment", pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    dir: Path = Path(".ftops")


class AugmentSection(Section):
    """EDA-style augmentation of the train split (Wei & Zou 2019), without WordNet."""

    enabled: bool = False
    copies: int = Field(1, ge=1, le=8)
    swap: float = Field(0.1, ge=0, le=0.5)
    delete: float = Field(0.1, ge=0, le=0.5)
    insert: float = Field(0.1, ge=0, le=0.5)


class DataSection(Section):
    source: str = Field("builtin:tweets?domain=airline", description=(
        "a file (CSV, TSV, JSONL, JSON records, Parquet) or builtin:<corpus>; a relative path "
        "in a YAML file is read from that file's folder"))
    text_column: str = "text"
    label_column: str = "label"
    labels: list[str] | None = None
    encoding: str = "utf-8"
    on_invalid: Literal["error", "drop"] = "error"
    min_rows_per_class: int = Field(10, ge=1)
    absent_labels: Literal["error", "allow"] = Field("error", description=(
        "a data.labels label with no rows: error (it counts as 0 rows per class), or allow "
        "(the model keeps the label and learns nothing of it)"))
    min_chars: int = Field(1, ge=1)
    max_chars: int = Field(2000, ge=1)
    dedup: Literal["none", "exact", "normalized"] = "normalized"
    max_rows: int | None = Field(None, ge=10)
    validation_size: float = Field(0.15, gt=0, lt=0.5)
    test_size: float = Field(0.15, gt=0, lt=0.5)
    seed: int = 13
    augment: AugmentSection = AugmentSection()

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        import codecs

        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError("unknown text encoding; use e.g. utf-8, latin-1, cp1252") from None
        return value

    @model_validator(mode="after")
    def _sizes_leave_training_rows(self) -> DataSection:
        if self.validation_size + self.test_size >= 0.6:
            raise ValueError(
                f"validation_size + test_size = {self.validation_size + self.test_size:.2f} "
                "leaves too little to train on; keep the sum below 0.6"
            )
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) is above max_chars ({self.max_chars})")
        return self


class ModelSection(Section):
    name: str = "minilm-l6"
    max_length: int = Field(128, ge=8, le=4096)


class DistillationSection(Section):
    """Learn from the champion's soft labels too: (1-alpha) CE + alpha T^2 KL."""

    temperature: float = Field(2.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1)


class EwcSection(Section):
    """Elastic weight consolidation: penalise moving weights the old task relied on."""

    strength: float = Field(100.0, gt=0, description="lambda of the quadratic penalty")
    samples: int = Field(256, ge=8, description="old training rows used for the Fisher estimate")


class AdaptationSection(Section):
    """Unsupervised domain adaptation: the encoder also learns from UNLABELLED texts of the
    target domain (e.g. the traffic that drifted), before any of them is labelled."""

    method: Literal["dann", "mmd", "kl"] = Field("dann", description=(
        "dann: domain classifier behind gradient reversal; mmd / kl: align feature statistics"))
    target: str = Field("traffic", description=(
        "traffic: the prediction log's latest rows; else a data source spec whose labels are ignored"))
    max_target_rows: int = Field(2000, ge=10)
    weight: float = Field(1.0, gt=0, description="dann: largest reversal weight; mmd / kl: penalty weight")
    schedule: Literal["ganin", "linear", "constant"] = Field(
        "ganin", description="how the weight grows with training progress (ganin: 2/(1+e^-10p) - 1)")
    domain_hidden: int = Field(256, ge=8, description="hidden units of the DANN domain classifier")


class TaskSection(Section):
    """An auxiliary task: one more head on the shared encoder, trained on another column."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_]*$")
    column: str = Field(description="snapshot column holding this task's labels (e.g. domain)")
    weight: float = Field(0.5, gt=0, description="loss weight; the primary task's is 1")


class CandidateSection(Section):
    """One fine-tuning candidate; `params` holds the strategy's own settings."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    strategy: str = "full"
    learning_rate: float = Field(1e-4, gt=0, description="1e-4 beat 5e-5 for MiniLM at batch 32 (bench/train.py)")
    epochs: float = Field(2, gt=0)
    batch_size: int = Field(32, ge=1, description="global batch: split over the processes under DDP")
    gradient_accumulation: int = Field(1, ge=1)
    weight_decay: float = Field(0.01, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weight: Literal["none", "balanced"] = Field("none", description=(
        "balanced: the training cross-entropy weighs each class by n / (classes x its rows), "
        "sklearn's compute_class_weight on the training labels (the validation loss stays unweighted)"))
    warmup_share: float = Field(0.06, ge=0, lt=1)
    scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "linear"
    early_stopping_patience: int = Field(2, ge=0, description="evaluations without gain; 0 = off")
    evals_per_epoch: int = Field(2, ge=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = False
    group_by_length: bool = True
    max_steps: int | None = Field(None, ge=1, description="cap on optimizer steps (quick runs)")
    seed: int = 13
    distillation: DistillationSection | None = None
    ewc: EwcSection | None = None
    rehearsal_share: float = Field(0.0, ge=0, lt=1, description="share of old data mixed into training")
    init: Literal["base", "champion"] = Field(
        "base", description="start from the pretrained model, or (when retraining) from the champion's weights")
    adaptation: AdaptationSection | None = None
    tasks: list[TaskSection] = Field([], description="auxiliary heads (multi-task); the primary task is `label`")
    params: dict[str, Any] = {}

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, value: list[TaskSection]) -> list[TaskSection]:
        names = [t.name for t in value]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique; got {names}")
        return value


class TrainingSection(Section):
    """How training runs: one process, or data-parallel (DDP) through torchrun."""

    nproc: int = Field(1, ge=1, description="processes, one per device; >1 launches torchrun (DDP)")
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="auto: nccl on GPUs, gloo on CPU")


class DimSection(Section):
    """One dimension of a search space: a range (low, high, log) or a list of choices."""

    low: int | float | None = None
    high: int | float | None = None
    log: bool | None = Field(None, description="sample on a log scale (low must be > 0); empty: the default's")
    choices: list[str | int | float | bool] | None = None

    @model_validator(mode="after")
    def _range_or_choices(self) -> DimSection:
        ranged = self.low is not None or self.high is not None or self.log is not None
        if self.choices is not None and ranged:
            raise ValueError("give either low / high / log or choices, not both")
        if self.choices is not None and not self.choices:
            raise ValueError("choices is empty; list at least one value")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        if self.log and self.low is not None and self.low <= 0:
            raise ValueError(f"log needs low > 0, got low = {self.low}")
        return self


class PrunerSection(Section):
    """Stops a trial early when its validation macro-F1 falls behind the earlier trials'."""

    kind: Literal["median", "none"] = Field("median", description=(
        "median: stop a trial whose val macro-F1 at an evaluation is below the median of the earlier "
        "trials' at the same evaluation (Optuna's MedianPruner); none: every trial runs to its end"))
    startup_trials: int = Field(5, ge=0, description="trials that run to their end before any is pruned")
    warmup_evals: int = Field(1, ge=0, description="evaluations of each trial before it may be pruned")


class TuningSection(Section):
    """Hyperparameter search per candidate (`ftops tune`, Optuna): trials, a time budget,
    pruning, and the best settings written back for training (see docs/tuning.md)."""

    enabled: bool = Field(False, description=(
        "the lifecycle's optional tuning step; training uses the tuned settings (<project dir>/tuning/<candidate>.json)"))
    trials: int = Field(20, ge=1, description="trials per candidate and call; the budget ends at trials or minutes, whichever first")
    minutes: float = Field(30, gt=0, description="wall-clock budget per candidate and call")
    on_retrain: Literal["reuse", "search"] = Field("reuse", description=(
        "a retraining lifecycle: reuse: train with the settings tuned before and search only candidates "
        "without any; search: a new study on the retraining data for every candidate"))
    pruner: PrunerSection = PrunerSection()
    sampler_seed: int | None = Field(13, description="seed of the TPE sampler; empty: a fresh seed each call")
    space: dict[str, dict[str, DimSection]] = Field({}, description=(
        "per candidate name, per parameter: {low, high, log} or {choices: [...]}, replacing the "
        "default range of that candidate-level or strategy parameter (or adding one)"))
    fixed: dict[str, dict[str, Any]] = Field({}, description=(
        "per candidate name, parameter values held fixed: taken out of the search, used in every trial"))


class GatesSection(Section):
    min_effect: float = Field(0.0, ge=0, description="macro-F1 gain a challenger must show")
    cheaper_share: float = Field(0.2, gt=0, le=1, description=(
        "a challenger this much faster than the champion (batch-1 p50) that the paired test cannot tell "
        "apart from it is promoted for its cost (non-inferior within noninferiority_margin)"))
    noninferiority_margin: float = Field(0.01, ge=0, le=1, description=(
        "macro-F1 a cheaper challenger may lose at most: the lower end of the paired bootstrap CI must be above -margin"))
    alpha: float = Field(0.05, gt=0, lt=1)
    slice_tolerance: float = Field(0.02, ge=0, le=1)
    parity_atol: float = Field(1e-4, gt=0)
    p99_ms: float = Field(100.0, gt=0)
    parity_min_agreement: float = Field(0.98, gt=0, le=1, description=(
        "label agreement with PyTorch a quantised / reduced-precision export variant needs"))
    max_f1_loss: float = Field(0.005, ge=0, le=1, description=(
        "macro-F1 an export variant may lose vs PyTorch on the test split (0.005 = 0.5 pt)"))
    batch_label_agreement: float = Field(1.0, gt=0, le=1, description=(
        "labels of each text alone vs inside one mixed-length batch; below it = unbatched_only"))
    batch_prob_atol: float = Field(1e-3, gt=0, description=(
        "largest probability change of a text alone vs inside a batch; above it = unbatched_only"))
    promotion: Literal["direct", "online_ab", "shadow"] = Field("direct", description=(
        "after the offline A/B: direct (deploy behind the serving gates), online_ab (stage it for a "
        "live A/B split, `ftops ab decide` promotes) or shadow (stage it for a shadow copy of traffic)"))
    online_min_feedback: int = Field(200, ge=1, description=(
        "feedback rows each arm of an online A/B or shadow experiment needs before `ftops ab decide` decides"))


class ServingSection(Section):
    """Triton and the gateway. Ports 0 mean: pick free ones at start (tests, parallel runs)."""

    runtime: Literal["python_onnxruntime", "onnxruntime_onnx"] = "python_onnxruntime"
    host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=0, le=65535)
    grpc_port: int = Field(8001, ge=0, le=65535)
    metrics_port: int = Field(8002, ge=0, le=65535)
    gateway_port: int = Field(8080, ge=0, le=65535)
    protocol: Literal["grpc", "http"] = "grpc"
    instances: int | None = Field(None, ge=1, description="classifier instances; default cores // threads")
    threads: int | None = Field(None, ge=1, description="onnxruntime threads per instance; default 1")
    batching: bool = True
    max_queue_delay_us: int = Field(500, ge=0)
    bucket_size: int = Field(8, ge=1, description="texts per length-sorted bucket inside a batch")
    max_batch_size: int = Field(64, ge=1)
    max_text_bytes: int = Field(65536, ge=1)
    request_timeout_s: float = Field(30.0, gt=0)
    load_concurrency: int = Field(4, ge=1)
    load_requests: int = Field(1500, ge=10)
    load_warmup: int = Field(100, ge=0)
    max_error_rate: float = Field(0.0, ge=0, le=1)
    ready_timeout_s: float = Field(60.0, gt=0)
    # The gateway (ftops.serve.gateway): traffic policy, request limits, prediction log.
    traffic: Literal["champion", "ab", "shadow"] = Field(
        "champion", description="champion: all to the champion; ab: ab_share to the challenger; "
        "shadow: the champion answers and the challenger gets a copy")
    ab_share: float = Field(0.1, ge=0, le=1, description="share of users (or requests) sent to the challenger")
    max_texts_per_request: int = Field(64, ge=1, description="texts in one /predict call")
    keep_text: bool = Field(True, description="log the text itself; False keeps only its sha256")
    log_buffer_rows: int = Field(10000, ge=1, description="log rows held in memory; beyond, rows are dropped and counted")
    log_batch_rows: int = Field(200, ge=1, description="rows per prediction-log write")
    log_flush_ms: int = Field(200, ge=1, description="longest wait before buffered rows are written")
    shadow_pending: int = Field(256, ge=1, description="shadow copies waiting; beyond, copies are dropped and counted")
    route_refresh_s: float = Field(0.5, ge=0, description="how stale the gateway's view of routing.json may be")


class MonitoringSection(Section):
    window_size: int = Field(500, ge=10)
    min_window: int = Field(200, ge=10)
    drift_share: float = Field(0.5, gt=0, le=1)
    text_auc_threshold: float = Field(0.55, gt=0.5, lt=1)
    persistence_windows: int = Field(3, ge=1)
    persistence_hits: int = Field(2, ge=1)
    cooldown_hours: float = Field(24, ge=0)
    ui_port: int = Field(8085, ge=1, le=65535)
    window_hours: float | None = Field(None, gt=0, description="window = the last H hours instead of the last window_size rows")
    strong_auc: float = Field(0.75, gt=0.5, le=1, description="a text / embedding domain-classifier ROC AUC this high is drift on its own")
    min_feedback: int = Field(30, ge=1, description="labelled rows a window needs for label drift and live quality")
    embedding_sample: int = Field(200, ge=20, description="rows a side for embedding drift")
    embedding_dims: int = Field(10, ge=2, description="PCA components embeddings are reduced to")
    keep_reports: int = Field(100, ge=1, description="newest HTML reports kept (each is ~4 MB, Evidently inlines its JS)")

    @model_validator(mode="after")
    def _hits_fit_windows(self) -> MonitoringSection:
        if self.persistence_hits > self.persistence_windows:
            raise ValueError("persistence_hits cannot exceed persistence_windows")
        if self.min_window > self.window_size:
            raise ValueError("min_window cannot exceed window_size")
        if self.strong_auc < self.text_auc_threshold:
            raise ValueError("strong_auc cannot be below text_auc_threshold")
        return self


class SchedulesSection(Section):
    retrain_cron: str = "0 3 1 1,4,7,10 *"
    monitor_interval_minutes: int = Field(15, ge=1)
    timezone: str = "UTC"

    @field_validator("retrain_cron")
    @classmethod
    def _five_fields(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError("a cron expression has 5 fields: minute hour day month weekday")
        return value


class FeedbackSection(Section):
    """What delayed labels may do to the next model: they train it, but never decide the gate."""

    holdout_share: float = Field(0.2, ge=0, lt=1, description=(
        "share of feedback rows (chosen by a hash of the request id, never by the caller) held out "
        "as the A/B gate's test rows; training never sees them"))
    max_sender_share: float = Field(0.005, gt=0, le=1, description=(
        "largest share of a retraining set that one sender's labels may make up; beyond it the "
        "sender's newest rows are left out and counted"))
    per_minute: int = Field(600, ge=1, description="feedback requests one credential may send per minute (429 beyond)")


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


class Config(Section):
    project: ProjectSection = ProjectSection()
    data: DataSection = DataSection()
    model: ModelSection = ModelSection()
    candidates: list[CandidateSection] = [
        CandidateSection(name="lora", strategy="lora"),
        CandidateSection(name="full", strategy="full"),
    ]
    training: TrainingSection = TrainingSection()
    tuning: TuningSection = TuningSection()
    gates: GatesSection = GatesSection()
    serving: ServingSection = ServingSection()
    monitoring: MonitoringSection = MonitoringSection()
    schedules: SchedulesSection = SchedulesSection()
    feedback: FeedbackSection = FeedbackSection()
    security: SecuritySection = SecuritySection()
    retention: RetentionSection = RetentionSection()
    timeouts: TimeoutsSection = TimeoutsSection()
    supervisor: SupervisorSection = SupervisorSection()
    uris: UrisSection = UrisSection()

    @field_validator("candidates")
    @classmethod
    def _unique_names(cls, value: list[CandidateSection]) -> list[CandidateSection]:
        names = [c.name for c in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"candidate names must be unique; repeated: {', '.join(duplicates)}")
        return value

    def resolved(self) -> Config:
        """A copy with project.dir absolute and every empty URI set to its embedded default."""
        out = self.model_copy(deep=True)
        root = out.project.dir.expanduser().resolve()
        out.project.dir = root
        uris = out.uris
        uris.mlflow_tracking = uris.mlflow_tracking or f"sqlite:///{root / 'mlflow.db'}"
        uris.prediction_log = uris.prediction_log or f"sqlite:///{root / 'predictions.db'}"
        uris.evidently_workspace = uris.evidently_workspace or str(root / "evidently")
        uris.tuning = uris.tuning or f"sqlite:///{root / 'tuning.db'}"
        return out


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None,
                overrides: dict[str, Any] | None = None, flags: dict[str, str] | None = None) -> Config:
    """Read YAML (default: $FTOPS_CONFIG, else deploy/ftops.yaml), apply `FTOPS_` env
    overrides, then `overrides` (dotted keys, e.g. from CLI flags), and validate.

    `flags` names the option each override came from ({"serving.gateway_port": "--port"}),
    so an error points at what the user typed; an override without one is named as such.
    """
    env = dict(os.environ if env is None else env)
    if path is None:
        path = env.get(f"{ENV_PREFIX}CONFIG") or DEFAULT_CONFIG
    path = Path(path)
    read = not (path == DEFAULT_CONFIG and not path.exists())
    raw = _read_yaml(path) if read else {}
    if read:
        _anchor_data_source(raw, path.parent)
    sources = _apply_env(raw, env)
    for dotted, value in (overrides or {}).items():
        keys = tuple(dotted.split("."))
        _set(raw, keys, value)
        sources[keys] = (flags or {}).get(dotted) or f"the override {dotted}"
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, path, sources, str(path) if read else "the built-in defaults")) from None


SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _anchor_data_source(raw: dict[str, Any], folder: Path) -> None:
    """A relative data.source in a YAML file is read relative to that file (as compose files
    do), so every process that reads the file (the CLI, the deployments process started in
    another folder, a worker) finds the same data. Flags and env values stay relative to the
    working directory of whoever typed them."""
    data = raw.get("data")
    source = data.get("source") if isinstance(data, dict) else None
    if not isinstance(source, str) or not source or SCHEME.match(source):
        return  # builtin:<corpus>, s3://..., file:...: not a path
    if not Path(source).expanduser().is_absolute():
        data["source"] = os.path.normpath(folder.resolve() / source)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist. Pass --config with a YAML file, "
                          f"or start from {DEFAULT_CONFIG}.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"Config file {path} is not valid YAML{where}: {problem}.") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"Config file {path} is not UTF-8 text (byte {exc.start}).") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must be a mapping of sections (project, data, "
                          f"model, ...), not a {type(data).__name__}.")
    return data


def _apply_env(raw: dict[str, Any], env: dict[str, str]) -> dict[tuple[str, ...], str]:
    """FTOPS_DATA__VALIDATION_SIZE=0.2 sets data.validation_size; values are parsed as YAML.

    Returns which keys came from which variable, so errors can name the variable.
    """
    sources: dict[tuple[str, ...], str] = {}
    for var, text in sorted(env.items()):
        if not var.startswith(ENV_PREFIX) or var == f"{ENV_PREFIX}CONFIG":
            continue
        keys = tuple(part.lower() for part in var[len(ENV_PREFIX):].split(ENV_NESTING))
        if len(keys) < 2 or not all(keys):
            continue  # not a config key (e.g. FTOPS_HOME); leave it to whoever reads it
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        _set(raw, keys, value)
        sources[keys] = "$" + var
    return sources


def _set(raw: dict[str, Any], keys: tuple[str, ...], value: Any) -> None:
    node = raw
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


def _explain(exc: ValidationError, path: Path, sources: dict[tuple[str, ...], str],
             file_origin: str | None = None) -> str:
    """One clause per error: the key, the value, where it came from (a flag, a variable or
    the file; for a rule over a whole section, the file and what overrode keys inside it)
    and what is allowed."""
    lines, file_origin = [], file_origin or str(path)
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        key = ".".join(loc) or "(top level)"
        inside = ", ".join(sorted({origin for keys, origin in sources.items() if keys[:len(loc)] == loc}))
        origin = sources.get(loc) or (f"{file_origin} with {inside}" if inside else file_origin)
        where = f" (from {origin})"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc[:-1])
            lines.append(f"unknown key '{key}'{where}; allowed here: {', '.join(allowed)}")
        else:
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f" = {value!r}"
            lines.append(f"'{key}'{shown}{where}: {err['msg']}")
    return f"Invalid config {path}: " + "; ".join(lines) + "."


def _allowed_keys(loc: tuple[str, ...]) -> list[str]:
    model: Any = Config
    for part in loc:
        if part.isdigit():
            continue
        field = model.model_fields.get(part)
        if field is None:
            break
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return sorted(model.model_fields)
