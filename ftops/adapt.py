"""Domain adaptation and multi-task building blocks that work with any strategy (issue 11).

- adversarial (DANN, Ganin & Lempitsky 2015): a domain classifier on the pooled features
  behind a gradient-reversal layer, its weight on a schedule;
- feature alignment: an MMD or KL penalty between source and target feature statistics;
- multi-task: extra heads on the same pooled features, a weighted loss, per-task metrics.

The pooled features are read with a forward pre-hook on the model's own classification
head (`PooledFeatures`), so full fine-tuning and every peft strategy expose the same thing
without changing the model. Hand-written throughout: each piece is a few lines, and the
domain-adaptation libraries are unmaintained (pytorch-adapt: last release 2023) or not on
PyPI (the Transfer-Learning-Library), and are built around their own training loops.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100  # label of a row without a label for a task (cross-entropy's ignore_index)
DEFAULT_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)  # times the median distance: the MMD bandwidths


# ---------------------------------------------------------------- gradient reversal


class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by -weight (Ganin & Lempitsky
    2015), so the encoder learns to *confuse* the domain classifier that sits behind it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = float(weight)
        return x.view_as(x)  # a view, not x itself: autograd needs a new node for backward

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.weight * grad, None


def grad_reverse(x: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    return GradientReversal.apply(x, weight)


def reversal_weight(progress: float, max_weight: float = 1.0,
                    schedule: Literal["ganin", "linear", "constant"] = "ganin",
                    gamma: float = 10.0) -> float:
    """The reversal weight at training `progress` p in [0, 1]. ganin: max (2/(1+e^{-gamma p}) - 1),
    which keeps the noisy early domain signal away from the encoder while the domain
    classifier is still untrained; linear: max p; constant: max."""
    p = min(max(float(progress), 0.0), 1.0)
    if schedule == "ganin":
        return max_weight * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)
    if schedule == "linear":
        return max_weight * p
    if schedule == "constant":
        return float(max_weight)
    raise ValueError(f"Unknown reversal schedule '{schedule}'; use ganin, linear or constant.")


class DomainClassifier(nn.Module):
    """Source-vs-target MLP on the pooled features: hidden -> hidden_dim -> 2 logits. The
    reversal is applied first, so one backward trains this classifier to tell the domains
    apart and the encoder to make them indistinguishable."""

    def __init__(self, hidden: int, hidden_dim: int = 256, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden, hidden_dim), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden_dim, 2))

    def forward(self, features: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        return self.net(grad_reverse(features, weight))


def dann_loss(domain_logits: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the domain classifier; domain 0 = source, 1 = target. Computed in
    fp32: under bf16 autocast the logits may come back in half precision."""
    return F.cross_entropy(domain_logits.float(), domain.long())


# ---------------------------------------------------------------- feature alignment


def _zero(*tensors: torch.Tensor) -> torch.Tensor:
    """A zero that stays on the graph, so `loss.backward()` works even when it is all there is."""
    return sum(t.sum() * 0.0 for t in tensors)


def median_bandwidth(source: torch.Tensor, target: torch.Tensor) -> float:
    """The median pairwise Euclidean distance over both sets (off the diagonal), without
    gradient: the bandwidth is a setting of the penalty, not something to optimise."""
    with torch.no_grad():
        joint = torch.cat([source, target]).float()
        distances = torch.cdist(joint, joint)
        off_diagonal = distances[~torch.eye(len(joint), dtype=torch.bool, device=joint.device)]
        return max(off_diagonal.median().item(), 1e-6)  # identical rows: avoid a zero bandwidth


def mmd(source: torch.Tensor, target: torch.Tensor,
        bandwidths: Sequence[float] | None = None) -> torch.Tensor:
    """Squared maximum mean discrepancy with a sum of Gaussian kernels
    k(x, y) = sum_s exp(-||x - y||^2 / (2 s^2)) (multi-kernel MMD, Long et al. 2015).

    The biased V-statistic: mean K(S,S) + mean K(T,T) - 2 mean K(S,T), diagonals included;
    always >= 0 and lower-variance on small batches than the unbiased U-statistic.
    Bandwidths default to the median distance times DEFAULT_SCALES. A side with fewer
    than 2 rows (a batch may lack one domain) gives zero."""
    if len(source) < 2 or len(target) < 2:
        return _zero(source, target)
    if bandwidths is None:
        median = median_bandwidth(source, target)
        bandwidths = [median * scale for scale in DEFAULT_SCALES]
    s, t = source.float(), target.float()

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        squared = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-squared / (2.0 * bw * bw)) for bw in bandwidths)

    return kernel(s, s).mean() + kernel(t, t).mean() - 2.0 * kernel(s, t).mean()


