"""Candidates checked against the model before any training starts."""

from __future__ import annotations

from typing import Any

from ftops import models, strategies
from ftops.config import CandidateSection, Config
from ftops.errors import ConfigError


def check_candidates(config: Config, names: list[str] | None = None) -> list[tuple[CandidateSection, Any]]:
    """Parse every selected candidate's strategy and params against the model, before any
    training starts; unknown names, bad params or impossible settings are ConfigErrors."""
    from transformers import AutoConfig

    chosen = select_candidates(config, names)
    hf_config = AutoConfig.from_pretrained(models.resolve_model(config.model.name), local_files_only=True)
    parsed = []
    for candidate in chosen:
        _check_layers(candidate, hf_config.num_hidden_layers)
        strategy = strategies.get_strategy(candidate.strategy)
        candidate = strategy.with_defaults(candidate)
        params = strategies.parse_params(candidate.name, strategy, candidate.params,
                                         candidate.layers or hf_config.num_hidden_layers)
        parsed.append((candidate, params))
    return parsed


def select_candidates(config: Config, names: list[str] | None) -> list[CandidateSection]:
    if not names:
        return list(config.candidates)
    known = {c.name: c for c in config.candidates}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"Unknown candidate {', '.join(unknown)}; the config defines: "
                          f"{', '.join(known) or 'none'} (section `candidates`).")
    return [known[n] for n in names]


def _check_layers(candidate: CandidateSection, available: int) -> None:
    if candidate.layers is None:
        return
    if candidate.layers > available:
        raise ConfigError(f"Candidate '{candidate.name}': layers is {candidate.layers}, but the model has "
                          f"{available} encoder layers. Lower `layers` (a student keeps the first N).")
    if candidate.init == "champion":
        raise ConfigError(f"Candidate '{candidate.name}': layers builds a smaller student from the pretrained "
                          "model, which init: champion would replace. Use init: base with distillation to "
                          "learn from the champion.")
