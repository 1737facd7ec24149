"""LoRA: low-rank updates of the encoder's linear layers (peft)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ftops.strategies.base import Dim, Params, register
from ftops.strategies.peft_base import PeftStrategy


class LoraParams(Params):
    rank: int = Field(8, ge=1, le=256)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    # All linear layers of the encoder by default: "query, value" only was measured worse
    # than a TF-IDF baseline on this model (bench/train.py).
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


@register
class Lora(PeftStrategy):
    name = "lora"
    Params = LoraParams
    description = "low-rank adapters (peft) on every linear layer of the encoder"
    peft_type = "LORA"
    # target_modules stays out: a list is no Optuna choice, and "all-linear" measured best.
    space = {"rank": Dim.categorical(4, 8, 16, 32), "alpha": Dim.categorical(8, 16, 32, 64),
             "dropout": Dim.real(0.0, 0.3)}
    # epochs reach past the shared 1-4: adapters move slowly per step, and the LoRA paper's
    # GLUE runs train many more epochs than full fine-tuning needs.
    candidate_space = {"epochs": Dim.integer(2, 8)}
    # bench/tune.py, 3,000 rows, 9 minutes: the best trials ran 2.8e-3 / 7 epochs (airline
    # tweets) and 1.6e-3 / 6 epochs (movie reviews); a trial at the shared 1e-4 fell about 3 pt short (val F1).
    defaults = {"learning_rate": 2e-3, "epochs": 6}

    def peft_config(self, params):
        from peft import LoraConfig, TaskType

        return LoraConfig(task_type=TaskType.SEQ_CLS, r=params.rank, lora_alpha=params.alpha,
                          lora_dropout=params.dropout, target_modules=params.target_modules)
