"""Prompt tuning: soft prompt tokens prepended to the input, the encoder frozen (peft).

peft prepends the learned prompt to every input at run time: it cannot be folded into the
weights, so the model is neither merged nor exportable to ONNX as a plain encoder.
"""

from __future__ import annotations

from pydantic import Field

from ftops.strategies.base import Dim, Params, register
from ftops.strategies.peft_base import PeftStrategy


class PromptParams(Params):
    virtual_tokens: int = Field(20, ge=1, le=200)


@register
class PromptTuning(PeftStrategy):
    name = "prompt_tuning"
    Params = PromptParams
    description = "soft prompt tokens prepended to the input; encoder frozen (peft)"
    peft_type = "PROMPT_TUNING"
    learning_rates = Dim.real(1e-3, 1e-1, log=True)
    space = {"virtual_tokens": Dim.integer(4, 64, log=True)}
    exportable = False

    def peft_config(self, params):
        from peft import PromptTuningConfig, TaskType

        return PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=params.virtual_tokens)

    def merge(self, model):
        return model  # nothing to merge: the prompt stays an input
