"""The training stage: one HF Trainer run per candidate, a TF-IDF baseline beside it, and
the retraining aids (distillation from the champion, EWC, rehearsal).

A trained candidate is a folder: `model/` (full weights, or only the adapter for PEFT with
the base model named in ftops.json), the tokenizer, labels.json, plots and result.json.
"""

from __future__ import annotations

import json
import math
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

from ftops import models, strategies
from ftops.config import CandidateSection, Config, DistillationSection
from ftops.errors import ConfigError

# peft calls a transformers property that transformers 5 renamed; nothing for us to change.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

MODEL_DIR = "model"
META_FILE = "ftops.json"


@dataclass
class TrainResult:
    candidate: str
    strategy: str
    out_dir: Path
    trainable: int
    total: int
    val_macro_f1: float
    test_macro_f1: float
    test_accuracy: float
    samples_per_second: float
    wall_seconds: float
    peak_rss_mb: float
    global_step: int
    resumed_from: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def trainable_share(self) -> float:
        return self.trainable / self.total


@dataclass
class RetrainSources:
    """What a retraining round brings from the champion."""

    teacher_dir: Path | None = None     # a trained candidate folder (the champion)
    old_train: pd.DataFrame | None = None  # the champion's training rows


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


class Encoded(torch.utils.data.Dataset):
    """Tokenised rows; padding is left to the collator (dynamic, per batch)."""

    def __init__(self, frame: pd.DataFrame, tokenizer, labels: list[str], max_length: int):
        label2id = {label: i for i, label in enumerate(labels)}
        encoded = tokenizer(list(frame["text"]), truncation=True, max_length=max_length)
        self.rows = [
            {"input_ids": ids, "attention_mask": mask, "labels": label2id[label]}
            for ids, mask, label in zip(encoded["input_ids"], encoded["attention_mask"], frame["label"])
        ]
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


# ---------------------------------------------------------------- losses


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                      cfg: DistillationSection, label_smoothing: float = 0.0) -> torch.Tensor:
    """(1 - alpha) CE(labels) + alpha T^2 KL(teacher_T || student_T) (Hinton et al. 2015).
    T^2 keeps the soft-target gradients on the scale of the hard ones."""
    hard = F.cross_entropy(student, labels, label_smoothing=label_smoothing)
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


class FtopsTrainer(Trainer):
    """HF Trainer with the strategy's parameter groups and the retraining loss terms."""

    def __init__(self, *args, param_groups, label_smoothing=0.0, teacher=None, distillation=None,
                 ewc: Ewc | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.param_groups, self.label_smoothing = param_groups, label_smoothing
        self.teacher, self.distillation, self.ewc = teacher, distillation, ewc

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            groups = [{k: v for k, v in g.items() if k != "name"} for g in self.param_groups]
            self.optimizer = torch.optim.AdamW(groups, lr=self.args.learning_rate)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs.logits
        if self.teacher is not None and model.training:
            with torch.no_grad():
                teacher_logits = self.teacher(**inputs).logits
            loss = distillation_loss(logits, teacher_logits, labels, self.distillation, self.label_smoothing)
        else:
            loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing if model.training else 0.0)
        if self.ewc is not None and model.training:
            loss = loss + self.ewc.penalty(model)
        return (loss, outputs) if return_outputs else loss


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


