"""A round of candidates as one MLflow run with nested runs: resume, baseline, logging."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftops import atomic
from ftops.config import CandidateSection, Config
from ftops.errors import FtopsError
from ftops.names import MODEL_DIR
from ftops.train.baseline import BaselineResult, fit_baseline, log_baseline
from ftops.train.candidate import resume_point, train_candidate
from ftops.train.checks import check_candidates
from ftops.train.results import RESULT_FILE, RetrainSources, TrainResult, load_result


@dataclass
class RoundResult:
    run_id: str
    snapshot_id: str
    baseline: BaselineResult
    candidates: list[tuple[TrainResult, str]]  # (result, MLflow run id)
    folder: Path | None = None   # <project>/runs/<run id>: one folder per candidate
    resumed: bool = False        # an earlier round run was continued
    unchanged: bool = False      # it was already finished: nothing was trained or logged


TAG_ROUND_DIR = "ftops.round_dir"          # where the round's candidate folders are
TAG_FLOW_RUN = "ftops.prefect_flow_run"    # the Prefect flow run that trains the round
ROUND_FILE = "round.json"                  # the round's config (passwords masked), for resume


class ResumeError(FtopsError):
    pass


@dataclass
class SavedRound:
    """A round run as MLflow has it: what a resume continues."""

    run_id: str
    status: str
    tags: dict[str, str]
    params: dict[str, str]
    folder: Path
    children: dict[str, Any]  # candidate name (or "baseline") -> its newest nested mlflow Run

    @property
    def candidates(self) -> list[str]:
        return [n for n in self.params.get("candidates", "").split(",") if n]

    @property
    def snapshot_id(self) -> str:
        from ftops import tracking

        return self.tags.get(tracking.TAG_SNAPSHOT, "")


def run_done(run) -> bool:
    """A nested run whose `with` block ended after its results were logged."""
    return run is not None and run.info.status == "FINISHED" and "test_macro_f1" in run.data.metrics


def saved_round(config: Config, run_id: str) -> SavedRound:
    """The round run `run_id` of this project and its nested runs; a ResumeError that says
    what the id is instead (unknown, a candidate's run, another project's)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from ftops import tracking

    experiment_id = tracking.use_project(config)
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise  # the tracking store failing is its own error, not an unknown id
        raise ResumeError(f"No MLflow run '{run_id}' in {tracking_where(config)}: a round's id is printed when it "
                          f"starts and names its folder under {config.resolved().project.dir / 'runs'}. "
                          f"{recent_rounds(client, experiment_id)}") from exc
    tags = run.data.tags
    if run.info.experiment_id != experiment_id:
        raise ResumeError(f"Run {run_id} belongs to another MLflow experiment, not to project "
                          f"'{config.project.name}'; resume it with that project's config.")
    if tracking.TAG_ROUND not in tags or "mlflow.parentRunId" in tags:
        what = f"candidate '{tags.get(tracking.TAG_CANDIDATE)}'" if tracking.TAG_CANDIDATE in tags else "not a round"
        parent = tags.get("mlflow.parentRunId")
        raise ResumeError(f"Run {run_id} is {what}" + (f" of round {parent}; resume the round: --resume {parent}"
                                                     if parent else f". {recent_rounds(client, experiment_id)}"))
    children: dict[str, Any] = {}
    for child in client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{run_id}'",
                                    order_by=["attributes.start_time DESC"]):
        children.setdefault(child.data.tags.get(tracking.TAG_CANDIDATE, child.info.run_name), child)
    folder = Path(tags.get(TAG_ROUND_DIR) or config.resolved().project.dir / "runs" / run_id)
    return SavedRound(run_id, run.info.status, tags, run.data.params, folder, children)


def tracking_where(config: Config) -> str:
    from ftops import security

    return f"project '{config.project.name}' (MLflow {security.mask_url(config.resolved().uris.mlflow_tracking)})"


def recent_rounds(client, experiment_id: str) -> str:
    from ftops import tracking

    runs = client.search_runs([experiment_id], f"tags.`{tracking.TAG_ROUND}` != ''", max_results=5,
                              order_by=["attributes.start_time DESC"])
    listed = ", ".join(f"{r.info.run_id} ({r.info.status.lower()})" for r in runs)
    return f"Latest rounds: {listed}." if listed else "This project has no training rounds yet."


