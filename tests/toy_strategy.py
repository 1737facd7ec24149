"""A fine-tuning strategy written the way a user adds one: this file alone, registered on
import, with a trained form of its own (so every hook of the contract is exercised).

"temperature_head": the encoder frozen, the classification head trained together with a
learned temperature that divides its logits. Saved unmerged (the temperature is a weight
of its own in the safetensors file), loaded back into that form, and merged into plain
head weights for export (logits / t == (W / t) x + b / t).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from ftops.strategies import Params, Strategy, decay_groups, prepared, register


class TemperatureHead(nn.Module):
    def __init__(self, head: nn.Linear, temperature: float):
        super().__init__()
        self.head = head
        self.log_t = nn.Parameter(torch.tensor(float(temperature)).log())

    def forward(self, hidden):
        return self.head(hidden) / self.log_t.exp()


def wrapped(model: nn.Module) -> TemperatureHead | None:
    return model.classifier if isinstance(getattr(model, "classifier", None), TemperatureHead) else None


class TemperatureParams(Params):
    temperature: float = Field(2.0, gt=0)


@register
class TemperatureHeadStrategy(Strategy):
    name = "temperature_head"
    Params = TemperatureParams
    description = "head + a learned logit temperature; encoder frozen (a test's own strategy)"

    def prepare(self, model, params, lr, weight_decay):
        model.requires_grad_(False)
        model.classifier = TemperatureHead(model.classifier, params.temperature)
        model.classifier.requires_grad_(True)
        return prepared(model, decay_groups(list(model.named_parameters()), lr, weight_decay, "head"))

    def holds(self, model):
        return wrapped(model) is not None

    def holds_saved(self, folder, meta):
        return "temperature_head" in meta

    def save(self, model, folder):
        model.save_pretrained(folder)
        return {"temperature_head": True}

    def load(self, folder, meta):
        from safetensors.torch import load_file
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True)
        model.classifier = TemperatureHead(model.classifier, 1.0)
        model.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
        return model

    def merge(self, model):
        scaled = wrapped(model)
        if scaled is None:
            return model
        head, t = scaled.head, scaled.log_t.exp().detach()
        with torch.no_grad():
            head.weight /= t
            head.bias /= t
        model.classifier = head
        return model
