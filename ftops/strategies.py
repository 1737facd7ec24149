"""Fine-tuning strategies behind one registry, each of the same shape (as peft's tuners):
a `Params` model (its own settings, validated before any training starts) and `prepare`,
which adapts the model and returns its optimizer parameter groups.

Adding a strategy is adding one class and one registry entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from ftops.errors import ConfigError

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Dim:
    """One dimension of a search space, as Optuna samples it: a float range (log scale or
    not), an int range, or a list of choices. `Strategy.space` declares a strategy's own,
    keyed by its Params field names; ftops.tune adds the candidate-level ones."""

    kind: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.kind == "categorical":
            if not self.choices:
                raise ValueError("a categorical dimension needs choices")
            return
        if self.low is None or self.high is None or self.low > self.high:
            raise ValueError(f"a {self.kind} dimension needs low <= high, got low={self.low}, high={self.high}")
        if self.kind == "int" and not (float(self.low).is_integer() and float(self.high).is_integer()):
            raise ValueError(f"an int dimension needs whole bounds, got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale dimension needs low > 0, got low={self.low}")

    @classmethod
    def real(cls, low: float, high: float, log: bool = False) -> Dim:
        return cls("float", low, high, log)

    @classmethod
    def integer(cls, low: int, high: int, log: bool = False) -> Dim:
        return cls("int", low, high, log)

    @classmethod
    def categorical(cls, *choices: Any) -> Dim:
        return cls("categorical", choices=tuple(choices))

    def suggest(self, trial, name: str) -> Any:
        """The value an Optuna trial samples for this dimension under `name`."""
        if self.kind == "categorical":
            return trial.suggest_categorical(name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), log=self.log)

    def edges(self) -> list[Any]:
        """The extreme values (each choice): what is checked against the model before any trial."""
        if self.kind == "categorical":
            return list(self.choices)
        cast = int if self.kind == "int" else float
        return [cast(self.low), cast(self.high)]


@dataclass
class Prepared:
    model: nn.Module
    param_groups: list[dict[str, Any]]
    trainable: int
    total: int
    is_peft: bool = False

    @property
    def trainable_share(self) -> float:
        return self.trainable / self.total


class Strategy:
    name: ClassVar[str]
    Params: ClassVar[type[Params]] = Params
    description: ClassVar[str]
    # What `ftops tune` searches for this strategy, keyed by Params field names; a field
    # left out keeps its configured value.
    space: ClassVar[dict[str, Dim]] = {}
    # The learning rates worth searching: a few trained weights on a frozen encoder (adapters,
    # prompts) move far less per step than the whole model, so they search higher.
    learning_rates: ClassVar[Dim] = Dim.real(1e-5, 1e-3, log=True)

    def search_space(self, num_layers: int) -> dict[str, Dim]:
        """`space` for a model of `num_layers` encoder layers (a strategy whose range depends
        on the model narrows it here)."""
        return dict(self.space)

    def check(self, params: Params, num_layers: int) -> None:
        """Raise ValueError for settings that do not fit the model (before training)."""

    def prepare(self, model: nn.Module, params: Params, lr: float, weight_decay: float) -> Prepared:
        raise NotImplementedError


# ---------------------------------------------------------------- helpers


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a BERT-like encoder (bert/roberta/distilbert naming)."""
    base = getattr(model, model.base_model_prefix)
    encoder = getattr(base, "encoder", None) or getattr(base, "transformer", None)
    return getattr(encoder, "layer")


def embeddings(model: nn.Module) -> nn.Module:
    return getattr(model, model.base_model_prefix).embeddings


def decay_groups(named: list[tuple[str, nn.Parameter]], lr: float, weight_decay: float,
                 name: str) -> list[dict[str, Any]]:
    """Split parameters into weight-decayed and not (biases, LayerNorm), AdamW practice."""
    named = [(n, p) for n, p in named if p.requires_grad]
    decayed = [p for n, p in named if not n.endswith(NO_DECAY)]
    plain = [p for n, p in named if n.endswith(NO_DECAY)]
    groups = [{"params": decayed, "lr": lr, "weight_decay": weight_decay, "name": name},
              {"params": plain, "lr": lr, "weight_decay": 0.0, "name": f"{name}/no_decay"}]
    return [g for g in groups if g["params"]]


