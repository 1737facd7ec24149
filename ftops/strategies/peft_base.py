"""What the peft methods share: the model wrapped by `get_peft_model`, saved as the adapter
alone (+ the head) and loaded onto the base model named in ftops.json, merged with
`merge_and_unload` where the method allows it."""

from __future__ import annotations

from typing import ClassVar

from ftops.strategies.base import Dim, Params, Strategy
from ftops.strategies.groups import decay_groups, prepared


def active_peft_config(model):
    """The active adapter's peft config, or None for a plain model."""
    try:
        from peft import PeftModel
    except ImportError:  # no peft: the model cannot be an adapter model either
        return None
    return model.peft_config[model.active_adapter] if isinstance(model, PeftModel) else None


class PeftStrategy(Strategy):
    learning_rates = Dim.real(1e-4, 1e-2, log=True)
    peft_type: ClassVar[str]  # peft's PeftType value of the method

    def peft_config(self, params: Params):
        raise NotImplementedError

    def prepare(self, model, params, lr, weight_decay):
        from peft import get_peft_model

        wrapped = get_peft_model(model, self.peft_config(params))
        # task_type SEQ_CLS makes peft keep the classification head trainable.
        return prepared(wrapped, decay_groups(list(wrapped.named_parameters()), lr, weight_decay, "peft"),
                        is_peft=True)

    def holds(self, model):
        config = active_peft_config(model)
        return config is not None and config.peft_type == self.peft_type

    def holds_saved(self, folder, meta):
        return bool(meta.get("peft"))  # every peft method loads the same way

    def save(self, model, folder):
        model.save_pretrained(folder)  # the adapter alone (+ the head)
        return {"peft": True}

    def load(self, folder, meta):
        """peft writes an absolute base-model path into adapter_config.json, which breaks
        when the venv moves; the base is resolved by name and the adapter applied to it."""
        from peft import PeftModel

        from ftops import models

        base = models.build_classifier(meta["base_model"], meta["labels"])
        return PeftModel.from_pretrained(base, folder)

    def merge(self, model):
        return model.merge_and_unload()  # a PeftModel saves only its adapter: merged, plain weights
