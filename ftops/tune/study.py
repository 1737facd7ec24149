"""The tuning stage: an Optuna study per candidate searches its settings on the validation
split, prunes hopeless trials early and writes the best settings back for training.

A second call on the same snapshot resumes the study and adds trials. Several processes,
on one host or many, that call `tune` on the same storage share the study: Optuna's own
distributed mode, each process running its own trials against the same database. The best
trial's settings go to `<project dir>/tuning/<candidate>.json` (ftops.tune.tuned), which
training applies with `tuning.enabled` or `--tuned`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ftops import atomic
from ftops.config import Config
from ftops.errors import ConfigError, FtopsError
from ftops.names import TAG_CANDIDATE, TAG_STRATEGY, TAG_STUDY
from ftops.tune.objective import objective
from ftops.tune.plots import plot_study
from ftops.tune.space import Plan, check_tuning, describe
from ftops.tune.storage import best_of, counts, open_study, storage, study_dir, study_name
from ftops.tune.tuned import tuned_path


@dataclass
class TuneResult:
    candidate: str
    study: str
    study_id: int
    storage: str                      # the URL, password masked
    trials_run: int                   # by this call
    complete: int                     # in the whole study, every call and process
    pruned: int
    failed: int
    best_trial: int | None
    best_val_macro_f1: float | None
    settings: dict[str, Any]          # candidate-level keys + `params`
    settings_file: Path | None
    plots: list[Path]
    run_id: str                       # the MLflow parent run `tune-<candidate>`
    notes: list[str] = field(default_factory=list)


@dataclass
class StudyProgress:
    """What `tune(progress=...)` is told at the start of a study and after each trial."""

    candidate: str
    study: str
    budget: int       # trials this call may run
    run: int          # trials this call ran so far
    complete: int     # in the whole study
    pruned: int
    best: float | None


def tune(config: Config, snapshot, names: list[str] | None = None, trials: int | None = None,
         minutes: float | None = None, new_study: bool = False,
         progress: Callable[[StudyProgress], None] | None = None,
         enqueue: dict[str, list[dict[str, Any]]] | None = None) -> list[TuneResult]:
    """Search each selected candidate's settings in its own Optuna study; return one
    TuneResult per candidate.

    The budget per candidate and call is `trials` (default tuning.trials) or `minutes`
    (default tuning.minutes), whichever ends first; pruned trials end early, so it buys
    many short ones. The study resumes on the next call (same project, candidate and
    snapshot) and adds trials; new_study=True deletes it and starts over. Several processes
    calling this on the same storage (uris.tuning) share the study: Optuna's distributed
    mode, no coordinator needed. `enqueue` lists settings to try first, per candidate name
    (study.enqueue_trial). Every space is checked before any trial runs."""
    budget = budget_of(config, trials, minutes)
    plans = check_tuning(config, names)
    rdb = storage(config)
    return [tune_candidate(config, plan, snapshot, rdb, budget, new_study, progress,
                           (enqueue or {}).get(plan.candidate.name, [])) for plan in plans]


def budget_of(config: Config, trials: int | None, minutes: float | None):
    """(trials, minutes) with the config's defaults, validated as the config would be."""
    from ftops.config import TuningSection

    given = {k: v for k, v in (("trials", trials), ("minutes", minutes)) if v is not None}
    try:
        section = TuningSection.model_validate({**config.tuning.model_dump(), **given})
    except ValidationError as exc:
        err = exc.errors()[0]
        key = str(err["loc"][0])
        raise ConfigError(f"tuning.{key} = {err.get('input')!r} (from the call): {err['msg']}; the budget "
                          "needs at least 1 trial and more than 0 minutes.") from None
    return section.trials, section.minutes


