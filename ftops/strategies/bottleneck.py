"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020).

Written here rather than taken from AdapterHub's `adapters` library: its latest release
(1.3.0) declares `Requires-Dist: transformers ~=4.57.6` and patches transformers' model
classes internally, so installing it would downgrade the pinned transformers 5.23.0
(read from the 1.3.0 wheel's metadata). peft (pinned) has no bottleneck adapter.
The module is small: one adapter class and one linear-layer wrapper.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from torch import nn

from ftops.strategies.base import Dim, Params, Strategy, register
from ftops.strategies.groups import decay_groups, encoder_layers, prepared

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU}

# Where the adapters go, per block: the output projection of the feed-forward network
# (Pfeiffer et al. 2020) and, with placement=both, of the attention too (Houlsby et al.
# 2019); in both places before the block's residual add + LayerNorm. The names are
# tried in order: BERT/RoBERTa/ELECTRA, then DistilBERT.
ADAPTER_SITES = {"attention": ("attention.output.dense", "attention.out_lin"),
                 "ffn": ("output.dense", "ffn.lin2")}


class BottleneckAdapter(nn.Module):
    """The adapter's residual branch up(dropout(act(down(h)))). `up` starts at zero, so an
    adapted model computes exactly what the pretrained one does until it trains."""

    def __init__(self, hidden: int, bottleneck: int, activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        self.config = {"hidden": hidden, "bottleneck": bottleneck, "activation": activation, "dropout": dropout}
        self.down = nn.Linear(hidden, bottleneck)
        self.act = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden):
        return self.up(self.dropout(self.act(self.down(hidden))))


class AdaptedLinear(nn.Linear):
    """A linear layer followed by a bottleneck adapter: y = Wx + b, then y + adapter(y).

    It holds the very Parameters of the layer it replaces under the same names, so the
    encoder's state-dict keys (`...output.dense.weight`) are unchanged and the adapter's
    weights are ordinary submodule keys (`...output.dense.adapter.down.weight`): in
    named_parameters, the optimizer, save_pretrained and ONNX tracing, with no hooks."""

    def __init__(self, linear: nn.Linear, adapter: BottleneckAdapter):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.adapter = adapter

    def forward(self, x):
        hidden = super().forward(x)
        return hidden + self.adapter(hidden)


def adapter_sites(model: nn.Module, placement: str, layers: list[int] | None = None) -> list[str]:
    """Full module names of the linear layers that get an adapter."""
    names = {id(m): n for n, m in model.named_modules()}
    chosen = range(len(encoder_layers(model))) if layers is None else sorted(layers)
    kinds = ("attention", "ffn") if placement == "both" else ("ffn",)
    sites = []
    for index in chosen:
        layer = encoder_layers(model)[index]
        for kind in kinds:
            found = next((c for c in ADAPTER_SITES[kind] if isinstance(submodule(layer, c), nn.Linear)), None)
            if found is None:
                raise ValueError(f"encoder layer {index} ({type(layer).__name__}) has no {kind} output "
                                 f"projection named {' or '.join(ADAPTER_SITES[kind])}")
            sites.append(f"{names[id(layer)]}.{found}")
    return sites


def submodule(module: nn.Module, name: str) -> nn.Module | None:
    try:
        return module.get_submodule(name)
    except AttributeError:
        return None


def insert_adapters(model: nn.Module, adapters: dict[str, dict[str, Any]]) -> list[BottleneckAdapter]:
    """Wrap each named linear layer with a fresh adapter of the given config (see
    `adapter_configs`); an already adapted layer with the same config is kept as it is
    (e.g. a champion trained with adapters, trained on)."""
    inserted = []
    for name, config in adapters.items():
        linear = model.get_submodule(name)
        if isinstance(linear, AdaptedLinear):
            if linear.adapter.config != config:
                raise ValueError(f"{name} already has an adapter {linear.adapter.config}, not {config}")
            inserted.append(linear.adapter)
            continue
        adapter = BottleneckAdapter(**config).to(device=linear.weight.device, dtype=linear.weight.dtype)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, AdaptedLinear(linear, adapter))
        inserted.append(adapter)
    return inserted


