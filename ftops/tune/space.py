"""A candidate's search space: the dimensions every candidate shares, its strategy's own,
the config's overrides (tuning.space) and held values (tuning.fixed), all checked against
the model before any trial runs, so a bad range fails at once and not in trial 17.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ftops import strategies, train
from ftops.config import CandidateSection, Config, DimSection
from ftops.errors import ConfigError
from ftops.strategies import Dim

# Candidate-level settings every strategy shares; a strategy adds its own (Strategy.space)
# and its learning-rate range (Strategy.learning_rates).
CANDIDATE_SPACE: dict[str, Dim] = {
    "epochs": Dim.integer(1, 4),
    "batch_size": Dim.categorical(16, 32, 64),
    "warmup_share": Dim.real(0.0, 0.2),
    "weight_decay": Dim.real(0.0, 0.1),
    "label_smoothing": Dim.real(0.0, 0.2),
    "class_weight": Dim.categorical("none", "balanced"),
}
# Candidate keys that are sections or identity, not a value to search or hold.
NOT_SETTINGS = {"name", "strategy", "params", "distillation", "ewc", "adaptation", "tasks"}

@dataclass
class Plan:
    """What one candidate's study searches (`space`) and holds (`fixed`)."""

    candidate: CandidateSection
    space: dict[str, Dim]
    fixed: dict[str, Any]

    @property
    def strategy(self) -> strategies.Strategy:
        return strategies.get_strategy(self.candidate.strategy)

    def build(self, values: dict[str, Any]) -> CandidateSection:
        """The candidate with `values` (candidate-level keys and strategy params, flat),
        validated by the config's own models."""
        params = {k: v for k, v in values.items() if k in self.strategy.Params.model_fields}
        top = {k: v for k, v in values.items() if k not in params}
        return CandidateSection.model_validate(
            {**self.candidate.model_dump(), **top, "params": {**self.candidate.params, **params}})

    def settings(self, values: dict[str, Any]) -> dict[str, Any]:
        """Flat trial values as the settings file holds them: candidate-level keys + `params`."""
        params = {k: v for k, v in values.items() if k in self.strategy.Params.model_fields}
        return {**{k: v for k, v in values.items() if k not in params}, "params": params}


def candidate_keys() -> list[str]:
    """Candidate-level keys a space or `fixed` may name."""
    return [k for k in CandidateSection.model_fields if k not in NOT_SETTINGS]


def check_tuning(config: Config, names: list[str] | None = None) -> list[Plan]:
    """Every selected candidate's search space, checked before any trial runs: names in
    tuning.space / tuning.fixed that are no candidate, parameters the candidate's strategy
    does not have, ranges whose ends do not fit the model. Each is a ConfigError naming the key."""
    configured = [c.name for c in config.candidates]
    for section in ("space", "fixed"):
        unknown = [n for n in getattr(config.tuning, section) if n not in configured]
        if unknown:
            raise ConfigError(f"tuning.{section}.{unknown[0]}: '{unknown[0]}' is no candidate; the config "
                              f"defines: {', '.join(configured) or 'none'} (section `candidates`).")
    checked = train.check_candidates(config, names)
    num_layers = layer_count(config)
    return [plan_for(config, candidate, num_layers) for candidate, _ in checked]


def layer_count(config: Config) -> int:
    from transformers import AutoConfig

    from ftops import models

    return AutoConfig.from_pretrained(models.resolve_model(config.model.name), local_files_only=True).num_hidden_layers


def plan_for(config: Config, candidate: CandidateSection, num_layers: int) -> Plan:
    strategy = strategies.get_strategy(candidate.strategy)
    overrides = config.tuning.space.get(candidate.name, {})
    fixed = dict(config.tuning.fixed.get(candidate.name, {}))
    for section, keys in (("space", overrides), ("fixed", fixed)):
        for key in keys:
            check_known(f"tuning.{section}.{candidate.name}.{key}", key, candidate.name, strategy)
    space = {**CANDIDATE_SPACE, "learning_rate": strategy.learning_rates, **strategy.candidate_space,
             **strategy.search_space(num_layers)}
    for key, override in overrides.items():
        space[key] = merged_dim(f"tuning.space.{candidate.name}.{key}", space.get(key), override)
    plan = Plan(candidate, {k: v for k, v in space.items() if k not in fixed}, fixed)
    check_edges(plan, num_layers)
    return plan


def check_known(key: str, param: str, candidate: str, strategy: strategies.Strategy) -> None:
    if param in strategy.Params.model_fields or param in candidate_keys():
        return
    own = ", ".join(strategy.Params.model_fields) or "none"
    raise ConfigError(f"{key}: '{param}' is not a parameter of candidate '{candidate}' (strategy "
                      f"{strategy.name}). Strategy {strategy.name} has: {own}; every candidate has: "
                      f"{', '.join(candidate_keys())}.")


def merged_dim(key: str, default: Dim | None, override: DimSection) -> Dim:
    """The default dimension with the override's ends, scale or choices; a parameter with no
    default range needs both ends (or choices)."""
    try:
        if override.choices is not None:
            return Dim.categorical(*override.choices)
        if default is not None and default.kind == "categorical":
            raise ValueError(f"it is searched over choices {list(default.choices)}; give choices: [...]")
        if default is None:
            if override.low is None or override.high is None:
                raise ValueError("it has no default range; give both low and high, or choices")
            whole = all(isinstance(v, int) and not isinstance(v, bool) for v in (override.low, override.high))
            return Dim("int" if whole else "float", override.low, override.high, bool(override.log))
        return Dim(default.kind, default.low if override.low is None else override.low,
                   default.high if override.high is None else override.high,
                   default.log if override.log is None else override.log)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}.") from None


def check_edges(plan: Plan, num_layers: int) -> None:
    """Each end of each range (each choice) must make a valid candidate for this model, so a
    bad range fails now and not in trial 17."""
    for name, dim in plan.space.items():
        for value in dim.edges():
            what = f"tuning.space.{plan.candidate.name}.{name} = {value!r}"
            try:
                candidate = plan.build({**plan.fixed, name: value})
                strategies.parse_params(candidate.name, plan.strategy, candidate.params, num_layers)
            except ValidationError as exc:
                raise ConfigError(f"{what}: {exc.errors()[0]['msg']}.") from None
            except ConfigError as exc:
                raise ConfigError(f"{what}: {exc}") from None
    try:
        candidate = plan.build(plan.fixed)
        strategies.parse_params(candidate.name, plan.strategy, candidate.params, num_layers)
    except ValidationError as exc:
        raise ConfigError(f"tuning.fixed.{plan.candidate.name}: {exc.errors()[0]['msg']}.") from None


def describe(space: dict[str, Dim]) -> dict[str, Any]:
    return {k: list(d.choices) if d.kind == "categorical" else [d.low, d.high] + (["log"] if d.log else [])
            for k, d in space.items()}
