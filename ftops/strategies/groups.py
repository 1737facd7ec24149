"""What every strategy needs from the model: its encoder blocks and embeddings, the AdamW
parameter groups (decayed or not), and the trainable / total counts."""

from __future__ import annotations

from typing import Any

from torch import nn

from ftops.strategies.base import Prepared

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a BERT-like encoder (bert/roberta/distilbert naming)."""
    base = getattr(model, model.base_model_prefix)
    encoder = getattr(base, "encoder", None) or getattr(base, "transformer", None)
    return getattr(encoder, "layer")


def embeddings(model: nn.Module) -> nn.Module:
    return getattr(model, model.base_model_prefix).embeddings


def decay_groups(named: list[tuple[str, nn.Parameter]], lr: float, weight_decay: float,
                 name: str) -> list[dict[str, Any]]:
    """Split parameters into weight-decayed and not (biases, LayerNorm), AdamW practice."""
    named = [(n, p) for n, p in named if p.requires_grad]
    decayed = [p for n, p in named if not n.endswith(NO_DECAY)]
    plain = [p for n, p in named if n.endswith(NO_DECAY)]
    groups = [{"params": decayed, "lr": lr, "weight_decay": weight_decay, "name": name},
              {"params": plain, "lr": lr, "weight_decay": 0.0, "name": f"{name}/no_decay"}]
    return [g for g in groups if g["params"]]


def count(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def prepared(model: nn.Module, groups: list[dict[str, Any]], is_peft: bool = False) -> Prepared:
    trainable, total = count(model)
    return Prepared(model, groups, trainable, total, is_peft)