def adapter_configs(model: nn.Module) -> dict[str, dict[str, Any]]:
    """{module name: adapter config} of the adapted layers of a model; {} when none. What
    `insert_adapters` needs to rebuild them (saved in ftops.json by `Bottleneck.save`)."""
    return {n: dict(m.adapter.config) for n, m in model.named_modules() if isinstance(m, AdaptedLinear)}


class BottleneckParams(Params):
    reduction_factor: int = Field(16, ge=1, le=4096, description=(
        "hidden size / bottleneck size (at least 1 bottleneck unit, as in AdapterHub)"))
    activation: Literal["relu", "gelu"] = "relu"
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the bottleneck activations")
    placement: Literal["ffn", "both"] = Field("ffn", description=(
        "ffn: after each feed-forward block (Pfeiffer); both: after attention too (Houlsby)"))
    layers: list[int] | None = Field(None, description="encoder layers that get adapters; all by default")
    train_layer_norm: bool = Field(False, description="the encoder's LayerNorms train too")


@register
class Bottleneck(Strategy):
    """Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020): a small
    down-project / activation / up-project network with a residual connection after the
    feed-forward (and optionally attention) output projection of each encoder layer. The
    whole base model (embeddings, encoder, pooler) is frozen, as in AdapterHub's
    train_adapter; the adapters and the classification head train."""

    name = "bottleneck"
    Params = BottleneckParams
    description = "bottleneck adapters between encoder layers; encoder frozen"
    learning_rates = Dim.real(1e-4, 1e-2, log=True)
    space = {"reduction_factor": Dim.categorical(8, 16, 32, 64), "dropout": Dim.real(0.0, 0.2),
             "placement": Dim.categorical("ffn", "both")}

    def check(self, params, num_layers):
        if params.layers is not None:
            wrong = sorted({i for i in params.layers if not 0 <= i < num_layers})
            if wrong:
                raise ValueError(f"layers {wrong} out of range: the model has {num_layers} encoder "
                                 f"layers (0 to {num_layers - 1})")
            if len(set(params.layers)) != len(params.layers) or not params.layers:
                raise ValueError(f"layers={params.layers} must be distinct and not empty")

    def prepare(self, model, params, lr, weight_decay):
        hidden = model.config.hidden_size
        config = {"hidden": hidden, "bottleneck": max(1, hidden // params.reduction_factor),
                  "activation": params.activation, "dropout": params.dropout}
        sites = adapter_sites(model, params.placement, params.layers)
        getattr(model, model.base_model_prefix).requires_grad_(False)
        for adapter in insert_adapters(model, dict.fromkeys(sites, config)):
            adapter.requires_grad_(True)
        if params.train_layer_norm:
            for module in encoder_layers(model).modules():
                if isinstance(module, nn.LayerNorm):
                    module.requires_grad_(True)
        return prepared(model, decay_groups(list(model.named_parameters()), lr, weight_decay, "bottleneck"))



    def holds(self, model):
        return bool(adapter_configs(model))

    def holds_saved(self, folder, meta):
        return bool(meta.get("bottleneck"))

    def save(self, model, folder):
        model.save_pretrained(folder)  # the adapters' weights are ordinary state-dict keys
        return {"bottleneck": {"adapters": adapter_configs(model)}}

    def load(self, folder: Path, meta: dict[str, Any]) -> nn.Module:
        """The architecture from the folder, the adapters re-inserted where ftops.json says,
        then every saved weight loaded: from_pretrained alone would drop the adapter keys."""
        from safetensors.torch import load_file
        from transformers import AutoModelForSequenceClassification
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the adapter keys are "unexpected" to from_pretrained
        try:
            model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True)
        finally:
            hf_logging.set_verbosity(verbosity)
        insert_adapters(model, meta["bottleneck"]["adapters"])
        state = {}
        for shard in sorted(folder.glob("model*.safetensors")):  # not task_heads.safetensors
            state.update(load_file(shard))
        # strict: a missing or extra key is an error, not a silently random adapter
        model.load_state_dict(state, strict=True)
        return model
