"""One candidate trained: checkpoints and resume, the Trainer run, the saved folder."""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

from ftops import atomic, models, strategies
from ftops.artifacts.candidate import load_trained, save_trained
from ftops.config import CandidateSection, Config
from ftops.errors import ConfigError
from ftops.names import MODEL_DIR
from ftops.train import distributed
from ftops.train.checks import check_candidates
from ftops.train.dataset import Encoded, rehearsal_mix
from ftops.train.extras import attach_extras, describe_extras, target_texts, task_vocab, with_target_rows
from ftops.train.losses import Ewc, class_weights, log_class_weights
from ftops.train.plots import plot_confusion, plot_history
from ftops.train.results import RESULT_FILE, RetrainSources, TrainResult
from ftops.train.trainer import (EarlyStopping, FtopsTrainer, MlflowMetrics, ProgressCallback, compute_metrics,
                                 one_class_macro_f1, per_device_batch, training_arguments)


def checkpoint_state(folder: Path) -> dict | None:
    """A checkpoint's trainer state, or None while it is incomplete: the Trainer writes
    trainer_state.json last, so a kill mid-save leaves a folder without a readable one."""
    try:
        return json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return None


def checkpoints(out_dir: Path) -> list[Path]:
    folder = Path(out_dir) / "checkpoints"
    found = [p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def last_checkpoint(out_dir: Path) -> str | None:
    """The newest complete checkpoint (a half-written newer one is skipped)."""
    complete = [p for p in checkpoints(out_dir) if checkpoint_state(p) is not None]
    return str(complete[-1]) if complete else None


def drop_partial_checkpoints(out_dir: Path) -> None:
    """Remove checkpoints a kill left half-written, so the Trainer's rotation never keeps
    one over a complete one (the calling process only: DDP workers just read)."""
    import shutil

    for folder in checkpoints(out_dir):
        if checkpoint_state(folder) is None:
            shutil.rmtree(folder, ignore_errors=True)


def resume_point(out_dir: Path) -> tuple[int, int] | None:
    """(step, total steps) of the checkpoint training would continue from."""
    last = last_checkpoint(out_dir)
    state = checkpoint_state(Path(last)) if last else None
    return (int(state["global_step"]), int(state["max_steps"])) if state else None


def train_candidate(config: Config, candidate: CandidateSection, snapshot, out_dir: Path,
                    retrain: RetrainSources | None = None,
                    progress: Callable[[int, int, dict], None] | None = None,
                    evaluate_test: bool = True, callbacks: list[TrainerCallback] | None = None,
                    save: bool = True) -> TrainResult:
    """Fine-tune one candidate on a data snapshot; resumes from out_dir's last checkpoint.
    With training.nproc > 1 it runs under torchrun (DDP) and returns rank 0's result.

    evaluate_test=False never reads the test split (hyperparameter search must not see it):
    the result has no test metrics, the folder no test logits or confusion matrix.
    `callbacks` are extra TrainerCallbacks (e.g. a pruner), in this process only.
    save=False (a tuning trial) writes no checkpoint and no model: the result's val_macro_f1
    is then its best evaluation's, which is what loading the best checkpoint would score."""

    # checked (and given its strategy's defaults) before anything runs, DDP launch included
    (candidate, params), = check_candidates(config.model_copy(update={"candidates": [candidate]}), None)
    if not distributed.is_worker():
        drop_partial_checkpoints(out_dir)
        if config.training.nproc > 1 and (callbacks or not evaluate_test or not save):
            raise ConfigError(f"Candidate '{candidate.name}': extra trainer callbacks and training without "
                              "the test split run in one process; set training.nproc to 1.")
        if config.training.nproc > 1:
            per_device_batch(candidate, config.training.nproc)  # fail before launching
            return distributed.launch(config, candidate, snapshot, out_dir, retrain, progress)
    retrain = retrain or RetrainSources()
    strategy = strategies.get_strategy(candidate.strategy)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(candidate.seed)

    labels = snapshot.labels
    tokenizer = models.load_tokenizer(config.model.name, config.model.max_length)
    model = initial_model(config, candidate, labels, retrain)
    if candidate.gradient_checkpointing and strategy.name != "full":
        model.enable_input_require_grads()  # frozen embeddings still need grads to flow
    prepared = strategy.prepare(model, params, candidate.learning_rate, candidate.weight_decay)

    train_frame = rehearsal_mix(snapshot.split("train"), retrain.old_train, candidate.rehearsal_share, candidate.seed)
    vocab = task_vocab(train_frame, candidate.tasks, candidate.name)
    extras = attach_extras(prepared, candidate, vocab)
    target_rows = 0
    if candidate.adaptation is not None:
        texts = retrain.target_texts if retrain.target_texts is not None else target_texts(config, candidate.adaptation)
        train_frame, target_rows = with_target_rows(train_frame, texts), len(texts)
    weights = class_weights(train_frame, labels, candidate.class_weight)  # target rows have no label: not counted
    if weights is not None:
        log_class_weights(labels, weights)
    train_set, val_set = (Encoded(frame, tokenizer, labels, config.model.max_length, vocab)
                          for frame in (train_frame, snapshot.split("validation")))
    test_set = Encoded(snapshot.split("test"), tokenizer, labels, config.model.max_length, vocab) if evaluate_test else None

    from transformers import DataCollatorWithPadding

    collator = DataCollatorWithPadding(tokenizer)
    teacher = load_trained(retrain.teacher_dir)[0].eval() if (candidate.distillation and retrain.teacher_dir) else None
    ewc = None
    if candidate.ewc and retrain.old_train is not None:
        old_set = Encoded(retrain.old_train, tokenizer, labels, config.model.max_length)
        ewc = Ewc.estimate(prepared.model, old_set, collator, candidate.ewc.strength,
                           candidate.ewc.samples, candidate.seed)

    callbacks = [MlflowMetrics(), *(callbacks or [])]
    if progress is not None:
        callbacks.append(ProgressCallback(progress))
    if candidate.early_stopping_patience:
        floor = one_class_macro_f1([row["labels"] for row in val_set.rows])
        callbacks.append(EarlyStopping(candidate.early_stopping_patience, floor))
    trainer = FtopsTrainer(
        model=prepared.model, args=training_arguments(candidate, out_dir, len(train_set), checkpoints=save),
        data_collator=collator, train_dataset=train_set, eval_dataset=val_set,
        processing_class=tokenizer, compute_metrics=compute_metrics, callbacks=callbacks,
        param_groups=prepared.param_groups, label_smoothing=candidate.label_smoothing,
        teacher=teacher, distillation=candidate.distillation, ewc=ewc, extras=extras, class_weights=weights,
    )
    from transformers.trainer_callback import PrinterCallback
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    trainer.remove_callback(PrinterCallback)  # progress goes through `progress`, not print()
    resume = last_checkpoint(out_dir)
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume)
    wall = time.perf_counter() - started

    val_f1 = validation_score(trainer, val_set, save)
    test_out = trainer.predict(test_set, metric_key_prefix="test") if test_set is not None else None
    task_metrics = (extras.task_metrics(trainer.model, test_set, collator)
                    if extras is not None and test_set is not None else {})
    if extras is not None:
        extras.features.remove()
        del prepared.model.ftops_extras  # the saved model is the primary classifier alone
    trained = trainer.model
    if candidate.init == "champion":
        # an adapter on top of the champion's weights cannot be re-applied to the base model
        # by name: save merged, full weights instead.
        trained = strategies.holding(trained).merge(trained)
    history = [h for h in trainer.state.log_history if "eval_macro_f1" in h or "loss" in h]
    result = TrainResult(
        candidate=candidate.name, strategy=strategy.name, out_dir=out_dir,
        trainable=prepared.trainable, total=prepared.total,
        val_macro_f1=float(val_f1),
        test_macro_f1=float(test_out.metrics["test_macro_f1"]) if test_out is not None else None,
        test_accuracy=float(test_out.metrics["test_accuracy"]) if test_out is not None else None,
        samples_per_second=float(output.metrics.get("train_samples_per_second", 0.0)),
        wall_seconds=wall, peak_rss_mb=peak_rss_mb(), global_step=trainer.state.global_step,
        resumed_from=Path(resume).name if resume else None, world_size=trainer.args.world_size,
        extras=describe_extras(candidate), target_rows=target_rows, task_metrics=task_metrics, history=history,
    )
    if not trainer.is_world_process_zero():
        return result  # rank 0 writes the candidate folder
    if save:
        save_trained(trained, tokenizer, labels, config.model.name, out_dir)
        if extras is not None:
            extras.save(out_dir / MODEL_DIR)
    plot_history(history, out_dir / "learning_curves.png", candidate.name)
    if test_out is not None:
        np.save(out_dir / "test_logits.npy", test_out.predictions)
        plot_confusion(test_set, test_out.predictions, labels, out_dir / "confusion_matrix.png", candidate.name)
    # last and atomic: result.json marks the candidate finished (resume keeps it, retention
    # may then drop its checkpoints)
    atomic.write_text(out_dir / RESULT_FILE, json.dumps({**asdict(result), "out_dir": str(out_dir)}, indent=2))
    return result


def validation_score(trainer, val_set, saved: bool) -> float:
    """The best checkpoint's val macro-F1, scored again once it is loaded; without
    checkpoints, the best evaluation's (the same figure, one pass over the split fewer)."""
    evaluated = [h["eval_macro_f1"] for h in trainer.state.log_history if "eval_macro_f1" in h]
    if evaluated and not saved:
        return float(max(evaluated))
    return float(trainer.predict(val_set, metric_key_prefix="val").metrics["val_macro_f1"])


def initial_model(config: Config, candidate: CandidateSection, labels: list[str], retrain: RetrainSources):
    """The pretrained encoder with a fresh head, or, with init=champion when retraining, the
    champion itself (merged if it was an adapter): continued training keeps what it knows."""
    if candidate.init != "champion" or retrain.teacher_dir is None:
        return models.build_classifier(config.model.name, labels, candidate.layers)
    model, _, champion_labels = load_trained(retrain.teacher_dir)
    if champion_labels != labels:
        raise ConfigError(f"Candidate '{candidate.name}' starts from the champion, whose labels "
                          f"{champion_labels} differ from the data's {labels}; use init: base.")
    return strategies.holding(model).merge(model).train()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
