"""The retraining aids' losses: distillation from the champion, EWC, class weights."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ftops.config import DistillationSection
from ftops.train import distributed


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


    if mlflow.active_run() is not None and distributed.rank() == 0:
        mlflow.log_param("class_weights", json.dumps({l: round(float(w), 4) for l, w in zip(labels, weights)}))
