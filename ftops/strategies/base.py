"""The strategy contract and its registry.

A strategy is one class: its `Params` (validated before any training starts), `prepare`
(adapt the model, return the optimizer's parameter groups) and the hooks for what it
leaves behind, as peft's tuners have them: `save` / `load` of the trained model, `merge`
(fold an adapter into plain weights) and `exportable` (can ONNX trace it). The default
hooks fit a plain model; a method with another saved form overrides them.

`@register` puts a strategy in the registry, from any module (a method file here, a
plugin, a test).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from ftops.errors import ConfigError


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

    def below(self, limit: int) -> Dim:
        """This int range with its top lowered to at most `limit - 1` (never under `low`)."""
        return Dim.integer(int(self.low), int(max(self.low, min(self.high, limit - 1))), self.log)

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
    # Params fields that count encoder layers: their search range stops below the model's
    # layer count (never all of a small model's layers).
    layer_counts: ClassVar[tuple[str, ...]] = ()
    # The learning rates worth searching: a few trained weights on a frozen encoder (adapters,
    # prompts) move far less per step than the whole model, so they search higher.
    learning_rates: ClassVar[Dim] = Dim.real(1e-5, 1e-3, log=True)
    # Candidate-level dimensions (epochs, batch_size, ...) this strategy searches over another
    # range than every candidate's (`ftops.tune.space.CANDIDATE_SPACE`).
    candidate_space: ClassVar[dict[str, Dim]] = {}
    # Whether the trained model (after `merge`) traces to ONNX as a plain encoder.
    exportable: ClassVar[bool] = True
    # Candidate-level settings (learning_rate, epochs, ...) this strategy trains with when the
    # candidate leaves them out, measured by `bench/tune.py`: one learning rate cannot suit a
    # whole encoder and a few adapter weights alike.
    defaults: ClassVar[dict[str, Any]] = {}

    def with_defaults(self, candidate):
        """`candidate` with this strategy's defaults for the settings its config does not set."""
        missing = {k: v for k, v in self.defaults.items() if k not in candidate.model_fields_set}
        return candidate.model_copy(update=missing) if missing else candidate

    def search_space(self, num_layers: int) -> dict[str, Dim]:
        """`space` for a model of `num_layers` encoder layers."""
        return {key: dim.below(num_layers) if key in self.layer_counts else dim for key, dim in self.space.items()}

    def check(self, params: Params, num_layers: int) -> None:
        """Raise ValueError for settings that do not fit the model (before training)."""

    def prepare(self, model: nn.Module, params: Params, lr: float, weight_decay: float) -> Prepared:
        raise NotImplementedError

    # ------------------------------------------------------------ the trained model

    def holds(self, model: nn.Module) -> bool:
        """Whether `model` is in this strategy's trained form (a plain model is nobody's)."""
        return False

    def holds_saved(self, folder: Path, meta: dict[str, Any]) -> bool:
        """Whether the saved model in `folder` (ftops.json read as `meta`) is in this form."""
        return False

    def save(self, model: nn.Module, folder: Path) -> dict[str, Any]:
        """Write the trained model into `folder`; returns what ftops.json must add for `load`."""
        model.save_pretrained(folder)
        return {}

    def load(self, folder: Path, meta: dict[str, Any]) -> nn.Module:
        """The model `save` wrote into `folder`."""
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True)

    def merge(self, model: nn.Module) -> nn.Module:
        """The model with its adapter folded into plain weights; as it is when there is none."""
        return model


STRATEGIES: dict[str, Strategy] = {}


def register(strategy: type[Strategy] | Strategy):
    """Add a strategy (class or instance) to the registry under its name; usable as a class
    decorator. A name already taken by another class is a ValueError."""
    instance = strategy() if isinstance(strategy, type) else strategy
    existing = STRATEGIES.get(instance.name)
    if existing is not None and type(existing) is not type(instance):
        raise ValueError(f"strategy '{instance.name}' is already registered ({type(existing).__qualname__})")
    STRATEGIES[instance.name] = instance
    return strategy


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ConfigError(f"Unknown strategy '{name}'. Available: {', '.join(STRATEGIES)}.") from None


PLAIN = Strategy()  # the hooks of a plain model: save_pretrained / from_pretrained, nothing to merge


def holding(model: nn.Module) -> Strategy:
    """The strategy whose trained form `model` is in (its save / merge / exportable apply)."""
    return next((s for s in STRATEGIES.values() if s.holds(model)), PLAIN)


def saved_in(folder: Path, meta: dict[str, Any]) -> Strategy:
    """The strategy that loads the model saved in `folder` (ftops.json read as `meta`)."""
    return next((s for s in STRATEGIES.values() if s.holds_saved(folder, meta)), PLAIN)


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
