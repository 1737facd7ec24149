"""The training stage: one HF Trainer run per candidate, a TF-IDF baseline beside it, and
the retraining aids (distillation from the champion, EWC, rehearsal).

A trained candidate is a folder: `model/` (full weights, or only the adapter for PEFT with
the base model named in ftops.json), the tokenizer, labels.json, plots and result.json.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score
from transformers import Trainer, TrainerCallback, TrainingArguments

from ftops import adapt, atomic, models, strategies
from ftops.config import AdaptationSection, CandidateSection, Config, DistillationSection, TaskSection
from ftops.errors import ConfigError, DataError, FtopsError

# peft calls a transformers property that transformers 5 renamed; nothing for us to change.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

MODEL_DIR = "model"
META_FILE = "ftops.json"
RESULT_FILE = "result.json"   # written last: a candidate folder with it is finished


@dataclass
class TrainResult:
    candidate: str
    strategy: str
    out_dir: Path
    trainable: int
    total: int
    val_macro_f1: float
    test_macro_f1: float | None  # None: trained without looking at the test split (tuning trials)
    test_accuracy: float | None
    samples_per_second: float
    wall_seconds: float
    peak_rss_mb: float
    global_step: int
    resumed_from: str | None = None
    world_size: int = 1
    extras: str = ""            # domain adaptation / auxiliary tasks, as the CLI table shows them
    target_rows: int = 0        # unlabelled target-domain texts trained on (domain adaptation)
    task_metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # auxiliary heads, test split
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def trainable_share(self) -> float:
        return self.trainable / self.total


@dataclass
class RetrainSources:
    """What a retraining round brings from the champion."""

    teacher_dir: Path | None = None     # a trained candidate folder (the champion)
    old_train: pd.DataFrame | None = None  # the champion's training rows
    target_texts: list[str] | None = None  # unlabelled target-domain texts (else adaptation.target)


# ---------------------------------------------------------------- checks


def check_candidates(config: Config, names: list[str] | None = None) -> list[tuple[CandidateSection, Any]]:
    """Parse every selected candidate's strategy and params against the model, before any
    training starts; unknown names, bad params or impossible settings are ConfigErrors."""
    from transformers import AutoConfig

    chosen = select_candidates(config, names)
    hf_config = AutoConfig.from_pretrained(models.resolve_model(config.model.name), local_files_only=True)
    parsed = []
    for candidate in chosen:
        strategy = strategies.get_strategy(candidate.strategy)
        params = strategies.parse_params(candidate.name, strategy, candidate.params,
                                         hf_config.num_hidden_layers)
        parsed.append((candidate, params))
    return parsed


def select_candidates(config: Config, names: list[str] | None) -> list[CandidateSection]:
    if not names:
        return list(config.candidates)
    known = {c.name: c for c in config.candidates}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"Unknown candidate {', '.join(unknown)}; the config defines: "
                          f"{', '.join(known) or 'none'} (section `candidates`).")
    return [known[n] for n in names]


# ---------------------------------------------------------------- data


DOMAIN_KEY = "ftops_domain"      # batch key: 0 = source row, 1 = unlabelled target row
TASK_PREFIX = "ftops_task_"      # batch key prefix: an auxiliary task's label id


class Encoded(torch.utils.data.Dataset):
    """Tokenised rows; padding is left to the collator (dynamic, per batch).

    A row without a label (an unlabelled target text) gets the ignored label -100, as does
    a row without a value for an auxiliary task; a `ftops_domain` column is carried along.
    """

    def __init__(self, frame: pd.DataFrame, tokenizer, labels: list[str], max_length: int,
                 tasks: dict[str, tuple[str, list[str]]] | None = None):
        label2id = {label: i for i, label in enumerate(labels)}
        encoded = tokenizer(list(frame["text"]), truncation=True, max_length=max_length)
        label_of = frame["label"] if "label" in frame else pd.Series([None] * len(frame))
        self.rows = [
            {"input_ids": ids, "attention_mask": mask,
             "labels": label2id[label] if isinstance(label, str) else adapt.IGNORE}
            for ids, mask, label in zip(encoded["input_ids"], encoded["attention_mask"], label_of)
        ]
        if DOMAIN_KEY in frame:
            for row, domain in zip(self.rows, frame[DOMAIN_KEY]):
                row[DOMAIN_KEY] = int(domain)
        for name, (column, vocab) in (tasks or {}).items():
            index = {value: i for i, value in enumerate(vocab)}
            for row, value in zip(self.rows, frame[column] if column in frame else [None] * len(frame)):
                row[TASK_PREFIX + name] = index.get(value, adapt.IGNORE)
        self.lengths = [len(r["input_ids"]) for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


def rehearsal_mix(new: pd.DataFrame, old: pd.DataFrame | None, share: float, seed: int) -> pd.DataFrame:
    """New rows plus old rows making up `share` of the result, so the model keeps the old
    domain (rehearsal / experience replay)."""
    if old is None or share <= 0:
        return new.assign(rehearsal=False)
    wanted = round(share / (1 - share) * len(new))
    replay = old.sample(n=min(wanted, len(old)), random_state=seed)
    return pd.concat([new.assign(rehearsal=False), replay.assign(rehearsal=True)], ignore_index=True)


# ---------------------------------------------------------------- domain adaptation, multi-task


def task_vocab(frame: pd.DataFrame, tasks: list[TaskSection], candidate: str) -> dict[str, tuple[str, list[str]]]:
    """{task: (column, its classes)} from the training rows; a missing column is a ConfigError."""
    out = {}
    for task in tasks:
        if task.column not in frame:
            have = ", ".join(c for c in frame.columns if c not in ("row", "text", "label"))
            raise ConfigError(f"Candidate '{candidate}': task '{task.name}' reads column '{task.column}', "
                              f"which the data snapshot does not have (it has: {have or 'no extra columns'}).")
        vocab = sorted(frame[task.column].dropna().astype(str).unique())
        if len(vocab) < 2:
            raise ConfigError(f"Candidate '{candidate}': task '{task.name}' needs at least 2 classes in "
                              f"column '{task.column}'; the training rows have {vocab}.")
        out[task.name] = (task.column, vocab)
    return out


def target_texts(config: Config, section: AdaptationSection) -> list[str]:
    """Unlabelled target-domain texts: the prediction log's latest rows, or a data source
    (its labels are not used)."""
    if section.target == "traffic":
        from ftops import predlog

        url = config.resolved().uris.prediction_log
        texts = predlog.read(predlog.engine(url), last=section.max_target_rows)["text"].dropna().tolist()
        where = f"the prediction log ({url})"
    else:
        from ftops import data

        frame, _ = data.read_source(config.data.model_copy(update={"source": section.target}))
        texts = frame["text"].dropna().astype(str).tolist()
        texts = pd.Series(texts).sample(n=min(len(texts), section.max_target_rows), random_state=config.data.seed).tolist()
        where = f"data source {section.target}"
    if len(texts) < 10:
        raise DataError(f"Domain adaptation needs unlabelled target texts; {where} has {len(texts)}. "
                        "Serve traffic first, or set adaptation.target to a data source.")
    return texts


class Extras(torch.nn.Module):
    """What a candidate trains beside its primary head, on the head's own input features:
    a DANN domain classifier and / or auxiliary task heads. Attached to the model while
    training (so the optimizer and DDP see it) and taken off before saving."""

    def __init__(self, model: torch.nn.Module, adaptation: AdaptationSection | None,
                 tasks: list[TaskSection], vocab: dict[str, tuple[str, list[str]]]):
        super().__init__()
        hidden = model.config.hidden_size
        self.adaptation, self.weights = adaptation, {t.name: t.weight for t in tasks}
        self.vocab = vocab
        self.domain = (adapt.DomainClassifier(hidden, adaptation.domain_hidden)
                       if adaptation is not None and adaptation.method == "dann" else None)
        self.tasks = adapt.TaskHeads(hidden, {n: len(v) for n, (_, v) in vocab.items()}) if vocab else None
        self.features = adapt.PooledFeatures(model)

    def loss(self, side: dict[str, torch.Tensor], progress: float) -> dict[str, torch.Tensor]:
        """The extra loss terms of one training batch (the primary loss is the caller's)."""
        # The hook saw the head's input in the autocast dtype (bf16 on CPUs that have it), but
        # the loss runs outside the model's autocast: the small extra heads compute in fp32.
        features, terms = self.features.features.float(), {}
        section = self.adaptation
        if section is not None:
            domain = side[DOMAIN_KEY]
            weight = adapt.reversal_weight(progress, section.weight, section.schedule)
            if self.domain is not None:
                terms["dann"] = adapt.dann_loss(self.domain(features, weight), domain)
            else:
                terms[section.method] = weight * adapt.alignment_loss(
                    section.method, features[domain == 0].float(), features[domain == 1].float())
        if self.tasks is not None:
            labels = {name: side[TASK_PREFIX + name] for name in self.weights}
            terms["tasks"], per_task = adapt.multitask_loss(self.tasks(features), labels, self.weights)
            terms.update({f"task_{name}": value.detach() for name, value in per_task.items()})
        return terms

    @torch.no_grad()
    def task_metrics(self, model, dataset: Encoded, collator, batch_size: int = 64) -> dict[str, dict[str, float]]:
        """Each auxiliary head's accuracy and macro-F1 on a labelled split."""
        if self.tasks is None:
            return {}
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        logits: dict[str, list] = {n: [] for n in self.weights}
        gold: dict[str, list] = {n: [] for n in self.weights}
        for start in range(0, len(dataset), batch_size):
            batch = collator(dataset.rows[start:start + batch_size])
            side = {k: batch.pop(k) for k in list(batch) if k.startswith(TASK_PREFIX) or k == DOMAIN_KEY}
            batch.pop("labels")
            model(**{k: v.to(device) for k, v in batch.items()})
            for name, out in self.tasks(self.features.features.float()).items():
                logits[name].append(out.float().cpu())
                gold[name].append(side[TASK_PREFIX + name])
        model.train(was_training)
        return {n: adapt.task_metrics(torch.cat(logits[n]), torch.cat(gold[n])) for n in self.weights}

    def save(self, folder: Path) -> None:
        """Auxiliary heads beside the primary model (export and serving use the primary)."""
        if self.tasks is None:
            return
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.tasks.state_dict().items()}, folder / "task_heads.safetensors")
        (folder / "tasks.json").write_text(json.dumps(
            {n: {"column": c, "classes": v, "weight": self.weights[n]} for n, (c, v) in self.vocab.items()}, indent=2))


