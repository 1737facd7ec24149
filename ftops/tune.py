"""The tuning stage: an Optuna study per candidate searches its settings on the validation
split, prunes hopeless trials early and writes the best settings back for training.

One study per candidate and data snapshot, named `<project>-<candidate>-<snapshot id>`, in
the RDB storage `uris.tuning` (SQLite under the project by default, PostgreSQL for a team).
A second call on the same snapshot resumes the study and adds trials. Several processes,
on one host or many, that call `tune` on the same storage share the study: Optuna's own
distributed mode, each process running its own trials against the same database.

A trial trains with `ftops.train.train_candidate` and never reads the test split; its
score is the validation macro-F1. The best trial's settings go to
`<project dir>/tuning/<candidate>.json`, which `tuned_candidates` (and `train_round` with
`tuning.enabled`) apply to the configured candidates.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from transformers import TrainerCallback

from ftops import atomic, strategies, train
from ftops.config import CandidateSection, Config, DimSection, TrainingSection
from ftops.errors import ConfigError, FtopsError
from ftops.strategies import Dim
from ftops.tuned import (TAG_TUNED_STUDY, TAG_TUNED_TRIAL, Tuned, load_tuned, log_lineage,  # noqa: F401
                         tuned_candidates, tuned_config, tuned_path)

TAG_STUDY = "ftops.study"
TAG_TRIAL = "ftops.trial"
TAG_TRIAL_STATE = "ftops.trial_state"        # complete / pruned / failed
TAG_IMPORTANCES = "ftops.tune.importances"   # why the importance plot is missing, when it is

# Candidate-level settings every strategy shares; a strategy adds its own (Strategy.space)
# and its learning-rate range (Strategy.learning_rates).
CANDIDATE_SPACE: dict[str, Dim] = {
    "epochs": Dim.integer(1, 4),
    "batch_size": Dim.categorical(16, 32, 64),
    "warmup_share": Dim.real(0.0, 0.2),
    "weight_decay": Dim.real(0.0, 0.1),
    "label_smoothing": Dim.real(0.0, 0.2),
    "class_weight": Dim.categorical("none", "balanced"),
}
# Candidate keys that are sections or identity, not a value to search or hold.
NOT_SETTINGS = {"name", "strategy", "params", "distillation", "ewc", "adaptation", "tasks"}
KEEP_IN_TRIAL = {train.RESULT_FILE, "learning_curves.png"}  # the rest of a trial folder is freed


# ---------------------------------------------------------------- results


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


# ---------------------------------------------------------------- the search space


@dataclass
class Plan:
    """What one candidate's study searches (`space`) and holds (`fixed`)."""

    candidate: CandidateSection
    space: dict[str, Dim]
    fixed: dict[str, Any]

    @property
    def strategy(self) -> strategies.Strategy:
        return strategies.get_strategy(self.candidate.strategy)

    def build(self, values: dict[str, Any]) -> CandidateSection:
        """The candidate with `values` (candidate-level keys and strategy params, flat),
        validated by the config's own models."""
        params = {k: v for k, v in values.items() if k in self.strategy.Params.model_fields}
        top = {k: v for k, v in values.items() if k not in params}
        return CandidateSection.model_validate(
            {**self.candidate.model_dump(), **top, "params": {**self.candidate.params, **params}})

    def settings(self, values: dict[str, Any]) -> dict[str, Any]:
        """Flat trial values as the settings file holds them: candidate-level keys + `params`."""
        params = {k: v for k, v in values.items() if k in self.strategy.Params.model_fields}
        return {**{k: v for k, v in values.items() if k not in params}, "params": params}


def candidate_keys() -> list[str]:
    """Candidate-level keys a space or `fixed` may name."""
    return [k for k in CandidateSection.model_fields if k not in NOT_SETTINGS]


def check_tuning(config: Config, names: list[str] | None = None) -> list[Plan]:
    """Every selected candidate's search space, checked before any trial runs: names in
    tuning.space / tuning.fixed that are no candidate, parameters the candidate's strategy
    does not have, ranges whose ends do not fit the model. Each is a ConfigError naming the key."""
    configured = [c.name for c in config.candidates]
    for section in ("space", "fixed"):
        unknown = [n for n in getattr(config.tuning, section) if n not in configured]
        if unknown:
            raise ConfigError(f"tuning.{section}.{unknown[0]}: '{unknown[0]}' is no candidate; the config "
                              f"defines: {', '.join(configured) or 'none'} (section `candidates`).")
    checked = train.check_candidates(config, names)
    num_layers = layer_count(config)
    return [plan_for(config, candidate, num_layers) for candidate, _ in checked]


def layer_count(config: Config) -> int:
    from transformers import AutoConfig

    from ftops import models

    return AutoConfig.from_pretrained(models.resolve_model(config.model.name), local_files_only=True).num_hidden_layers


