"""Fine-tuning strategies behind one registry, each of the same shape (as peft's tuners):
a `Params` model, `prepare`, and the hooks for what training leaves behind (`save`,
`load`, `merge`, `exportable`); see ftops.strategies.base for the contract.

Adding a strategy is one module with one `@register`ed class; importing this package
registers the built-in ones.
"""

from ftops.strategies.base import (PLAIN, STRATEGIES, Dim, Params, Prepared, Strategy, get_strategy, holding,
                                   parse_params, register, saved_in)
from ftops.strategies.groups import NO_DECAY, count, decay_groups, embeddings, encoder_layers, prepared
from ftops.strategies import full, freeze, llrd, lora, ia3, prompt_tuning, bottleneck  # noqa: E402,F401  registers
from ftops.strategies.bottleneck import AdaptedLinear, BottleneckAdapter, adapter_configs, insert_adapters

__all__ = ["NO_DECAY", "PLAIN", "STRATEGIES", "AdaptedLinear", "BottleneckAdapter", "Dim", "Params", "Prepared",
           "Strategy", "adapter_configs", "count", "decay_groups", "embeddings", "encoder_layers",
           "get_strategy", "holding", "insert_adapters", "parse_params", "prepared", "register", "saved_in"]
