"""Partial freezing: the embeddings and the bottom encoder layers keep their pretrained
weights, the rest trains."""

from __future__ import annotations

from pydantic import Field

from ftops.strategies.base import Dim, Params, Strategy, register
from ftops.strategies.groups import decay_groups, embeddings, encoder_layers, prepared


class FreezeParams(Params):
    layers: int = Field(3, ge=0, description="bottom encoder layers frozen (embeddings always)")


@register
class Freeze(Strategy):
    name = "freeze"
    Params = FreezeParams
    description = "embeddings and the bottom N encoder layers frozen"
    # up to 4 of MiniLM's 6 layers; never all of a smaller model's (only the head would train)
    space = {"layers": Dim.integer(0, 4)}
    layer_counts = ("layers",)

    def check(self, params, num_layers):
        if params.layers > num_layers:
            raise ValueError(f"layers={params.layers} but the model has {num_layers} encoder layers")

    def prepare(self, model, params, lr, weight_decay):
        frozen = [embeddings(model), *encoder_layers(model)[: params.layers]]
        for module in frozen:
            module.requires_grad_(False)
        return prepared(model, decay_groups(list(model.named_parameters()), lr, weight_decay, "unfrozen"))