def attach_extras(prepared: strategies.Prepared, candidate: CandidateSection,
                  vocab: dict[str, tuple[str, list[str]]]) -> Extras | None:
    """The candidate's extra heads, as a submodule of the model while it trains (so the
    optimizer and DDP see them), or None without adaptation or tasks."""
    if candidate.adaptation is None and not candidate.tasks:
        return None
    extras = Extras(prepared.model, candidate.adaptation, candidate.tasks, vocab)
    prepared.model.ftops_extras = extras
    prepared.param_groups += strategies.decay_groups(list(extras.named_parameters()), candidate.learning_rate,
                                                     candidate.weight_decay, "extras")
    return extras


def with_target_rows(train_frame: pd.DataFrame, texts: list[str]) -> pd.DataFrame:
    """Labelled source rows (domain 0) + unlabelled target texts (domain 1, no label)."""
    return pd.concat([train_frame.assign(**{DOMAIN_KEY: 0}), pd.DataFrame({"text": texts, DOMAIN_KEY: 1})],
                     ignore_index=True)


def describe_extras(candidate: CandidateSection) -> str:
    parts = []
    if candidate.adaptation is not None:
        a = candidate.adaptation
        parts.append(f"{a.method} w{a.weight:g} ({a.target})")
    parts += [f"+{t.name}" for t in candidate.tasks]
    return " ".join(parts)


