"""Full fine-tuning: every weight trains."""

from __future__ import annotations

from ftops.strategies.base import Strategy, register
from ftops.strategies.groups import decay_groups, prepared


@register
class Full(Strategy):
    name = "full"
    description = "every weight trains"

    def prepare(self, model, params, lr, weight_decay):
        return prepared(model, decay_groups(list(model.named_parameters()), lr, weight_decay, "all"))
