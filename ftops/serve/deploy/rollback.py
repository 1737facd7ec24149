"""Rollback: route back to the previous version, a re-route, not a redeploy (the previous
version stays loaded after a promotion, and is reloaded if it is not)."""

from __future__ import annotations

from ftops import registry
from ftops.config import Config
from ftops.lock import promotion_lock
from ftops.names import CHAMPION, PREVIOUS
from ftops.serve import runtime
from ftops.serve.deploy.routes import Route, best_effort, follow, redeploy_hint, routing, switch
from ftops.serve.runtime import ServingError


def rollback(config: Config) -> Route:
    """Route back to the previous version (reloading it if needed), then move the registry
    aliases with it; the champion and previous swap, so a second rollback undoes the first.
    A registry that does not follow (MLflow down) is logged; `ftops reconcile` finishes it."""
    with promotion_lock(config, "rollback"):
        routes = routing(config)
        if PREVIOUS not in routes:
            raise ServingError("Nothing to roll back to: no previous deployment in routing.json.")
        serving = runtime.get(config)
        endpoint = serving.running()
        target, former = routes[PREVIOUS], routes[CHAMPION]
        # Checked even when it is still loaded: the copy on disk is what a restart would serve.
        serving.repository(endpoint).verify(
            target.ensemble, f"Not rolled back; the champion keeps serving. {redeploy_hint(target)}")
        with serving.client(endpoint) as client:
            if not client.ready(target.ensemble):
                client.load(target.ensemble)  # routed already: left loaded whatever happens next
        switch(config, target)
        if not follow(config) and former.version is not None:
            best_effort(registry.mark_rolled_back, config, former.version)
    return target
