"""One trial: train the candidate on the suggested settings (ftops.train.train_candidate,
never the test split), report each evaluation's validation macro-F1 to the pruner, stop
early when it says so. A trial saves no checkpoint and no model: its folder keeps only its
result and learning curves.
"""

from __future__ import annotations

from transformers import TrainerCallback

from ftops import names, train
from ftops.config import Config, TrainingSection
from ftops.tune.space import Plan
from ftops.tune.storage import study_dir


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
        tags = {**lineage, names.TAG_CANDIDATE: candidate.name, names.TAG_STRATEGY: candidate.strategy,
                names.TAG_STUDY: name, names.TAG_TRIAL: str(trial.number)}
        with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True, tags=tags) as child:
            trial.set_user_attr("mlflow_run_id", child.info.run_id)
            mlflow.log_params(tracking.flat_params("", candidate.model_dump(mode="json", exclude={"params"})))
            mlflow.log_params(tracking.flat_params(candidate.strategy, candidate.params))
            try:
                result = train.train_candidate(trial_config, candidate, snapshot, folder,
                                               evaluate_test=False, callbacks=[pruning], save=False)
            except BaseException:
                mlflow.set_tag(names.TAG_TRIAL_STATE, "failed")
                raise
            mlflow.log_metrics({"val_macro_f1": result.val_macro_f1, "wall_seconds": result.wall_seconds,
                                "evaluations": pruning.evaluations})
            mlflow.set_tag(names.TAG_TRIAL_STATE, "pruned" if pruning.pruned else "complete")
        if pruning.pruned:  # raised outside the run, so MLflow records it finished, not failed
            raise optuna.TrialPruned(f"val macro-F1 {pruning.last:.3f} at evaluation {pruning.evaluations - 1}")
        return result.val_macro_f1

    return run
