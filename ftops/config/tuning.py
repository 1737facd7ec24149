"""The tuning stage's settings: search spaces, the pruner and the per-candidate budget."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ftops.config.section import Section


class DimSection(Section):
    """One dimension of a search space: a range (low, high, log) or a list of choices."""

    low: int | float | None = None
    high: int | float | None = None
    log: bool | None = Field(None, description="sample on a log scale (low must be > 0); empty: the default's")
    choices: list[str | int | float | bool] | None = None

    @model_validator(mode="after")
    def _range_or_choices(self) -> DimSection:
        ranged = self.low is not None or self.high is not None or self.log is not None
        if self.choices is not None and ranged:
            raise ValueError("give either low / high / log or choices, not both")
        if self.choices is not None and not self.choices:
            raise ValueError("choices is empty; list at least one value")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        if self.log and self.low is not None and self.low <= 0:
            raise ValueError(f"log needs low > 0, got low = {self.low}")
        return self


class PrunerSection(Section):
    """Stops a trial early when its validation macro-F1 falls behind the earlier trials'."""

    kind: Literal["median", "none"] = Field("median", description=(
        "median: stop a trial whose val macro-F1 at an evaluation is below the median of the earlier "
        "trials' at the same evaluation (Optuna's MedianPruner); none: every trial runs to its end"))
    # 2, not Optuna's 5: on 2 CPUs a trial of 3,000 rows takes 1-4 minutes, and 5 start-up
    # trials used a whole 9-minute budget with nothing pruned (bench/tune.py).
    startup_trials: int = Field(2, ge=0, description="trials that run to their end before any is pruned")
    warmup_evals: int = Field(1, ge=0, description="evaluations of each trial before it may be pruned")


class TuningSection(Section):
    """Hyperparameter search per candidate (`ftops tune`, Optuna): trials, a time budget,
    pruning, and the best settings written back for training (see docs/tuning.md)."""

    enabled: bool = Field(False, description=(
        "the lifecycle's optional tuning step; training uses the tuned settings (<project dir>/tuning/<candidate>.json)"))
    trials: int = Field(20, ge=1, description="trials per candidate and call; the budget ends at trials or minutes, whichever first")
    minutes: float = Field(30, gt=0, description="wall-clock budget per candidate and call")
    on_retrain: Literal["reuse", "search"] = Field("reuse", description=(
        "a retraining lifecycle: reuse: train with the settings tuned before and search only candidates "
        "without any; search: a new study on the retraining data for every candidate"))
    pruner: PrunerSection = PrunerSection()
    sampler_seed: int | None = Field(13, description="seed of the TPE sampler; empty: a fresh seed each call")
    space: dict[str, dict[str, DimSection]] = Field({}, description=(
        "per candidate name, per parameter: {low, high, log} or {choices: [...]}, replacing the "
        "default range of that candidate-level or strategy parameter (or adding one)"))
    fixed: dict[str, dict[str, Any]] = Field({}, description=(
        "per candidate name, parameter values held fixed: taken out of the search, used in every trial"))