def find_round(config: Config, flow_run_id: str) -> str | None:
    """The round run a Prefect flow run started (tag TAG_FLOW_RUN), newest first."""
    from mlflow import MlflowClient

    from ftops import tracking

    experiment_id = tracking.use_project(config)
    runs = MlflowClient().search_runs([experiment_id], f"tags.`{TAG_FLOW_RUN}` = '{flow_run_id}'",
                                      max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


def check_resumable(config: Config, saved: SavedRound, snapshot, names: list[str],
                    parent_model_version: str | None) -> None:
    """A resume continues the same round: same snapshot, config, candidates and parent."""
    from ftops import tracking

    now = tracking.lineage_tags(config, snapshot, parent_model_version)
    problems = []
    if saved.snapshot_id != snapshot.id:
        problems.append(f"the round trained on data snapshot {saved.snapshot_id}, this resume has {snapshot.id} "
                        f"(drop --snapshot to use the round's)")
    elif saved.tags.get(tracking.TAG_SNAPSHOT_SHA) != now[tracking.TAG_SNAPSHOT_SHA]:
        problems.append(f"data snapshot {snapshot.id} changed since the round started (its sha256 differs)")
    if saved.tags.get(tracking.TAG_CONFIG_SHA) != now[tracking.TAG_CONFIG_SHA]:
        problems.append("the config differs: " + config_changes(saved.folder, config))
    if saved.candidates != names:
        problems.append(f"the round trains candidates {','.join(saved.candidates)}, this resume asks for {','.join(names)}")
    if saved.tags.get(tracking.TAG_PARENT_MODEL, "none") != now[tracking.TAG_PARENT_MODEL]:
        problems.append(f"the round retrains model version {saved.tags.get(tracking.TAG_PARENT_MODEL)}, "
                        f"this resume {now[tracking.TAG_PARENT_MODEL]}")
    if problems:
        raise ResumeError(f"Cannot resume round {saved.run_id}: " + "; ".join(problems) +
                          ". Resume with the round's own settings, or start a new round without --resume.")


def config_changes(folder: Path, config: Config, limit: int = 8) -> str:
    """The config keys that differ from the round's saved config (`a.b: old -> new`)."""
    from ftops import security

    try:
        before = json.loads((folder / ROUND_FILE).read_text())["config"]
    except (OSError, ValueError, KeyError):
        return f"its sha256 does not match the round's ({folder / ROUND_FILE} is missing, so the keys are unknown)"
    changes = list(diff_values(before, security.masked(config.model_dump(mode="json"))))
    if not changes:
        return "a masked value (a password in a URL) differs"
    more = f" and {len(changes) - limit} more" if len(changes) > limit else ""
    return ", ".join(changes[:limit]) + more


def diff_values(old: Any, new: Any, where: str = ""):
    """`key: old -> new` for every leaf that differs; candidates are matched by name."""
    if isinstance(old, list) and isinstance(new, list) and all(isinstance(v, dict) and "name" in v for v in old + new):
        old, new = {v["name"]: v for v in old}, {v["name"]: v for v in new}
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            yield from diff_values(old.get(key), new.get(key), f"{where}.{key}" if where else str(key))
    elif old != new:
        yield f"{where}: {json.dumps(old)} -> {json.dumps(new)}"


def train_round(config: Config, snapshot, names: list[str] | None = None,
                retrain: RetrainSources | None = None, parent_model_version: str | None = None,
                progress_for: Callable[[str], Callable[[int, int, dict], None]] | None = None,
                out_root: Path | None = None, resume: str | None = None,
                tags: dict[str, str] | None = None, notify: Callable[[str], None] | None = None,
                tuned: bool | None = None) -> RoundResult:
    """A parent MLflow run for the round, one nested run per candidate and one for the
    baseline, all with the same lineage tags. Every candidate is checked before any trains.

    resume=<round run id> continues that round in the same runs and folders: finished
    candidates are kept, unfinished ones continue from their last checkpoint, missing ones
    start; a resume with another config, snapshot or candidate list is a ResumeError.

    tuned (default: tuning.enabled): candidates with a tuning result (ftops.tune) train
    with its best settings, and their runs name the study and trial they came from."""
    import mlflow

    from ftops import tracking
    from ftops.tune import tuned as tuned_settings

    say = notify or (lambda line: None)
    config, applied = tuned_settings.tuned_config(config, config.tuning.enabled if tuned is None else tuned)
    for name, found in applied.items():
        say(f"{name}: tuned settings of study {found.study}, trial {found.trial}")
    saved = saved_round(config, resume) if resume else None
    if saved is not None:
        names = names or saved.candidates
        check_resumable(config, saved, snapshot, names, parent_model_version)
    chosen = [c for c, _ in check_candidates(config, names)]
    if saved is not None and round_done(saved, chosen):
        say(f"round {saved.run_id} is already finished: nothing trained, nothing logged")
        return finished_round(saved, chosen)
    tracking.use_project(config)
    lineage = tracking.lineage_tags(config, snapshot, parent_model_version)
    started = time.strftime("%Y%m%d-%H%M%S")
    parent = mlflow.start_run(run_id=saved.run_id) if saved else mlflow.start_run(
        run_name=f"round-{started}", tags={**lineage, **(tags or {}), tracking.TAG_ROUND: started})
    children = saved.children if saved else {}
    with parent:
        folder = saved.folder if saved else record_round(config, snapshot, chosen, out_root, parent.info.run_id)
        if saved is None:
            say(f"round {parent.info.run_id} started in {folder}; if it stops, resume it by this run id")
        baseline = round_baseline(snapshot, lineage, children.get("baseline"), say)
        results = []
        for candidate in chosen:
            results.append(round_candidate(config, candidate, snapshot, folder / candidate.name, lineage,
                                           children.get(candidate.name), baseline, retrain, progress_for,
                                           say if saved else None, applied.get(candidate.name)))
        mlflow.log_metric("best_test_macro_f1", max((r.test_macro_f1 for r, _ in results), default=0.0))
    return RoundResult(parent.info.run_id, snapshot.id, baseline, results, folder, resumed=saved is not None)


def record_round(config: Config, snapshot, chosen: list[CandidateSection], out_root: Path | None,
                 run_id: str) -> Path:
    """The new round's params and folder, named by its run id (stable: a resume finds it)."""
    import mlflow

    from ftops import security

    folder = Path(out_root or config.resolved().project.dir / "runs" / run_id)
    mlflow.set_tag(TAG_ROUND_DIR, str(folder))
    mlflow.log_params({"snapshot": snapshot.id, "candidates": ",".join(c.name for c in chosen),
                       "model": config.model.name, "max_length": config.model.max_length,
                       "nproc": config.training.nproc})
    atomic.write_text(folder / ROUND_FILE, json.dumps(
        {"run_id": run_id, "snapshot": snapshot.id, "config": security.masked(config.model_dump(mode="json"))},
        indent=2))
    return folder


def round_done(saved: SavedRound, chosen: list[CandidateSection]) -> bool:
    return (saved.status == "FINISHED" and run_done(saved.children.get("baseline"))
            and all(run_done(saved.children.get(c.name)) and (saved.folder / c.name / RESULT_FILE).is_file()
                    for c in chosen))


def finished_round(saved: SavedRound, chosen: list[CandidateSection]) -> RoundResult:
    """A finished round as it was saved, read without touching MLflow or the folders."""
    results = [(load_result(saved.folder / c.name), saved.children[c.name].info.run_id) for c in chosen]
    return RoundResult(saved.run_id, saved.snapshot_id, saved_baseline(saved.children["baseline"]), results,
                       saved.folder, resumed=True, unchanged=True)


def saved_baseline(run) -> BaselineResult:
    metrics = run.data.metrics
    return BaselineResult(val_macro_f1=metrics["val_macro_f1"], test_macro_f1=metrics["test_macro_f1"],
                          test_accuracy=metrics["test_accuracy"], wall_seconds=metrics["wall_seconds"],
                          run_id=run.info.run_id)


def nested_run(run_name: str, tags: dict[str, str], existing, **kwargs):
    """The nested run `existing` reopened, or a new one."""
    import mlflow

    if existing is not None:
        return mlflow.start_run(run_id=existing.info.run_id, nested=True, **kwargs)
    return mlflow.start_run(run_name=run_name, nested=True, tags=tags, **kwargs)


def round_baseline(snapshot, lineage: dict[str, str], existing, say: Callable[[str], None]) -> BaselineResult:
    """The baseline's results; refit (in its run, if it had one) unless that run finished."""
    import mlflow

    from ftops import tracking

    if run_done(existing):
        return saved_baseline(existing)
    if existing is not None:
        say("baseline: its run did not finish, refitting")
    with nested_run("baseline", {**lineage, tracking.TAG_CANDIDATE: "baseline"}, existing) as run:
        baseline = fit_baseline(snapshot)
        mlflow.log_metrics({"val_macro_f1": baseline.val_macro_f1, "test_macro_f1": baseline.test_macro_f1,
                            "test_accuracy": baseline.test_accuracy, "wall_seconds": baseline.wall_seconds})
        log_baseline(baseline, snapshot.labels)
    baseline.run_id = run.info.run_id
    return baseline


def round_candidate(config: Config, candidate: CandidateSection, snapshot, out_dir: Path,
                    lineage: dict[str, str], existing, baseline: BaselineResult,
                    retrain: RetrainSources | None, progress_for, say: Callable[[str], None] | None,
                    tuned=None) -> tuple[TrainResult, str]:
    """One candidate of the round in its nested run: kept if finished, else trained (from its
    last checkpoint when it has one); `say` (resumes only) tells which. `tuned` (a
    ftops.tuned.Tuned) tags the run with the study and trial its settings came from."""
    import mlflow

    from ftops import tracking
    from ftops.tune import tuned as tuned_settings

    say = say or (lambda line: None)
    finished = (out_dir / RESULT_FILE).is_file()
    if finished and run_done(existing):
        say(f"{candidate.name}: finished, kept")
        return load_result(out_dir), existing.info.run_id
    run_tags = {**lineage, tracking.TAG_CANDIDATE: candidate.name, tracking.TAG_STRATEGY: candidate.strategy}
    with nested_run(candidate.name, run_tags, existing, log_system_metrics=True) as run:
        mlflow.log_params(tracking.flat_params("", candidate.model_dump(mode="json", exclude={"params"})))
        mlflow.log_params(tracking.flat_params(candidate.strategy, candidate.params))
        if tuned is not None:
            tuned_settings.log_lineage(tuned)
        if finished:
            say(f"{candidate.name}: trained, logging its results")
            result = load_result(out_dir)
        else:
            point = resume_point(out_dir)
            say(f"resuming {candidate.name} from step {point[0]} of {point[1]}" if point
                else f"starting {candidate.name}")
            report = progress_for(candidate.name) if progress_for else None
            result = train_candidate(config, candidate, snapshot, out_dir, retrain, report)
        log_result(result, baseline)
    return result, run.info.run_id


def log_result(result: TrainResult, baseline: BaselineResult) -> None:
    import mlflow

    mlflow.log_params({"trainable_params": result.trainable, "total_params": result.total,
                       "world_size": result.world_size, "target_rows": result.target_rows})
    for task, values in result.task_metrics.items():
        mlflow.log_metrics({f"task.{task}.test_{k}": v for k, v in values.items()})
    mlflow.log_metrics({
        "val_macro_f1": result.val_macro_f1, "test_macro_f1": result.test_macro_f1,
        "test_accuracy": result.test_accuracy, "trainable_share": result.trainable_share,
        "samples_per_second": result.samples_per_second, "wall_seconds": result.wall_seconds,
        "peak_rss_mb": result.peak_rss_mb, "vs_baseline_test_macro_f1": result.test_macro_f1 - baseline.test_macro_f1,
    })
    mlflow.log_artifacts(str(result.out_dir / MODEL_DIR), artifact_path=MODEL_DIR)
    for name in ("learning_curves.png", "confusion_matrix.png", "result.json"):
        mlflow.log_artifact(str(result.out_dir / name))