def plan_for(config: Config, candidate: CandidateSection, num_layers: int) -> Plan:
    strategy = strategies.get_strategy(candidate.strategy)
    overrides = config.tuning.space.get(candidate.name, {})
    fixed = dict(config.tuning.fixed.get(candidate.name, {}))
    for section, keys in (("space", overrides), ("fixed", fixed)):
        for key in keys:
            check_known(f"tuning.{section}.{candidate.name}.{key}", key, candidate.name, strategy)
    space = {**CANDIDATE_SPACE, "learning_rate": strategy.learning_rates, **strategy.search_space(num_layers)}
    for key, override in overrides.items():
        space[key] = merged_dim(f"tuning.space.{candidate.name}.{key}", space.get(key), override)
    plan = Plan(candidate, {k: v for k, v in space.items() if k not in fixed}, fixed)
    check_edges(plan, num_layers)
    return plan


def check_known(key: str, param: str, candidate: str, strategy: strategies.Strategy) -> None:
    if param in strategy.Params.model_fields or param in candidate_keys():
        return
    own = ", ".join(strategy.Params.model_fields) or "none"
    raise ConfigError(f"{key}: '{param}' is not a parameter of candidate '{candidate}' (strategy "
                      f"{strategy.name}). Strategy {strategy.name} has: {own}; every candidate has: "
                      f"{', '.join(candidate_keys())}.")


def merged_dim(key: str, default: Dim | None, override: DimSection) -> Dim:
    """The default dimension with the override's ends, scale or choices; a parameter with no
    default range needs both ends (or choices)."""
    try:
        if override.choices is not None:
            return Dim.categorical(*override.choices)
        if default is not None and default.kind == "categorical":
            raise ValueError(f"it is searched over choices {list(default.choices)}; give choices: [...]")
        if default is None:
            if override.low is None or override.high is None:
                raise ValueError("it has no default range; give both low and high, or choices")
            whole = all(isinstance(v, int) and not isinstance(v, bool) for v in (override.low, override.high))
            return Dim("int" if whole else "float", override.low, override.high, bool(override.log))
        return Dim(default.kind, default.low if override.low is None else override.low,
                   default.high if override.high is None else override.high,
                   default.log if override.log is None else override.log)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}.") from None


def check_edges(plan: Plan, num_layers: int) -> None:
    """Each end of each range (each choice) must make a valid candidate for this model, so a
    bad range fails now and not in trial 17."""
    for name, dim in plan.space.items():
        for value in dim.edges():
            what = f"tuning.space.{plan.candidate.name}.{name} = {value!r}"
            try:
                candidate = plan.build({**plan.fixed, name: value})
                strategies.parse_params(candidate.name, plan.strategy, candidate.params, num_layers)
            except ValidationError as exc:
                raise ConfigError(f"{what}: {exc.errors()[0]['msg']}.") from None
            except ConfigError as exc:
                raise ConfigError(f"{what}: {exc}") from None
    try:
        candidate = plan.build(plan.fixed)
        strategies.parse_params(candidate.name, plan.strategy, candidate.params, num_layers)
    except ValidationError as exc:
        raise ConfigError(f"tuning.fixed.{plan.candidate.name}: {exc.errors()[0]['msg']}.") from None


# ---------------------------------------------------------------- studies and storage


def study_name(config: Config, candidate: str, snapshot) -> str:
    return f"{config.project.name}-{candidate}-{snapshot.id}"


def storage(config: Config):
    """The RDB storage of every study (uris.tuning); connection waits bounded by
    timeouts.database_s."""
    import optuna

    cfg = config.resolved()
    url, seconds = cfg.uris.tuning, cfg.timeouts.database_s
    if url.startswith("sqlite"):
        cfg.project.dir.mkdir(parents=True, exist_ok=True)
        options = {"connect_args": {"timeout": seconds}}  # waits on another process's write lock
    elif url.startswith("postgresql"):
        options = {"connect_args": {"connect_timeout": max(2, round(seconds))}, "pool_pre_ping": True}
    else:
        options = {"pool_pre_ping": True}
    from sqlalchemy.exc import SQLAlchemyError

    from ftops import security

    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=options)
    except SQLAlchemyError:
        pass  # two processes starting on a new storage: the other one created the tables first
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=options)
    except SQLAlchemyError as exc:
        raise FtopsError(f"Cannot open the tuning storage {security.mask_url(url)} (uris.tuning): "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0]}. Check that the database "
                         "is reachable within timeouts.database_s.") from exc


def study_dir(config: Config, name: str) -> Path:
    return config.resolved().project.dir / "tuning" / name


def open_study(config: Config, name: str, rdb, new: bool):
    """The study `name`, created or (load_if_exists) resumed; `new` deletes it first, with
    its trial folders and a settings file it wrote."""
    import optuna

    if new:
        try:
            optuna.delete_study(study_name=name, storage=rdb)
        except KeyError:
            pass  # nothing to restart
        shutil.rmtree(study_dir(config, name), ignore_errors=True)
    study = optuna.create_study(study_name=name, storage=rdb, direction="maximize",
                                pruner=pruner(config), load_if_exists=True)
    # A fixed seed per call would replay the same random start-up trials on every resume.
    seed = config.tuning.sampler_seed
    study.sampler = optuna.samplers.TPESampler(seed=None if seed is None else seed + len(study.trials))
    return study