def tune_candidate(config: Config, plan: Plan, snapshot, rdb, budget: tuple[int, float], new_study: bool,
                   progress: Callable[[StudyProgress], None] | None, enqueue: list[dict[str, Any]]) -> TuneResult:
    """One candidate's study, inside its MLflow parent run `tune-<candidate>`."""
    import mlflow

    from ftops import security, tracking

    trials, minutes = budget
    name = study_name(config, plan.candidate.name, snapshot)
    study = open_study(config, name, rdb, new_study)
    if new_study:
        drop_settings_of(config, plan.candidate.name, name)
    for params in enqueue:
        study.enqueue_trial(params)
    tracking.use_project(config)
    lineage = tracking.lineage_tags(config, snapshot)
    tags = {**lineage, TAG_CANDIDATE: plan.candidate.name, TAG_STRATEGY: plan.candidate.strategy, TAG_STUDY: name}
    ran = [0]

    def tell(study_, trial) -> None:
        ran[0] += 1
        if progress is not None:
            progress(study_progress(plan, study_, trials, ran[0]))

    with mlflow.start_run(run_name=f"tune-{plan.candidate.name}", tags=tags) as parent:
        mlflow.log_params({"study": name, "storage": security.mask_url(rdb.url), "trials": trials,
                           "minutes": minutes, "sampler_seed": str(config.tuning.sampler_seed),
                           "pruner": config.tuning.pruner.kind, "space": json.dumps(describe(plan.space))})
        if progress is not None:
            progress(study_progress(plan, study, trials, 0))
        study.optimize(objective(config, plan, snapshot, name, lineage), n_trials=trials, timeout=minutes * 60,
                       callbacks=[tell], catch=(FtopsError,))
        result = finish(config, plan, study, snapshot, rdb, ran[0], parent.info.run_id)
    return result


def study_progress(plan: Plan, study, budget: int, ran: int) -> StudyProgress:
    found, best = counts(study), best_of(study)
    return StudyProgress(plan.candidate.name, study.study_name, budget, ran, found["complete"], found["pruned"],
                         best.value if best else None)


def finish(config: Config, plan: Plan, study, snapshot, rdb, ran: int, run_id: str) -> TuneResult:
    """The study's figures, plots and best settings, logged on the parent run."""
    import mlflow

    from ftops import security

    found, best, notes = counts(study), best_of(study), []
    folder = study_dir(config, study.study_name)
    plots = plot_study(study, folder, found["complete"], notes)
    for plot in plots:
        mlflow.log_artifact(str(plot), artifact_path="plots")
    mlflow.log_metrics({"trials_complete": found["complete"], "trials_pruned": found["pruned"],
                        "trials_failed": found["failed"], "trials_run": ran})
    settings, path = {}, None
    if best is not None:
        settings = plan.settings({**plan.fixed, **best.params})
        path = write_settings(config, plan, study.study_name, snapshot, best, settings, found,
                              security.mask_url(rdb.url))
        mlflow.log_metric("best_val_macro_f1", best.value)
        mlflow.log_artifact(str(path))
    else:
        notes.append("no trial completed: no settings written")
    return TuneResult(plan.candidate.name, study.study_name, rdb.get_study_id_from_name(study.study_name),
                      security.mask_url(rdb.url), ran, found["complete"], found["pruned"], found["failed"],
                      best.number if best else None, best.value if best else None, settings, path, plots,
                      run_id, notes)


def write_settings(config: Config, plan: Plan, study: str, snapshot, best, settings: dict[str, Any],
                   found: dict[str, int], where: str) -> Path:
    record = {"candidate": plan.candidate.name, "strategy": plan.candidate.strategy, "study": study,
              "storage": where, "snapshot": snapshot.id, "best_trial": best.number,
              "best_val_macro_f1": best.value, "trials_complete": found["complete"],
              "trials_pruned": found["pruned"], "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "settings": settings}
    return atomic.write_text(tuned_path(config, plan.candidate.name), json.dumps(record, indent=2))


def drop_settings_of(config: Config, candidate: str, study: str) -> None:
    """A restarted study's old best settings no longer hold."""
    path = tuned_path(config, candidate)
    try:
        if json.loads(path.read_text()).get("study") == study:
            path.unlink()
    except (OSError, ValueError):
        pass
