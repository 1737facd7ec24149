"""A version on trial, the sequence deploy and stage share: read and verify the export,
name its route, place it in the runtime's model repository and load it beside what serves.

Whatever goes wrong, only what this call added is unloaded and removed: a version no route
named when it began. A version a route already names is verified, never rewritten, and
left loaded where it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ftops.config import Config
from ftops.serve import runtime
from ftops.serve.deploy.routes import Route, redeploy_hint
from ftops.serve.deployable import Deployable


def tag_for(model: Deployable, version: str | None) -> str:
    if version is not None:
        return f"v{version}"
    return f"x{model.onnx_sha256[:8]}"


@dataclass
class Candidate:
    """A verified export, the route it would get and the running server it would go to."""

    runtime: runtime.Runtime
    endpoint: runtime.Endpoint
    repository: runtime.Repository
    model: Deployable
    route: Route


def candidate(config: Config, export_dir: Path, version: str | None, variant: str | None) -> Candidate:
    """Raises before anything loads: the server is down, or an export file fails its sha256."""
    serving = runtime.get(config)
    endpoint = serving.running()
    repo = serving.repository(endpoint)
    model = Deployable.from_export(export_dir, variant)
    tag = tag_for(model, version)
    return Candidate(serving, endpoint, repo, model, Route(tag, repo.ensemble(tag), version, str(export_dir),
                                                          model.variant))


class Trial:
    """A version on trial: discarded at the end unless kept, and only if this call added it."""

    def __init__(self, candidate: Candidate, client: runtime.Client, added: bool):
        self.candidate, self.client, self.added, self.kept = candidate, client, added, False
        self.route, self.model = candidate.route, candidate.model

    def load(self) -> None:
        """Load a version this call added, or a routed one that is not loaded."""
        if self.added or not self.client.ready(self.route.ensemble):
            self.client.load(self.route.ensemble)


@contextmanager
def trial(candidate: Candidate, routes: dict[str, Route]) -> Iterator[Trial]:
    """Marked pending (a prune meanwhile leaves it alone), then placed: a version this call
    adds is written (and verified), a routed one only verified. On every way out that did
    not keep it, including an exception, what this call added is unloaded and removed."""
    repo, route = candidate.repository, candidate.route
    with candidate.runtime.client(candidate.endpoint) as client:
        on_trial = Trial(candidate, client, added=route.tag not in {r.tag for r in routes.values()})
        repo.mark_pending(route.ensemble)
        try:
            if on_trial.added:
                repo.put(route.tag, candidate.model)
            else:
                repo.verify(route.ensemble, f"Not deployed; what serves is unchanged. {redeploy_hint(route)}")
            yield on_trial
        finally:
            try:
                if on_trial.added and not on_trial.kept:
                    discard(client, repo, route.ensemble)
            finally:
                repo.clear_pending(route.ensemble)


def discard(client: runtime.Client, repo: runtime.Repository, ensemble: str) -> None:
    unload(client, repo, ensemble)
    repo.remove(ensemble)


def unload(client: runtime.Client, repo: runtime.Repository, ensemble: str) -> None:
    """Every model of a version (unload answers False for one that is not loaded)."""
    for name in repo.models(ensemble):
        client.unload(name)
