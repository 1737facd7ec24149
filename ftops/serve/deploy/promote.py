"""Deploy with gates: load a new version beside the champion, gate it (ftops.serve.deploy.gates),
then route to it and move the registry aliases after the route; or reject it.

The champion's tag again is a no-op (outcome `unchanged`): nothing is loaded, gated,
unloaded or moved. A gate that fails, including the server refusing or failing to answer
the new version, returns a rejection; any other exception is cleaned up after (ftops.serve.
deploy.trial), then re-raised. Every outcome is recorded on the model's MLflow run and
registry version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ftops import registry
from ftops.config import Config
from ftops.lock import promotion_lock
from ftops.names import CHAMPION, TAG_DEPLOY
from ftops.serve import loadtest
from ftops.serve.deploy.gates import run_gates
from ftops.serve.deploy.routes import Route, best_effort, follow, routing, switch
from ftops.serve.deploy.trial import Trial, candidate, trial
from ftops.serve.deploy.upkeep import prune_after

PROMOTED, REJECTED, UNCHANGED = "promoted", "rejected", "unchanged"


@dataclass
class DeployResult:
    outcome: str  # PROMOTED | REJECTED | UNCHANGED (the tag already is the champion)
    reason: str
    route: Route
    smoke: dict
    load: dict | None
    histogram: str | None = None
    # promoted, but what follows the route did not (MLflow down): `ftops reconcile` finishes it
    unfinished: list[str] = field(default_factory=list)


def deploy(config: Config, export_dir: Path, texts: list[str], version: str | None = None,
           variant: str | None = None, run_id: str | None = None) -> DeployResult:
    """Load beside the champion, gate (smoke parity, P99 under load), then promote or unload.
    An export or repository file that fails its sha256 check raises before anything loads."""
    new = candidate(config, export_dir, version, variant)
    tag = new.route.tag
    with promotion_lock(config, f"deploy {tag}"):
        routes = routing(config)
        champion = routes.get(CHAMPION)
        if champion is not None and champion.tag == tag:
            return DeployResult(UNCHANGED, f"{tag} is already the champion ({champion.ensemble}); nothing was "
                                "loaded, gated or moved", champion, {}, None)
        with trial(new, routes) as on_trial:
            return _gate(config, on_trial, texts, run_id)


def _gate(config: Config, on_trial: Trial, texts: list[str], run_id: str | None) -> DeployResult:
    """Run the gates on the placed version, then promote or reject."""
    route = on_trial.route
    failed, check, load = run_gates(config, on_trial, texts)
    histogram = None
    if load is not None:
        state = on_trial.candidate.runtime.state_dir()
        state.mkdir(parents=True, exist_ok=True)  # absent when Triton is external
        histogram = loadtest.plot(load, state / f"latency-{route.tag}.png", config.gates.p99_ms)
    if failed:
        return _reject(config, route, failed, check, load, run_id, histogram)
    switch(config, route)
    on_trial.kept = True  # from here it serves: nothing below may discard it
    result = DeployResult(PROMOTED, f"p99 {load.p99_ms:.1f} ms <= {config.gates.p99_ms:.1f} ms, "
                          f"{load.errors} errors", route, check, load.summary(), str(histogram))
    result.unfinished = follow(config)
    prune_after(config)
    if result.unfinished:  # MLflow just failed: the record would cost another wait for nothing
        result.reason += "; " + "; ".join(result.unfinished)
    else:
        _record(config, result, run_id)
    return result


def _reject(config: Config, route: Route, reason: str, check: dict, load, run_id: str | None,
            histogram: Path | None = None) -> DeployResult:
    result = DeployResult(REJECTED, reason, route, check, None if load is None else load.summary(),
                          None if histogram is None else str(histogram))
    _record(config, result, run_id)
    return result


def _record(config: Config, result: DeployResult, run_id: str | None) -> None:
    """The deploy outcome and reason on the model's MLflow run and registry version; MLflow
    down costs this record (logged), never the outcome."""
    if run_id is None and result.route.version is None:
        return
    best_effort(_write_record, config, result, run_id)


def _write_record(config: Config, result: DeployResult, run_id: str | None) -> None:
    client = registry.client(config)
    if run_id is None:
        run_id = registry.get(config, result.route.version).run_id
    client.set_tag(run_id, TAG_DEPLOY, f"{result.outcome}: {result.reason}"[:5000])
    if result.load:
        client.log_metric(run_id, "deploy_p99_ms", result.load["p99_ms"])
        client.log_metric(run_id, "deploy_throughput", result.load["throughput"])
    if result.histogram:
        client.log_artifact(run_id, result.histogram, "deploy")
    if result.route.version is not None:
        client.set_model_version_tag(registry.model_name(config), result.route.version, TAG_DEPLOY,
                                     f"{result.outcome}: {result.reason}"[:5000])
