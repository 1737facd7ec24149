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
        strategy = strategies.get_strategy(candidate.strategy)
        params = strategies.parse_params(candidate.name, strategy, candidate.params,
                                         hf_config.num_hidden_layers)
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
