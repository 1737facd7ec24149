"""The HF Trainer with ftops' losses, its arguments (precision, batch) and callbacks."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments

from ftops import adapt
from ftops.config import CandidateSection
from ftops.errors import ConfigError
from ftops.train import distributed
from ftops.train.dataset import DOMAIN_KEY, TASK_PREFIX
from ftops.train.extras import Extras
from ftops.train.losses import Ewc, distillation_loss


class FtopsTrainer(Trainer):
    """HF Trainer with the strategy's parameter groups and the retraining loss terms."""

    def __init__(self, *args, param_groups, label_smoothing=0.0, teacher=None, distillation=None,
                 ewc: Ewc | None = None, extras: Extras | None = None,
                 class_weights: torch.Tensor | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.param_groups, self.label_smoothing = param_groups, label_smoothing
        self.class_weights = class_weights
        self.teacher, self.distillation, self.ewc, self.extras = teacher, distillation, ewc, extras
        self.extra_terms: dict[str, list[float]] = {}

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            groups = [{k: v for k, v in g.items() if k != "name"} for g in self.param_groups]
            self.optimizer = torch.optim.AdamW(groups, lr=self.args.learning_rate)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        side = {k: inputs.pop(k) for k in list(inputs) if k.startswith(TASK_PREFIX) or k == DOMAIN_KEY}
        outputs = model(**inputs)
        logits = outputs.logits
        labelled = labels != adapt.IGNORE  # unlabelled target rows only feed the adaptation terms
        # training only: the validation loss stays the plain one, comparable across candidates
        weight = self.class_weights.to(logits) if self.class_weights is not None and model.training else None
        if not labelled.any():
            loss = logits.sum() * 0.0
        elif self.teacher is not None and model.training:
            with torch.no_grad():
                teacher_logits = self.teacher(**inputs).logits
            loss = distillation_loss(logits[labelled], teacher_logits[labelled], labels[labelled],
                                     self.distillation, self.label_smoothing, weight)
        else:
            loss = F.cross_entropy(logits, labels, weight=weight,
                                   label_smoothing=self.label_smoothing if model.training else 0.0)
        if self.ewc is not None and model.training:
            loss = loss + self.ewc.penalty(model)
        if self.extras is not None and model.training:
            terms = self.extras.loss(side, self.state.global_step / max(1, self.state.max_steps))
            for name, value in terms.items():
                if value.requires_grad:  # per-task values are detached copies, for the logs only
                    loss = loss + value
                self.extra_terms.setdefault(f"{name}_loss", []).append(float(value.detach()))
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Adds the mean of each extra loss term since the last log to the training logs."""
        if "loss" in logs and self.extra_terms:
            logs.update({k: float(np.mean(v)) for k, v in self.extra_terms.items()})
            self.extra_terms = {}
        super().log(logs, *args, **kwargs)


# ---------------------------------------------------------------- arguments


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def precision(candidate: CandidateSection) -> str:
    """auto: bf16 autocast where the hardware computes it natively, fp32 otherwise."""
    if candidate.precision != "auto":
        return candidate.precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if {"avx512_bf16", "amx_bf16"} & cpu_flags() else "fp32"


def per_device_batch(candidate: CandidateSection, world_size: int) -> int:
    """batch_size is the global batch, so N processes take the same optimizer steps as one."""
    if candidate.batch_size % world_size:
        raise ConfigError(f"Candidate '{candidate.name}': batch_size {candidate.batch_size} does not split "
                          f"over {world_size} processes; use a multiple of {world_size}.")
    return candidate.batch_size // world_size


def training_arguments(candidate: CandidateSection, out_dir: Path, n_train: int,
                       checkpoints: bool = True) -> TrainingArguments:
    """checkpoints=False: no checkpoint at each evaluation and no best model loaded at the end
    (a tuning trial needs only its evaluations' scores). Each MiniLM checkpoint writes its
    weights and optimizer state: on 2 CPU cores a 2-epoch trial on 2,100 tweets with 4
    evaluations took 43.6 s with them, 38.9 s without (medians of 2)."""

    steps_per_epoch = math.ceil(n_train / (candidate.batch_size * candidate.gradient_accumulation))
    total_steps = candidate.max_steps or math.ceil(steps_per_epoch * candidate.epochs)
    eval_every = max(1, min(total_steps, steps_per_epoch // candidate.evals_per_epoch))
    mode = precision(candidate)
    return TrainingArguments(
        output_dir=str(out_dir / "checkpoints"),
        num_train_epochs=candidate.epochs,
        max_steps=candidate.max_steps or -1,
        per_device_train_batch_size=per_device_batch(candidate, distributed.world_size()),
        per_device_eval_batch_size=max(64, candidate.batch_size),
        gradient_accumulation_steps=candidate.gradient_accumulation,
        learning_rate=candidate.learning_rate,
        weight_decay=candidate.weight_decay,
        lr_scheduler_type=candidate.scheduler,
        warmup_steps=round(candidate.warmup_share * total_steps),
        eval_strategy="steps", save_strategy="steps" if checkpoints else "no", logging_strategy="steps",
        eval_steps=eval_every, save_steps=eval_every, logging_steps=max(1, eval_every // 4),
        save_total_limit=2, load_best_model_at_end=checkpoints,
        metric_for_best_model="macro_f1", greater_is_better=True,
        bf16=mode == "bf16", fp16=mode == "fp16", use_cpu=not torch.cuda.is_available(),
        activation_checkpointing=candidate.gradient_checkpointing,
        train_sampling_strategy="group_by_length" if candidate.group_by_length else "random",
        seed=candidate.seed, data_seed=candidate.seed,
        report_to="none", disable_tqdm=True, remove_unused_columns=False,
        ddp_backend=os.environ.get("FTOPS_DDP_BACKEND") if distributed.is_worker() else None,
        # every trainable parameter gets a gradient each step (frozen ones are not in DDP's
        # reducer); the unused-parameter search would only cost a graph walk per step.
        ddp_find_unused_parameters=False,
    )


def compute_metrics(eval_pred) -> dict[str, float]:
    predictions = np.argmax(eval_pred.predictions, axis=-1)
    return {"accuracy": accuracy_score(eval_pred.label_ids, predictions),
            "macro_f1": f1_score(eval_pred.label_ids, predictions, average="macro")}


# ---------------------------------------------------------------- callbacks


class ProgressCallback(TrainerCallback):
    """Forwards (step, total, latest metrics) to a caller-supplied function (the CLI's bar)."""

    def __init__(self, report: Callable[[int, int, dict], None]):
        self.report = report

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.report(state.global_step, state.max_steps, {})

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if state.is_world_process_zero:
            self.report(state.global_step, state.max_steps, metrics or {})


def one_class_macro_f1(label_ids) -> float:
    """The best macro-F1 of a model that answers the same class for every row: what a
    classifier scores before it has learned anything from the texts."""
    y = np.asarray(label_ids)
    y = y[y >= 0]  # rows without a label (ignored, -100)
    return max((f1_score(y, np.full_like(y, c), average="macro") for c in np.unique(y)), default=0.0)


class EarlyStopping(EarlyStoppingCallback):
    """HF's early stopping, whose patience only starts once validation macro-F1 has beaten
    `floor` (one_class_macro_f1 of the validation labels). LoRA on this encoder answered
    the majority class of movie reviews for up to 9 of its 12 evaluations before it learned,
    and HF's rule stopped it there (test macro-F1 0.232; 0.568 with this rule). Without
    checkpoints (a tuning trial) it skips HF's start-up warning that no best model will be
    loaded: none is wanted there."""

    def __init__(self, early_stopping_patience: int, floor: float = 0.0):
        super().__init__(early_stopping_patience=early_stopping_patience)
        self.floor = floor

    def check_metric_value(self, args, state, control, metric_value):
        super().check_metric_value(args, state, control, metric_value)
        best = metric_value if state.best_metric is None else max(metric_value, state.best_metric)
        if best <= self.floor + 1e-9:  # still at one class: not learning yet, not stalled
            self.early_stopping_patience_counter = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if args.load_best_model_at_end:
            super().on_train_begin(args, state, control, **kwargs)


class MlflowMetrics(TrainerCallback):
    """Per-step losses and per-evaluation metrics into the active MLflow run."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        import mlflow

        if not state.is_world_process_zero or mlflow.active_run() is None or not logs:
            return
        values = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        mlflow.log_metrics(values, step=state.global_step)