def training_arguments(candidate: CandidateSection, out_dir: Path, n_train: int) -> TrainingArguments:
    steps_per_epoch = math.ceil(n_train / (candidate.batch_size * candidate.gradient_accumulation))
    total_steps = candidate.max_steps or math.ceil(steps_per_epoch * candidate.epochs)
    eval_every = max(1, min(total_steps, steps_per_epoch // candidate.evals_per_epoch))
    mode = precision(candidate)
    return TrainingArguments(
        output_dir=str(out_dir / "checkpoints"),
        num_train_epochs=candidate.epochs,
        max_steps=candidate.max_steps or -1,
        per_device_train_batch_size=candidate.batch_size,
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
        self.report(state.global_step, state.max_steps, {})

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.report(state.global_step, state.max_steps, metrics or {})


class MlflowMetrics(TrainerCallback):
    """Per-step losses and per-evaluation metrics into the active MLflow run."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        import mlflow

        if mlflow.active_run() is None or not logs:
            return
        values = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        mlflow.log_metrics(values, step=state.global_step)


# ---------------------------------------------------------------- the candidate


def last_checkpoint(out_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    folder = out_dir / "checkpoints"
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def train_candidate(config: Config, candidate: CandidateSection, snapshot, out_dir: Path,
                    retrain: RetrainSources | None = None,
                    progress: Callable[[int, int, dict], None] | None = None) -> TrainResult:
    """Fine-tune one candidate on a data snapshot; resumes from out_dir's last checkpoint."""
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
    train_set = Encoded(train_frame, tokenizer, labels, config.model.max_length)
    val_set = Encoded(snapshot.split("validation"), tokenizer, labels, config.model.max_length)
    test_set = Encoded(snapshot.split("test"), tokenizer, labels, config.model.max_length)

    from transformers import DataCollatorWithPadding

    collator = DataCollatorWithPadding(tokenizer)
    teacher = load_trained(retrain.teacher_dir)[0].eval() if (candidate.distillation and retrain.teacher_dir) else None
    ewc = None
    if candidate.ewc and retrain.old_train is not None:
        old_set = Encoded(retrain.old_train, tokenizer, labels, config.model.max_length)
        ewc = Ewc.estimate(prepared.model, old_set, collator, candidate.ewc.strength,
                           candidate.ewc.samples, candidate.seed)

    callbacks = [MlflowMetrics()]
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
        teacher=teacher, distillation=candidate.distillation, ewc=ewc,
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
    test_out = trainer.predict(test_set, metric_key_prefix="test")
    trained, is_peft = trainer.model, prepared.is_peft
    if is_peft and candidate.init == "champion":
        # an adapter on top of the champion's weights cannot be re-applied to the base model
        # by name: save merged, full weights instead.
        trained, is_peft = trained.merge_and_unload(), False
    save_trained(trained, tokenizer, labels, config.model.name, out_dir, is_peft)
    history = [h for h in trainer.state.log_history if "eval_macro_f1" in h or "loss" in h]
    result = TrainResult(
        candidate=candidate.name, strategy=strategy.name, out_dir=out_dir,
        trainable=prepared.trainable, total=prepared.total,
        val_macro_f1=float(val["val_macro_f1"]), test_macro_f1=float(test_out.metrics["test_macro_f1"]),
        test_accuracy=float(test_out.metrics["test_accuracy"]),
        samples_per_second=float(output.metrics.get("train_samples_per_second", 0.0)),
        wall_seconds=wall, peak_rss_mb=peak_rss_mb(), global_step=trainer.state.global_step,
        resumed_from=Path(resume).name if resume else None, history=history,
    )
    np.save(out_dir / "test_logits.npy", test_out.predictions)
    (out_dir / "result.json").write_text(json.dumps({**asdict(result), "out_dir": str(out_dir)}, indent=2))
    plot_history(history, out_dir / "learning_curves.png", candidate.name)
    plot_confusion(test_set, test_out.predictions, labels, out_dir / "confusion_matrix.png", candidate.name)
    return result


# ---------------------------------------------------------------- a round of candidates


@dataclass
class RoundResult:
    run_id: str
    snapshot_id: str
    baseline: BaselineResult
    candidates: list[tuple[TrainResult, str]]  # (result, MLflow run id)


def train_round(config: Config, snapshot, names: list[str] | None = None,
                retrain: RetrainSources | None = None, parent_model_version: str | None = None,
                progress_for: Callable[[str], Callable[[int, int, dict], None]] | None = None,
                out_root: Path | None = None) -> RoundResult:
    """A parent MLflow run for the round, one nested run per candidate and one for the
    baseline, all with the same lineage tags. Every candidate is checked before any trains."""
    import mlflow

    from ftops import tracking

    chosen = [c for c, _ in check_candidates(config, names)]
    tracking.use_project(config)
    tags = tracking.lineage_tags(config, snapshot, parent_model_version)
    started = time.strftime("%Y%m%d-%H%M%S")
    out_root = out_root or config.resolved().project.dir / "runs" / started
    with mlflow.start_run(run_name=f"round-{started}", tags={**tags, tracking.TAG_ROUND: started}) as parent:
        mlflow.log_params({"snapshot": snapshot.id, "candidates": ",".join(c.name for c in chosen),
                           "model": config.model.name, "max_length": config.model.max_length})
        with mlflow.start_run(run_name="baseline", nested=True, tags={**tags, tracking.TAG_CANDIDATE: "baseline"}):
            baseline = fit_baseline(snapshot)
            mlflow.log_metrics({"val_macro_f1": baseline.val_macro_f1, "test_macro_f1": baseline.test_macro_f1,
                                "test_accuracy": baseline.test_accuracy, "wall_seconds": baseline.wall_seconds})
            mlflow.sklearn.log_model(baseline.pipeline, name="model",
                                     pip_requirements=[f"scikit-learn=={sklearn_version()}"])
        results = []
        for candidate in chosen:
            run_tags = {**tags, tracking.TAG_CANDIDATE: candidate.name, tracking.TAG_STRATEGY: candidate.strategy}
            with mlflow.start_run(run_name=candidate.name, nested=True, tags=run_tags,
                                  log_system_metrics=True) as run:
                mlflow.log_params(tracking.flat_params("", candidate.model_dump(mode="json", exclude={"params"})))
                mlflow.log_params(tracking.flat_params(candidate.strategy, candidate.params))
                report = progress_for(candidate.name) if progress_for else None
                result = train_candidate(config, candidate, snapshot, out_root / candidate.name, retrain, report)
                log_result(result, baseline)
                results.append((result, run.info.run_id))
        mlflow.log_metric("best_test_macro_f1", max((r.test_macro_f1 for r, _ in results), default=0.0))
    return RoundResult(parent.info.run_id, snapshot.id, baseline, results)


def sklearn_version() -> str:
    import sklearn

    return sklearn.__version__


def log_result(result: TrainResult, baseline: BaselineResult) -> None:
    import mlflow

    mlflow.log_params({"trainable_params": result.trainable, "total_params": result.total})
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
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model.train()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- save / load


def save_trained(model, tokenizer, labels: list[str], base_model: str, out_dir: Path, is_peft: bool) -> None:
    target = out_dir / MODEL_DIR
    model.save_pretrained(target)  # a PeftModel saves only its adapter (+ head)
    tokenizer.save_pretrained(target)
    (target / "labels.json").write_text(json.dumps(labels))
    meta = {"base_model": base_model, "peft": is_peft, "labels": labels}
    (target / META_FILE).write_text(json.dumps(meta, indent=2))


def load_trained(out_dir: Path):
    """(model, tokenizer, labels) of a trained candidate folder.

    peft writes an absolute base-model path into adapter_config.json, which breaks when
    the venv moves; the base is resolved by name and the adapter applied to it.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(out_dir) / MODEL_DIR
    meta = json.loads((folder / META_FILE).read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if meta["peft"]:
        from peft import PeftModel

        base = models.build_classifier(meta["base_model"], meta["labels"])
        model = PeftModel.from_pretrained(base, folder)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True)
    return model, tokenizer, meta["labels"]


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

