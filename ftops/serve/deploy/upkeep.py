"""Keeping the model repository in step with the routes: prune what no route names, and
after a server (re)start load the routed versions again, each only once its repository
copy matches what was deployed.

The repository keeps the routed versions (champion, previous, challenger); every other
version of the project is unloaded and removed after each promotion and by `ftops prune`.
"""

from __future__ import annotations

from pathlib import Path

from ftops.config import Config
from ftops.serve import runtime
from ftops.serve.deploy.routes import Route, log, redeploy_hint, routing
from ftops.serve.deploy.trial import unload
from ftops.serve.deployable import Deployable
from ftops.serve.runtime import ServingError


def prune_after(config: Config) -> None:
    """Champion and previous stay loaded (rollback is a re-route); anything older goes. A
    failure here costs disk and memory until the next prune, never the promotion."""
    try:
        prune_repository(config)
    except Exception as exc:  # noqa: BLE001
        log.warning("pruning the repository of %s after a promotion failed: %s", config.project.name, exc)


def prune_repository(config: Config) -> list[str]:
    """Unload and remove every version of this project that no route names (champion,
    previous, challenger); a version being deployed is left alone. The ensembles removed."""
    serving = runtime.get(config)
    endpoint = serving.status()
    repo = serving.repository(endpoint)
    routes = routing(config)
    if not routes:
        return []  # nothing routed (or routing.json lost): no anchor to tell stale from kept
    keep = {r.tag for r in routes.values()}
    stale = [ensemble for tag, ensemble in sorted(repo.versions().items())
             if tag not in keep and not repo.pending(ensemble)]
    if stale and endpoint is not None:
        with serving.client(endpoint) as client:
            for ensemble in stale:
                unload(client, repo, ensemble)
    for ensemble in stale:
        repo.remove(ensemble)
    return stale


def reload_routes(config: Config) -> dict[str, str]:
    """After a server (re)start: load the routed ensembles again, each only once its
    repository copy matches what was deployed; a mismatch raises after the others load."""
    serving = runtime.get(config)
    endpoint = serving.status()
    loaded, refused = {}, []
    if endpoint is None:
        return loaded
    repo = serving.repository(endpoint)
    with serving.client(endpoint) as client:
        for role, route in routing(config).items():
            if repo.holds(route.ensemble) and not client.ready(route.ensemble):
                problems = _restore(repo, route)
                if problems:
                    refused.append(f"{role} {route.ensemble}: {'; '.join(problems)}. {redeploy_hint(route)}")
                    continue
                client.load(route.ensemble)
            loaded[role] = route.ensemble
    if refused:
        raise ServingError("Not loaded, their copies in the model repository are not what was deployed: "
                           + " | ".join(refused))
    return loaded


def _restore(repo: runtime.Repository, route: Route) -> list[str]:
    """What is wrong with a routed version's repository copy, after rewriting it from its
    export when the export itself verifies: a copy without a record (deployed by an older
    ftops) or a damaged one is then served again instead of leaving the route down."""
    problems = repo.problems(route.ensemble)
    if not problems:
        return []
    try:
        model = Deployable.from_export(Path(route.export), route.variant)
    except (ServingError, OSError, ValueError) as exc:
        return [*problems, f"its export cannot restore it ({exc})"]
    repo.put(route.tag, model)
    log.warning("the repository copy of %s did not match what was deployed (%s); rewritten from its verified "
                "export %s", route.ensemble, "; ".join(problems), route.export)
    return repo.problems(route.ensemble)
