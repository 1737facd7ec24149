"""Staging: a version loaded as the `challenger` route (smoke-tested, not promoted) for the
gateway's A/B split and shadow policies, and unstaging it again."""

from __future__ import annotations

from pathlib import Path

from ftops import registry
from ftops.config import Config
from ftops.lock import promotion_lock
from ftops.names import CHALLENGER, CHAMPION
from ftops.serve.deploy import gates
from ftops.serve.deploy.routes import Route, best_effort, follow, routing, save_routing
from ftops.serve.deploy.trial import candidate, trial
from ftops.serve.runtime import ServingError


def stage(config: Config, export_dir: Path, texts: list[str], version: str | None = None,
          variant: str | None = None) -> Route:
    """Load a version as the `challenger` route (smoke-tested, not promoted): the gateway's
    A/B split and shadow policies send traffic to it. The champion cannot be staged, the
    challenger again is a no-op, and a failed smoke test removes only what this call added."""
    new = candidate(config, export_dir, version, variant)
    tag, route = new.route.tag, new.route
    with promotion_lock(config, f"stage {tag}"):
        routes = routing(config)
        if routes.get(CHAMPION) is not None and routes[CHAMPION].tag == tag:
            raise ServingError(f"{tag} is the champion; it cannot be its own challenger. Nothing was changed.")
        if routes.get(CHALLENGER) is not None and routes[CHALLENGER].tag == tag:
            return routes[CHALLENGER]
        with trial(new, routes) as on_trial:
            on_trial.load()
            check = gates.smoke_trial(on_trial, texts)
            if not check["passed"]:
                raise ServingError(f"Challenger {route.ensemble} answers differently from its export: {check}. "
                                   "It was not staged; what serves is unchanged.")
            routes = routing(config)
            routes[CHALLENGER] = route
            save_routing(config, routes)
            on_trial.kept = True
        follow(config)
    return route


def unstage(config: Config) -> None:
    """Drop the challenger route (its models stay loaded until the next deploy clears them),
    and the registry's challenger alias if it named that version."""
    with promotion_lock(config, "unstage"):
        routes = routing(config)
        dropped = routes.pop(CHALLENGER, None)
        if dropped is None:
            return
        save_routing(config, routes)
        if dropped.version is not None:
            best_effort(_drop_challenger_alias, config, str(dropped.version))


def _drop_challenger_alias(config: Config, version: str) -> None:
    if registry.aliases(config).get(CHALLENGER) == version:
        registry.client(config).delete_registered_model_alias(registry.model_name(config), CHALLENGER)