# ---------------------------------------------------------------- losses


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                      cfg: DistillationSection, label_smoothing: float = 0.0,
                      weight: torch.Tensor | None = None) -> torch.Tensor:
    """(1 - alpha) CE(labels) + alpha T^2 KL(teacher_T || student_T) (Hinton et al. 2015).
    T^2 keeps the soft-target gradients on the scale of the hard ones; `weight` (class
    weights) applies to the hard labels only: the teacher's soft labels carry no class count."""
    hard = F.cross_entropy(student, labels, weight=weight, label_smoothing=label_smoothing)
    t = cfg.temperature
    soft = F.kl_div(F.log_softmax(student / t, dim=-1), F.log_softmax(teacher / t, dim=-1),
                    reduction="batchmean", log_target=True) * t * t
    return (1 - cfg.alpha) * hard + cfg.alpha * soft


class Ewc:
    """Elastic weight consolidation (Kirkpatrick et al. 2017): penalty
    strength/2 * sum_i F_i (theta_i - theta*_i)^2 with F the diagonal empirical Fisher of
    the old model on old data. Written by hand: no maintained library ships EWC for HF
    models."""

    def __init__(self, fisher: dict[str, torch.Tensor], anchors: dict[str, torch.Tensor], strength: float):
        self.fisher, self.anchors, self.strength = fisher, anchors, strength

    @classmethod
    def estimate(cls, model: torch.nn.Module, dataset: torch.utils.data.Dataset, collator,
                 strength: float, samples: int, seed: int) -> Ewc:
        """Per-row squared gradients of log p(y|x), averaged (one row per backward pass:
        a batch gradient squared is not the Fisher)."""
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        fisher = {n: torch.zeros_like(p) for n, p in params.items()}
        rng = np.random.default_rng(seed)
        indices = rng.choice(len(dataset), size=min(samples, len(dataset)), replace=False)
        was_training = model.training
        model.eval()
        for index in indices:
            batch = collator([dataset[int(index)]])
            labels = batch.pop("labels")
            model.zero_grad()
            log_probs = F.log_softmax(model(**batch).logits, dim=-1)
            log_probs[0, labels[0]].backward()
            for name, p in params.items():
                if p.grad is not None:
                    fisher[name] += p.grad.detach() ** 2 / len(indices)
        model.zero_grad()
        model.train(was_training)
        anchors = {n: p.detach().clone() for n, p in params.items()}
        return cls(fisher, anchors, strength)

    def penalty(self, model: torch.nn.Module) -> torch.Tensor:
        total = torch.zeros((), device=next(model.parameters()).device)
        for name, p in model.named_parameters():
            if name in self.fisher:
                total = total + (self.fisher[name] * (p - self.anchors[name]) ** 2).sum()
        return self.strength / 2 * total