def kl_alignment(source: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Symmetric KL between diagonal Gaussians fitted to the two sets (per-dimension mean
    and unbiased variance + eps), summed over dimensions:
    (KL(S||T) + KL(T||S)) / 2 = sum_d [(vs + dm^2)/vt + (vt + dm^2)/vs - 2] / 4.
    Symmetric because neither domain is the reference: both sides are the shared
    encoder's output and both should move. Fewer than 2 rows on a side gives zero."""
    if len(source) < 2 or len(target) < 2:
        return _zero(source, target)
    s, t = source.float(), target.float()
    mean_s, mean_t = s.mean(0), t.mean(0)
    var_s, var_t = s.var(0) + eps, t.var(0) + eps
    gap = (mean_s - mean_t).pow(2)
    return ((var_s + gap) / var_t + (var_t + gap) / var_s - 2.0).sum() / 4.0


def alignment_loss(method: Literal["mmd", "kl"], source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if method == "mmd":
        return mmd(source, target)
    if method == "kl":
        return kl_alignment(source, target)
    raise ValueError(f"Unknown alignment method '{method}'; use mmd or kl.")


# ---------------------------------------------------------------- pooled features


def classifier_head(model: nn.Module) -> tuple[str, nn.Module]:
    """The outermost module named `classifier`. Under peft (task_type SEQ_CLS) that is the
    ModulesToSaveWrapper (base_model.model.classifier for LoRA/IA3, base_model.classifier
    for prompt learning); its inner copies are named original_module / modules_to_save.default
    and the wrapper calls only the active one, so hooking the wrapper sees every forward.
    DistilBERT's `pre_classifier` is not matched."""
    found = [(n, m) for n, m in model.named_modules() if n.split(".")[-1] == "classifier"]
    if not found:
        raise ValueError(f"{type(model).__name__} has no module named 'classifier' to read "
                         "pooled features from.")
    return min(found, key=lambda item: item[0].count("."))


class PooledFeatures:
    """Captures the input of the classification head on every forward: `.features` is the
    last batch's pooled representation [B, H], on the graph (gradients flow back into the
    encoder or the adapters). BERT's head gets dropout(pooler output) - so in train mode
    the features carry that dropout; RoBERTa-style heads get the hidden states [B, T, H]
    and the first token is taken, as the head itself does.

    A forward pre-hook, so every strategy works unchanged; remove it (`remove()`, `close()`
    or leaving the `with` block) before exporting the model to ONNX."""

    def __init__(self, model: nn.Module):
        self.name, self.module = classifier_head(model)
        self.features: torch.Tensor | None = None
        self._handle = self.module.register_forward_pre_hook(self._capture)

    def _capture(self, module: nn.Module, args: tuple) -> None:
        x = args[0]
        self.features = x[:, 0] if x.dim() == 3 else x

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.features = None  # do not keep the last batch's graph alive

    close = remove

    def __enter__(self) -> PooledFeatures:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


# ---------------------------------------------------------------- multi-task


class TaskHeads(nn.Module):
    """One head per auxiliary task (dropout + Linear, as BERT's own head) on the shared
    pooled features; the model's own classifier stays the main task."""

    def __init__(self, hidden: int, tasks: Mapping[str, int], dropout: float = 0.1):
        super().__init__()
        self.heads = nn.ModuleDict({name: nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, n))
                                    for name, n in tasks.items()})

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: head(features) for name, head in self.heads.items()}


def multitask_loss(logits_by_task: Mapping[str, torch.Tensor], labels_by_task: Mapping[str, torch.Tensor],
                   weights: Mapping[str, float] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """sum_task weight_task CE_task, each CE the mean over the rows labelled for that task
    (label -100 = no label, not counted). A task with no labelled row in the batch adds a
    graph-connected zero (cross-entropy alone would give 0/0 = NaN). Weights default to 1."""
    weights = weights or {}
    per_task: dict[str, torch.Tensor] = {}
    for name, logits in logits_by_task.items():
        labels = labels_by_task[name].long()
        if (labels != IGNORE).any():
            per_task[name] = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE)
        else:
            per_task[name] = _zero(logits)
    total = sum(weights.get(name, 1.0) * loss for name, loss in per_task.items())
    return total, per_task


def task_metrics(logits, labels) -> dict[str, float]:
    """Accuracy and macro-F1 over the rows labelled for the task (label != -100); NaN when
    none are."""
    from sklearn.metrics import accuracy_score, f1_score

    logits = logits.detach().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
    labels = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    keep = labels != IGNORE
    if not keep.any():
        return {"accuracy": float("nan"), "macro_f1": float("nan")}
    y, p = labels[keep], logits[keep].argmax(-1)
    return {"accuracy": float(accuracy_score(y, p)),
            "macro_f1": float(f1_score(y, p, average="macro", zero_division=0))}
