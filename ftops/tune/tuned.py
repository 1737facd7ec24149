"""Tuned settings as training reads them: `<project dir>/tuning/<candidate>.json`, written
by the study (ftops.tune.study), applied to the configured candidates here. It imports
nothing of the search, so training reads it without importing the search (which trains):
the dependency runs one way, train -> tuned.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ftops.config import CandidateSection, Config
from ftops.errors import ConfigError
from ftops.names import TAG_TUNED_STUDY, TAG_TUNED_TRIAL


@dataclass
class Tuned:
    """A candidate with the tuned settings applied, and where they came from."""

    candidate: CandidateSection
    study: str
    trial: int
    values: dict[str, Any]
    path: Path


def tuned_path(config: Config, candidate: str) -> Path:
    return config.resolved().project.dir / "tuning" / f"{candidate}.json"


def load_tuned(config: Config, candidate: CandidateSection) -> Tuned | None:
    """The candidate with its tuned settings, or None without a settings file or when the
    file was written for another strategy (the config changed since)."""
    path = tuned_path(config, candidate.name)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if record["strategy"] != candidate.strategy:
            return None
        settings = dict(record["settings"])
        params = settings.pop("params", {})
        tuned = CandidateSection.model_validate(
            {**candidate.model_dump(), **settings, "params": {**candidate.params, **params}})
    except ValidationError as exc:
        raise unusable(path, candidate.name, "; ".join(
            f"'{'.'.join(map(str, e['loc']))}' = {e.get('input')!r}: {e['msg']}" for e in exc.errors())) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise unusable(path, candidate.name, f"not a settings file: {exc!r}") from None
    values = {**settings, **({candidate.strategy: params} if params else {})}
    return Tuned(tuned, record["study"], int(record["best_trial"]), values, path)


def unusable(path: Path, candidate: str, why: str) -> ConfigError:
    return ConfigError(f"Tuned settings {path} do not apply to candidate '{candidate}' ({why}). "
                       f"Delete the file, or tune again: `ftops tune --candidates {candidate} --new`.")


def tuned_candidates(config: Config) -> list[CandidateSection]:
    """The config's candidates, each with its tuned settings where it has them."""
    return [found.candidate if (found := load_tuned(config, c)) else c for c in config.candidates]


def tuned_config(config: Config, use: bool) -> tuple[Config, dict[str, Tuned]]:
    """The config with tuned candidates (when `use`), and which candidates were tuned."""
    if not use:
        return config, {}
    found = {c.name: t for c in config.candidates if (t := load_tuned(config, c)) is not None}
    if not found:
        return config, {}
    out = config.model_copy(deep=True)
    out.candidates = [found[c.name].candidate if c.name in found else c for c in config.candidates]
    return out, found


def log_lineage(tuned: Tuned) -> None:
    """On the active (training) run: the study and trial its settings came from, and the
    tuned values as params `tuned.<key>`."""
    import mlflow

    from ftops import tracking

    mlflow.set_tags({TAG_TUNED_STUDY: tuned.study, TAG_TUNED_TRIAL: str(tuned.trial)})
    mlflow.log_params(tracking.flat_params("tuned", tuned.values))
