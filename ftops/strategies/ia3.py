"""IA3: learned rescaling of keys, values and feed-forward activations (peft)."""

from __future__ import annotations

from ftops.strategies.base import Params, register
from ftops.strategies.peft_base import PeftStrategy


class Ia3Params(Params):
    target_modules: list[str] = ["key", "value", "output.dense"]
    feedforward_modules: list[str] = ["output.dense"]


@register
class Ia3(PeftStrategy):
    name = "ia3"
    Params = Ia3Params
    description = "IA3: learned rescaling of keys, values and feed-forward activations (peft)"
    peft_type = "IA3"

    def check(self, params, num_layers):
        extra = set(params.feedforward_modules) - set(params.target_modules)
        if extra:
            raise ValueError(f"feedforward_modules {sorted(extra)} must also be in target_modules")

    def peft_config(self, params):
        from peft import IA3Config, TaskType

        return IA3Config(task_type=TaskType.SEQ_CLS, target_modules=params.target_modules,
                         feedforward_modules=params.feedforward_modules)
