"""The training stage's settings: the base model, the fine-tuning candidates (strategy,
optimisation, distillation, EWC, domain adaptation, auxiliary tasks) and how training runs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from ftops.config.section import Section


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
    learning_rate: float = Field(1e-4, gt=0, description=(
        "AdamW's peak learning rate, reached at the end of the warmup (warmup_share); left out, the "
        "strategy's measured default where it has one (docs/tuning.md, Defaults)"))
    epochs: float = Field(2, gt=0, description="left out, the strategy's measured default where it has one")
    batch_size: int = Field(32, ge=1, description="global batch: split over the processes under DDP")
    gradient_accumulation: int = Field(1, ge=1)
    weight_decay: float = Field(0.01, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weight: Literal["none", "balanced"] = Field("none", description=(
        "balanced: the training cross-entropy weighs each class by n / (classes x its rows), "
        "sklearn's compute_class_weight on the training labels (the validation loss stays unweighted)"))
    warmup_share: float = Field(0.06, ge=0, lt=1)
    scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "linear"
    early_stopping_patience: int = Field(2, ge=0, description=(
        "evaluations without gain, counted once validation macro-F1 beats answering one class "
        "for every text; 0 = off"))
    evals_per_epoch: int = Field(2, ge=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = False
    group_by_length: bool = True
    max_steps: int | None = Field(None, ge=1, description="cap on optimizer steps (quick runs)")
    seed: int = 13
    distillation: DistillationSection | None = None
    ewc: EwcSection | None = None
    rehearsal_share: float = Field(0.0, ge=0, lt=1, description="share of old data mixed into training")
    layers: int | None = Field(None, ge=1, description=(
        "keep the pretrained encoder's first N layers: a smaller student, about N/all of the inference "
        "work (pair it with distillation from the champion); default all; needs init: base"))
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