def pruner(config: Config):
    import optuna

    section = config.tuning.pruner
    if section.kind == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=section.startup_trials, n_warmup_steps=section.warmup_evals)


def counts(study) -> dict[str, int]:
    from optuna.trial import TrialState

    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {"complete": states.count(TrialState.COMPLETE), "pruned": states.count(TrialState.PRUNED),
            "failed": states.count(TrialState.FAIL)}


def best_of(study):
    """The best complete trial, or None while there is none."""
    from optuna.trial import TrialState

    return study.best_trial if any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)) else None


# ---------------------------------------------------------------- a trial


class PruneOnEvaluation(TrainerCallback):
    """Reports each evaluation's val macro-F1 to the trial (step = the evaluation's number,
    comparable across trials of other batch sizes) and stops training when the pruner says so."""

    def __init__(self, trial):
        self.trial, self.evaluations, self.pruned, self.last = trial, 0, False, None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not metrics or "eval_macro_f1" not in metrics:
            return
        self.last = float(metrics["eval_macro_f1"])
        self.trial.report(self.last, self.evaluations)
        self.evaluations += 1
        if self.trial.should_prune():
            self.pruned = True
            control.should_training_stop = True


def free_trial_folder(folder: Path) -> None:
    """Keep a trial's result.json and learning curves; its checkpoints and model go."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.name in KEEP_IN_TRIAL:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def objective(config: Config, plan: Plan, snapshot, name: str, lineage: dict[str, str]):
    """The function Optuna calls per trial: train on the suggested settings, return the
    validation macro-F1; a trial the pruner stops raises optuna.TrialPruned."""
    import mlflow
    import optuna

    from ftops import tracking

    # Trials run in this process (pruning reports from inside the Trainer); to use several
    # devices, run several `ftops tune` processes on the same study.
    trial_config = config.model_copy(update={"training": TrainingSection(nproc=1)})

    def run(trial) -> float:
        values = {**plan.fixed, **{key: dim.suggest(trial, key) for key, dim in plan.space.items()}}
        candidate = plan.build(values)
        folder = study_dir(config, name) / f"trial-{trial.number}"
        pruning = PruneOnEvaluation(trial)
        tags = {**lineage, tracking.TAG_CANDIDATE: candidate.name, tracking.TAG_STRATEGY: candidate.strategy,
                TAG_STUDY: name, TAG_TRIAL: str(trial.number)}
        with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True, tags=tags) as child:
            trial.set_user_attr("mlflow_run_id", child.info.run_id)
            mlflow.log_params(tracking.flat_params("", candidate.model_dump(mode="json", exclude={"params"})))
            mlflow.log_params(tracking.flat_params(candidate.strategy, candidate.params))
            try:
                result = train.train_candidate(trial_config, candidate, snapshot, folder,
                                               evaluate_test=False, callbacks=[pruning])
            except BaseException:
                mlflow.set_tag(TAG_TRIAL_STATE, "failed")
                raise
            finally:
                free_trial_folder(folder)
            mlflow.log_metrics({"val_macro_f1": result.val_macro_f1, "wall_seconds": result.wall_seconds,
                                "evaluations": pruning.evaluations})
            mlflow.set_tag(TAG_TRIAL_STATE, "pruned" if pruning.pruned else "complete")
        if pruning.pruned:  # raised outside the run, so MLflow records it finished, not failed
            raise optuna.TrialPruned(f"val macro-F1 {pruning.last:.3f} at evaluation {pruning.evaluations - 1}")
        return result.val_macro_f1

    return run


# ---------------------------------------------------------------- the stage


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
    tags = {**lineage, tracking.TAG_CANDIDATE: plan.candidate.name, tracking.TAG_STRATEGY: plan.candidate.strategy,
            TAG_STUDY: name}
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


def describe(space: dict[str, Dim]) -> dict[str, Any]:
    return {k: list(d.choices) if d.kind == "categorical" else [d.low, d.high] + (["log"] if d.log else [])
            for k, d in space.items()}


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


def plot_study(study, folder: Path, complete: int, notes: list[str]) -> list[Path]:
    """Optimization history, and parameter importances once 2 trials completed (else a note,
    also a tag on the run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    import optuna
    from optuna.visualization import matplotlib as plots

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    drawings = [("optimization_history.png", plots.plot_optimization_history)]
    if complete >= 2:
        drawings.append(("param_importances.png", plots.plot_param_importances))
    else:
        note = f"parameter importances need 2 complete trials; the study has {complete}"
        notes.append(note)
        mlflow.set_tag(TAG_IMPORTANCES, note)
    for file_name, draw in drawings:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                axes = draw(study)
            except (ValueError, RuntimeError) as exc:  # e.g. importances with no varying parameter
                note = f"{file_name} not drawn: {exc}"
                notes.append(note)
                mlflow.set_tag(TAG_IMPORTANCES, note)
                continue
        figure = axes.figure
        figure.set_size_inches(7, 4)
        figure.tight_layout()
        figure.savefig(folder / file_name, dpi=100)
        plt.close(figure)
        written.append(folder / file_name)
    return written


# ---------------------------------------------------------------- settings written back


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