def count(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def prepared(model: nn.Module, groups: list[dict[str, Any]], is_peft: bool = False) -> Prepared:
    trainable, total = count(model)
    return Prepared(model, groups, trainable, total, is_peft)


# ---------------------------------------------------------------- strategies


class Full(Strategy):
    name = "full"
    description = "every weight trains"

    def prepare(self, model, params, lr, weight_decay):
        return prepared(model, decay_groups(list(model.named_parameters()), lr, weight_decay, "all"))


class FreezeParams(Params):
    layers: int = Field(3, ge=0, description="bottom encoder layers frozen (embeddings always)")


class Freeze(Strategy):
    name = "freeze"
    Params = FreezeParams
    description = "embeddings and the bottom N encoder layers frozen"
    # up to 4 of MiniLM's 6 layers; never all of a smaller model's (only the head would train)
    space = {"layers": Dim.integer(0, 4)}

    def search_space(self, num_layers):
        return {"layers": Dim.integer(0, max(0, min(4, num_layers - 1)))}

    def check(self, params, num_layers):
        if params.layers > num_layers:
            raise ValueError(f"layers={params.layers} but the model has {num_layers} encoder layers")

    def prepare(self, model, params, lr, weight_decay):
        frozen = [embeddings(model), *encoder_layers(model)[: params.layers]]
        for module in frozen:
            module.requires_grad_(False)
        return prepared(model, decay_groups(list(model.named_parameters()), lr, weight_decay, "unfrozen"))


class LlrdParams(Params):
    decay: float = Field(0.85, gt=0, le=1, description="LR multiplier per layer below the head")
    head_lr_multiplier: float = Field(1.0, gt=0, description="discriminative LR: head vs body")


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


class LoraParams(Params):
    rank: int = Field(8, ge=1, le=256)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    # All linear layers of the encoder by default: "query, value" only was measured worse
    # than a TF-IDF baseline on this model (bench/train.py).
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class PeftStrategy(Strategy):
    learning_rates = Dim.real(1e-4, 1e-2, log=True)

    def peft_config(self, params: Params):
        raise NotImplementedError

    def prepare(self, model, params, lr, weight_decay):
        from peft import get_peft_model

        wrapped = get_peft_model(model, self.peft_config(params))
        # task_type SEQ_CLS makes peft keep the classification head trainable.
        return prepared(wrapped, decay_groups(list(wrapped.named_parameters()), lr, weight_decay, "peft"),
                        is_peft=True)


class Lora(PeftStrategy):
    name = "lora"
    Params = LoraParams
    description = "low-rank adapters (peft) on every linear layer of the encoder"
    # target_modules stays out: a list is no Optuna choice, and "all-linear" measured best.
    space = {"rank": Dim.categorical(4, 8, 16, 32), "alpha": Dim.categorical(8, 16, 32, 64),
             "dropout": Dim.real(0.0, 0.3)}

    def peft_config(self, params):
        from peft import LoraConfig, TaskType

        return LoraConfig(task_type=TaskType.SEQ_CLS, r=params.rank, lora_alpha=params.alpha,
                          lora_dropout=params.dropout, target_modules=params.target_modules)


class Ia3Params(Params):
    target_modules: list[str] = ["key", "value", "output.dense"]
    feedforward_modules: list[str] = ["output.dense"]


class Ia3(PeftStrategy):
    name = "ia3"
    Params = Ia3Params
    description = "IA3: learned rescaling of keys, values and feed-forward activations (peft)"

    def check(self, params, num_layers):
        extra = set(params.feedforward_modules) - set(params.target_modules)
        if extra:
            raise ValueError(f"feedforward_modules {sorted(extra)} must also be in target_modules")

    def peft_config(self, params):
        from peft import IA3Config, TaskType

        return IA3Config(task_type=TaskType.SEQ_CLS, target_modules=params.target_modules,
                         feedforward_modules=params.feedforward_modules)


class PromptParams(Params):
    virtual_tokens: int = Field(20, ge=1, le=200)


class PromptTuning(PeftStrategy):
    name = "prompt_tuning"
    Params = PromptParams
    description = "soft prompt tokens prepended to the input; encoder frozen (peft)"
    learning_rates = Dim.real(1e-3, 1e-1, log=True)
    space = {"virtual_tokens": Dim.integer(4, 64, log=True)}

    def peft_config(self, params):
        from peft import PromptTuningConfig, TaskType

        return PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=params.virtual_tokens)


# ---------------------------------------------------------------- bottleneck adapters
#
# Written here rather than taken from AdapterHub's `adapters` library: its latest release
# (1.3.0) declares `Requires-Dist: transformers ~=4.57.6` and patches transformers' model
# classes internally, so installing it would downgrade the pinned transformers 5.23.0
# (read from the 1.3.0 wheel's metadata). peft (pinned) has no bottleneck adapter.
# The module below is small: one adapter class and one linear-layer wrapper.

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
    `insert_adapters` needs to rebuild them (saved in ftops.json by train.save_trained)."""
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


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (Full(), Freeze(), Llrd(), Lora(), Ia3(), PromptTuning(),
                                                       Bottleneck())}


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ConfigError(f"Unknown strategy '{name}'. Available: {', '.join(STRATEGIES)}.") from None


def parse_params(candidate_name: str, strategy: Strategy, params: dict[str, Any], num_layers: int) -> Params:
    """The strategy's own settings of one candidate, or a ConfigError naming the key."""
    try:
        parsed = strategy.Params.model_validate(params)
        strategy.check(parsed, num_layers)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown key '{key}'; allowed: {', '.join(strategy.Params.model_fields) or 'none'}")
            else:
                problems.append(f"'{key}' = {err.get('input')!r}: {err['msg']}")
        raise ConfigError(f"Candidate '{candidate_name}' (strategy {strategy.name}): "
                          f"params {'; '.join(problems)}.") from None
    except ValueError as exc:
        raise ConfigError(f"Candidate '{candidate_name}' (strategy {strategy.name}): {exc}.") from None
    return parsed
