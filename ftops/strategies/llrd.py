"""Layer-wise learning-rate decay with a discriminative head learning rate."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from torch import nn

from ftops.strategies.base import Dim, Params, Strategy, register
from ftops.strategies.groups import decay_groups, embeddings, encoder_layers, prepared


class LlrdParams(Params):
    decay: float = Field(0.85, gt=0, le=1, description="LR multiplier per layer below the head")
    head_lr_multiplier: float = Field(1.0, gt=0, description="discriminative LR: head vs body")


@register
class Llrd(Strategy):
    """Layer-wise LR decay (Howard & Ruder 2018; Sun et al. 2019): the head gets
    lr x head_lr_multiplier, the top encoder layer lr, each layer below lr x decay^depth,
    the embeddings lr x decay^num_layers."""

    name = "llrd"
    Params = LlrdParams
    description = "layer-wise learning-rate decay + discriminative head LR"
    space = {"decay": Dim.real(0.6, 1.0), "head_lr_multiplier": Dim.real(1.0, 10.0, log=True)}

    def prepare(self, model, params, lr, weight_decay):
        layers = encoder_layers(model)
        owned: set[int] = set()
        groups: list[dict[str, Any]] = []

        def add(module: nn.Module, group_lr: float, name: str) -> None:
            named = [(n, p) for n, p in module.named_parameters() if id(p) not in owned]
            owned.update(id(p) for _, p in named)
            groups.extend(decay_groups(named, group_lr, weight_decay, name))

        for depth, layer in enumerate(reversed(layers)):
            add(layer, lr * params.decay ** depth, f"layer{len(layers) - 1 - depth}")
        add(embeddings(model), lr * params.decay ** len(layers), "embeddings")
        head = [(n, p) for n, p in model.named_parameters() if id(p) not in owned]
        groups.extend(decay_groups(head, lr * params.head_lr_multiplier, weight_decay, "head"))
        return prepared(model, groups)