def class_weights(frame: pd.DataFrame, labels: list[str], mode: str) -> torch.Tensor | None:
    """Cross-entropy weights per label id: sklearn's compute_class_weight("balanced") over
    the labelled training rows, n / (classes x rows of the class); None for mode "none". A
    label with no training row gets 1.0 (it is never a target, so its weight is unused)."""
    if mode == "none":
        return None
    from sklearn.utils.class_weight import compute_class_weight

    present = [label for label in labels if (frame["label"] == label).any()]
    rows = frame["label"][frame["label"].isin(present)]
    weights = dict(zip(present, compute_class_weight("balanced", classes=np.array(present), y=rows.to_numpy())))
    return torch.tensor([float(weights.get(label, 1.0)) for label in labels], dtype=torch.float32)


def log_class_weights(labels: list[str], weights: torch.Tensor) -> None:
    """The weights themselves as the param `class_weights` of the active run (rank 0)."""
    import mlflow

    from ftops import distributed

    if mlflow.active_run() is not None and distributed.rank() == 0:
        mlflow.log_param("class_weights", json.dumps({l: round(float(w), 4) for l, w in zip(labels, weights)}))


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


def training_arguments(candidate: CandidateSection, out_dir: Path, n_train: int) -> TrainingArguments:
    from ftops import distributed

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
        eval_strategy="steps", save_strategy="steps", logging_strategy="steps",
        eval_steps=eval_every, save_steps=eval_every, logging_steps=max(1, eval_every // 4),
        save_total_limit=2, load_best_model_at_end=True,
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


class MlflowMetrics(TrainerCallback):
    """Per-step losses and per-evaluation metrics into the active MLflow run."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        import mlflow

        if not state.is_world_process_zero or mlflow.active_run() is None or not logs:
            return
        values = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        mlflow.log_metrics(values, step=state.global_step)


# ---------------------------------------------------------------- the candidate


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
                    evaluate_test: bool = True, callbacks: list[TrainerCallback] | None = None) -> TrainResult:
    """Fine-tune one candidate on a data snapshot; resumes from out_dir's last checkpoint.
    With training.nproc > 1 it runs under torchrun (DDP) and returns rank 0's result.

    evaluate_test=False never reads the test split (hyperparameter search must not see it):
    the result has no test metrics, the folder no test logits or confusion matrix.
    `callbacks` are extra TrainerCallbacks (e.g. a pruner), in this process only."""
    from ftops import distributed

    if not distributed.is_worker():
        drop_partial_checkpoints(out_dir)
        if config.training.nproc > 1 and (callbacks or not evaluate_test):
            raise ConfigError(f"Candidate '{candidate.name}': extra trainer callbacks and training without "
                              "the test split run in one process; set training.nproc to 1.")
        if config.training.nproc > 1:
            per_device_batch(candidate, config.training.nproc)  # fail before launching
            return distributed.launch(config, candidate, snapshot, out_dir, retrain, progress)
    retrain = retrain or RetrainSources()
    strategy = strategies.get_strategy(candidate.strategy)
    (_, params), = check_candidates(config.model_copy(update={"candidates": [candidate]}), None)
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
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=candidate.early_stopping_patience))
    trainer = FtopsTrainer(
        model=prepared.model, args=training_arguments(candidate, out_dir, len(train_set)),
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

    val = trainer.predict(val_set, metric_key_prefix="val").metrics
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
        val_macro_f1=float(val["val_macro_f1"]),
        test_macro_f1=float(test_out.metrics["test_macro_f1"]) if test_out is not None else None,
        test_accuracy=float(test_out.metrics["test_accuracy"]) if test_out is not None else None,
        samples_per_second=float(output.metrics.get("train_samples_per_second", 0.0)),
        wall_seconds=wall, peak_rss_mb=peak_rss_mb(), global_step=trainer.state.global_step,
        resumed_from=Path(resume).name if resume else None, world_size=trainer.args.world_size,
        extras=describe_extras(candidate), target_rows=target_rows, task_metrics=task_metrics, history=history,
    )
    if not trainer.is_world_process_zero():
        return result  # rank 0 writes the candidate folder
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


# ---------------------------------------------------------------- a round of candidates


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
                          test_accuracy=metrics["test_accuracy"], wall_seconds=metrics["wall_seconds"])


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
    with nested_run("baseline", {**lineage, tracking.TAG_CANDIDATE: "baseline"}, existing):
        baseline = fit_baseline(snapshot)
        mlflow.log_metrics({"val_macro_f1": baseline.val_macro_f1, "test_macro_f1": baseline.test_macro_f1,
                            "test_accuracy": baseline.test_accuracy, "wall_seconds": baseline.wall_seconds})
        mlflow.sklearn.log_model(baseline.pipeline, name="model",
                                 pip_requirements=[f"scikit-learn=={sklearn_version()}"])
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


def load_result(out_dir: Path) -> TrainResult:
    """The TrainResult a finished candidate folder holds (written by rank 0 under DDP)."""
    raw = json.loads((Path(out_dir) / RESULT_FILE).read_text())
    return TrainResult(**{**raw, "out_dir": Path(raw["out_dir"])})


def sklearn_version() -> str:
    import sklearn

    return sklearn.__version__


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


def initial_model(config: Config, candidate: CandidateSection, labels: list[str], retrain: RetrainSources):
    """The pretrained encoder with a fresh head, or, with init=champion when retraining, the
    champion itself (merged if it was an adapter): continued training keeps what it knows."""
    if candidate.init != "champion" or retrain.teacher_dir is None:
        return models.build_classifier(config.model.name, labels)
    model, _, champion_labels = load_trained(retrain.teacher_dir)
    if champion_labels != labels:
        raise ConfigError(f"Candidate '{candidate.name}' starts from the champion, whose labels "
                          f"{champion_labels} differ from the data's {labels}; use init: base.")
    return strategies.holding(model).merge(model).train()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- save / load


def save_trained(model, tokenizer, labels: list[str], base_model: str, out_dir: Path) -> None:
    """The model in the form its strategy saves (`Strategy.save`), the tokenizer, and
    ftops.json: what `load_trained` needs to rebuild it by name, offline."""
    target = out_dir / MODEL_DIR
    meta = {"base_model": base_model, "peft": False, "labels": labels}
    meta.update(strategies.holding(model).save(model, target))
    tokenizer.save_pretrained(target)
    (target / "labels.json").write_text(json.dumps(labels))
    (target / META_FILE).write_text(json.dumps(meta, indent=2))


def load_trained(out_dir: Path):
    """(model, tokenizer, labels) of a trained candidate folder, loaded by the strategy
    whose form ftops.json describes (`Strategy.load`)."""
    from transformers import AutoTokenizer

    folder = Path(out_dir) / MODEL_DIR
    meta = json.loads((folder / META_FILE).read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = strategies.saved_in(folder, meta).load(folder, meta)
    return model.eval(), tokenizer, meta["labels"]


# ---------------------------------------------------------------- plots


def plot_history(history: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_macro_f1"], h["eval_loss"]) for h in history if "eval_macro_f1" in h]
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue", alpha=0.7)
    if evals:
        steps, f1, loss = zip(*evals)
        ax.plot(steps, loss, label="val loss", color="tab:orange", marker="o")
        twin = ax.twinx()
        twin.plot(steps, f1, label="val macro-F1", color="tab:green", marker="s")
        twin.set_ylabel("macro-F1")
        twin.legend(loc="lower right")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(loc="upper right")
    ax.set_title(f"{title}: learning curves")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(dataset: Encoded, logits: np.ndarray, labels: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    y_true = [r["labels"] for r in dataset.rows]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ConfusionMatrixDisplay.from_predictions(y_true, logits.argmax(-1), display_labels=labels,
                                            ax=ax, colorbar=False, normalize="true", values_format=".2f")
    ax.set_title(f"{title}: test confusion (row-normalised)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- baseline


@dataclass
class BaselineResult:
    val_macro_f1: float
    test_macro_f1: float
    test_accuracy: float
    wall_seconds: float
    pipeline: Any = None


def fit_baseline(snapshot, seed: int = 13) -> BaselineResult:
    """TF-IDF (word 1-2 grams + char 2-5 grams) + logistic regression: the cheap bar every
    candidate is shown against."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    train, val, test = (snapshot.split(s) for s in ("train", "validation", "test"))
    started = time.perf_counter()
    pipeline = make_pipeline(
        make_union(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                   TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True)),
        LogisticRegression(max_iter=2000, C=4.0, class_weight="balanced", random_state=seed),
    )
    pipeline.fit(train["text"], train["label"])
    wall = time.perf_counter() - started
    val_pred, test_pred = pipeline.predict(val["text"]), pipeline.predict(test["text"])
    return BaselineResult(
        val_macro_f1=float(f1_score(val["label"], val_pred, average="macro")),
        test_macro_f1=float(f1_score(test["label"], test_pred, average="macro")),
        test_accuracy=float(accuracy_score(test["label"], test_pred)),
        wall_seconds=wall, pipeline=pipeline,
    )

