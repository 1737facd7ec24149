"""Deploy with gates: load a new version beside the champion, smoke-test it against the
exported ONNX in-process, load-test it against the P99 SLO, then route to it and move the
registry aliases after the route.

Routing lives in `<project>/triton/routing.json`: which ensemble is `champion`, which is
`previous` and which the `challenger`; the gateway and `ftops predict` read it. It is the
truth about what serves: the registry aliases follow it (moved after the route switch;
a move MLflow interrupts is finished by `ftops reconcile`, ftops.reconcile).

A deploy cannot hurt what serves:
- the champion's tag again is a no-op (outcome `unchanged`): nothing is loaded, gated,
  unloaded or moved;
- a tag routed as previous or challenger may be deployed (promoting it): its repository
  copy is checked, not rewritten, and a failed gate leaves it loaded where it was;
- every failure (load, smoke, warm-up, load test, an exception anywhere) unloads and
  removes only what this deploy added: a version no route named when it began. A gate that
  fails, including Triton refusing or failing to answer the new version, returns a
  rejection; any other exception is cleaned up after, then re-raised;
- deploy, stage / unstage and rollback hold the project's promotion lock (ftops.lock), so
  two of them never interleave.

Nothing is loaded unverified: the export's files are held to its manifest's sha256, the
repository copy to the record written beside it (ftops.serve.repository), and the smoke
test's reference runs on the verified bytes. The repository keeps the routed versions
(champion, previous, challenger); every other version of the project is unloaded and
removed after each promotion and by `ftops prune`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ftops import atomic, registry
from ftops.config import Config
from ftops.lock import promotion_lock
from ftops.serve import loadtest, repository, server
from ftops.serve.client import TritonClient
from ftops.serve.repository import (Deployable, ModelNames, ServingError, remove_version, verified_bytes,
                                    write_version)

log = logging.getLogger(__name__)

SMOKE_TEXTS = 64
PROB_ATOL = 1e-5


@dataclass
class Route:
    tag: str
    ensemble: str
    version: str | None
    export: str
    variant: str
    deployed_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


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


# ---------------------------------------------------------------- routing


def routing_file(config: Config) -> Path:
    return server.state_dir(config) / "routing.json"


def routing(config: Config) -> dict[str, Route]:
    path = routing_file(config)
    if not path.is_file():
        return {}
    return {k: Route(**v) for k, v in json.loads(path.read_text()).items()}


def save_routing(config: Config, routes: dict[str, Route]) -> None:
    """Readers never see a half-written file; call it under the promotion lock."""
    atomic.write_text(routing_file(config), json.dumps({k: asdict(v) for k, v in routes.items()}, indent=2))


def wanted_aliases(routes: dict[str, Route]) -> dict[str, str]:
    """The registry aliases the routes call for: each routed role that serves a registry
    version (an export deployed without --version names none)."""
    return {role: str(route.version) for role, route in routes.items()
            if role in registry.ALIASES and route.version is not None}


def champion_model(config: Config) -> str:
    route = routing(config).get("champion")
    if route is None:
        raise ServingError("Nothing is deployed yet: no champion route. Run "
                           "`ftops deploy --export <export folder>` (from `ftops export`).")
    return route.ensemble


# ---------------------------------------------------------------- gates


def reference_probs(model: Deployable, texts: list[str]) -> np.ndarray:
    """The exported ONNX in-process (same tokenizer file, same max length), one text at a time.
    Both files are read once and held to the manifest's sha256, so the reference is the
    export as it was gated, not whatever the files hold now."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(verified_bytes(model.tokenizer_json, model.tokenizer_sha256).decode("utf-8"))
    tokenizer.enable_truncation(model.max_length)
    tokenizer.no_padding()
    session = ort.InferenceSession(verified_bytes(model.onnx, model.onnx_sha256), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    out = []
    for text in texts:
        enc = tokenizer.encode(text)
        feed = {"input_ids": np.array([enc.ids], dtype=np.int64),
                "attention_mask": np.array([enc.attention_mask], dtype=np.int64),
                "token_type_ids": np.array([enc.type_ids], dtype=np.int64)}
        logits = session.run(["logits"], {k: v for k, v in feed.items() if k in wanted})[0][0].astype(np.float64)
        exp = np.exp(logits - logits.max())
        out.append(exp / exp.sum())
    return np.array(out)


def smoke(client: TritonClient, model_name: str, model: Deployable, texts: list[str]) -> dict:
    """Triton's answers equal the exported model's, alone and in one batch."""
    reference = reference_probs(model, texts)
    alone = client.classify(texts, model_name, batch_size=1)
    batched = client.classify(texts, model_name, batch_size=16)
    result = {"n": len(texts)}
    for name, preds in (("alone", alone), ("batched", batched)):
        probs = np.array([p.probs for p in preds])
        labels = [p.label for p in preds]
        expected = [model.labels[i] for i in reference.argmax(axis=1)]
        result[f"{name}_label_agreement"] = float(np.mean([a == b for a, b in zip(labels, expected)]))
        result[f"{name}_max_prob_diff"] = float(np.abs(probs - reference).max())
    result["passed"] = (result["alone_label_agreement"] == 1.0 and result["alone_max_prob_diff"] <= PROB_ATOL
                        and (not model.batch_invariant or (result["batched_label_agreement"] == 1.0
                                                           and result["batched_max_prob_diff"] <= PROB_ATOL)))
    return result


# ---------------------------------------------------------------- deploy, rollback


def tag_for(model: Deployable, version: str | None) -> str:
    if version is not None:
        return f"v{version}"
    return f"x{model.onnx_sha256[:8]}"


def _running(config: Config) -> server.ServerInfo:
    info = server.status(config)
    if info is None:
        raise ServingError("Triton is not running for this project. Start it with `ftops serve up`.")
    return info


class _Trial:
    """A version on trial: discarded at the end unless kept, and only if this deploy added it."""

    def __init__(self, added: bool):
        self.added, self.kept = added, False


@contextmanager
def _trial(client: TritonClient, repo: Path, names: ModelNames, added: bool) -> Iterator[_Trial]:
    """Marked pending (a prune meanwhile leaves it alone); on every way out that did not keep
    it, including an exception, what this deploy added is unloaded and removed. A version a
    route already named is never touched."""
    trial = _Trial(added)
    repository.mark_pending(repo, names)
    try:
        yield trial
    finally:
        try:
            if trial.added and not trial.kept:
                _discard(client, repo, names)
        finally:
            repository.clear_pending(repo, names)


def deploy(config: Config, export_dir: Path, texts: list[str], version: str | None = None,
           variant: str | None = None, run_id: str | None = None) -> DeployResult:
    """Load beside the champion, gate (smoke parity, P99 under load), then promote or unload.
    An export or repository file that fails its sha256 check raises before anything loads."""
    info = _running(config)
    model = Deployable.from_export(export_dir, variant)
    tag = tag_for(model, version)
    route = Route(tag, ModelNames.for_tag(config.project.name, tag).ensemble, version, str(export_dir), model.variant)
    with promotion_lock(config, f"deploy {tag}"):
        routes = routing(config)
        champion = routes.get("champion")
        if champion is not None and champion.tag == tag:
            return DeployResult(UNCHANGED, f"{tag} is already the champion ({champion.ensemble}); nothing was "
                                "loaded, gated or moved", champion, {}, None)
        routed = tag in {r.tag for r in routes.values()}
        with TritonClient.for_config(info.url(config.serving.protocol), config) as client, \
                _trial(client, Path(info.repository), ModelNames.of(route.ensemble), added=not routed) as trial:
            return _gate(config, info, client, trial, model, route, texts, run_id)


def _place(config: Config, repo: Path, model: Deployable, route: Route, trial: _Trial) -> None:
    """A version this deploy adds is written (and verified); a routed one is only verified."""
    names = ModelNames.of(route.ensemble)
    if trial.added:
        write_version(repo, config.project.name, route.tag, model, config.serving)
    else:
        repository.verify_version(repo, names, f"Not deployed; what serves is unchanged. {_redeploy(route)}")


def _gate(config: Config, info: server.ServerInfo, client: TritonClient, trial: _Trial, model: Deployable,
          route: Route, texts: list[str], run_id: str | None) -> DeployResult:
    """Place and load the version, run the smoke and load gates, then promote or reject."""
    _place(config, Path(info.repository), model, route, trial)
    failed, check, load = _gates(config, info, client, trial, model, route, texts)
    histogram = None
    if load is not None:
        server.state_dir(config).mkdir(parents=True, exist_ok=True)  # absent when Triton is external
        histogram = loadtest.plot(load, server.state_dir(config) / f"latency-{route.tag}.png", config.gates.p99_ms)
    if failed:
        return _reject(config, route, failed, check, load, run_id, histogram)
    switch(config, route)
    trial.kept = True  # from here it serves: nothing below may discard it
    result = DeployResult(PROMOTED, f"p99 {load.p99_ms:.1f} ms <= {config.gates.p99_ms:.1f} ms, "
                          f"{load.errors} errors", route, check, load.summary(), str(histogram))
    result.unfinished = follow(config)
    _prune_after(config)
    if result.unfinished:  # MLflow just failed: the record would cost another wait for nothing
        result.reason += "; " + "; ".join(result.unfinished)
    else:
        _record(config, result, run_id)
    return result


def _gates(config: Config, info: server.ServerInfo, client: TritonClient, trial: _Trial, model: Deployable,
           route: Route, texts: list[str]) -> tuple[str | None, dict, loadtest.LoadResult | None]:
    """(why it failed, None if it passed; the smoke result; the load test). Triton refusing
    or failing to answer the new version fails the gate it happened in."""
    cfg = config.serving
    try:
        if trial.added or not client.ready(route.ensemble):
            client.load(route.ensemble)
    except ServingError as exc:
        return f"load failed: {exc}", {}, None
    try:
        check = smoke(client, route.ensemble, model, texts[:SMOKE_TEXTS])
    except ServingError as exc:
        return f"smoke test: Triton did not answer for the new version ({exc})", {}, None
    if not check["passed"]:
        return f"smoke test: Triton's answers differ from the exported model ({check})", check, None
    try:
        load = loadtest.run(info.url(cfg.protocol), route.ensemble, texts, cfg.load_concurrency, cfg.load_requests,
                            cfg.load_warmup, cfg.protocol, timeout_s=cfg.request_timeout_s)
    except ServingError as exc:
        return f"load test: Triton did not answer for the new version ({exc})", check, None
    reasons = []
    if load.p99_ms > config.gates.p99_ms:
        reasons.append(f"p99 {load.p99_ms:.1f} ms > SLO {config.gates.p99_ms:.1f} ms (gates.p99_ms) "
                       f"at concurrency {load.concurrency}")
    if load.error_rate > cfg.max_error_rate:
        reasons.append(f"error rate {load.error_rate:.3%} > {cfg.max_error_rate:.3%} ({load.first_error})")
    return "; ".join(reasons) or None, check, load


def switch(config: Config, route: Route) -> dict[str, Route]:
    """Route the champion to `route`: the former champion becomes previous, and a challenger
    of the same tag stops being one. The one write that decides what serves."""
    routes = routing(config)
    champion = routes.get("champion")
    if champion is not None and champion.tag != route.tag:
        routes["previous"] = champion
    routes["champion"] = route
    if routes.get("challenger") is not None and routes["challenger"].tag == route.tag:
        del routes["challenger"]
    save_routing(config, routes)
    return routes


def follow(config: Config) -> list[str]:
    """Move the registry aliases to what the routes serve; what could not be done (MLflow
    down, a version it does not know), for `ftops reconcile` to finish. Never raises: the
    route has switched already, and serving is the truth."""
    wanted = wanted_aliases(routing(config))
    if not wanted:
        return []
    try:
        moved = registry.align(config, wanted)
    except Exception as exc:  # noqa: BLE001 - any store failure leaves the same thing to finish
        message = (f"the registry aliases did not follow the route ({type(exc).__name__}: {_first_line(exc)}); "
                   "run `ftops reconcile` once MLflow answers")
        log.warning("%s: %s", config.project.name, message)
        return [message]
    for line in moved:
        log.info("%s: %s", config.project.name, line)
    return []


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def _prune_after(config: Config) -> None:
    """Champion and previous stay loaded (rollback is a re-route); anything older goes. A
    failure here costs disk and memory until the next prune, never the promotion."""
    try:
        prune_repository(config)
    except Exception as exc:  # noqa: BLE001
        log.warning("pruning the repository of %s after a promotion failed: %s", config.project.name, exc)


def prune_repository(config: Config) -> list[str]:
    """Unload and remove every version of this project that no route names (champion,
    previous, challenger); a version being deployed is left alone. The ensembles removed."""
    info = server.status(config)
    repo = Path(info.repository) if info is not None else server.repository_dir(config)
    routes = routing(config)
    if not routes:
        return []  # nothing routed (or routing.json lost): no anchor to tell stale from kept
    keep = {r.tag for r in routes.values()}
    stale = [names for tag, names in sorted(repository.versions(repo, config.project.name).items())
             if tag not in keep and not repository.pending(repo, names)]
    if stale and info is not None:
        with TritonClient.for_config(info.url(config.serving.protocol), config) as client:
            for names in stale:
                _unload(client, names)
    for names in stale:
        remove_version(repo, names)
    return [names.ensemble for names in stale]


def rollback(config: Config) -> Route:
    """Route back to the previous version (reloading it if needed), then move the registry
    aliases with it; the champion and previous swap, so a second rollback undoes the first.
    A registry that does not follow (MLflow down) is logged; `ftops reconcile` finishes it."""
    with promotion_lock(config, "rollback"):
        routes = routing(config)
        if "previous" not in routes:
            raise ServingError("Nothing to roll back to: no previous deployment in routing.json.")
        info = _running(config)
        target, former = routes["previous"], routes["champion"]
        # Checked even when it is still loaded: the copy on disk is what a restart would serve.
        repository.verify_version(Path(info.repository), ModelNames.of(target.ensemble),
                                  f"Not rolled back; the champion keeps serving. {_redeploy(target)}")
        with TritonClient.for_config(info.url(config.serving.protocol), config) as client:
            if not client.ready(target.ensemble):
                client.load(target.ensemble)  # routed already: left loaded whatever happens next
        switch(config, target)
        if not follow(config) and former.version is not None:
            _best_effort(registry.mark_rolled_back, config, former.version)
    return target


def _best_effort(call, config: Config, *args) -> None:
    try:
        call(config, *args)
    except Exception as exc:  # noqa: BLE001 - bookkeeping in MLflow: never fails a promotion
        log.warning("%s: %s failed (%s: %s)", config.project.name, call.__name__.strip("_").replace("_", " "),
                    type(exc).__name__, _first_line(exc))


def _redeploy(route: Route) -> str:
    version = f" --version {route.version}" if route.version else ""
    return (f"Deploy that version again: `ftops deploy --export {route.export}{version}` "
            "(re-export it first if its export fails the check too).")


def _discard(client: TritonClient, repo: Path, names: ModelNames) -> None:
    _unload(client, names)
    remove_version(repo, names)


def _unload(client: TritonClient, names: ModelNames) -> None:
    """Every step of a version (unload answers False for one that is not loaded)."""
    for name in (names.ensemble, names.classifier, names.tokenizer, names.postprocess):
        client.unload(name)


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
    _best_effort(_write_record, config, result, run_id)


def _write_record(config: Config, result: DeployResult, run_id: str | None) -> None:
    client = registry.client(config)
    if run_id is None:
        run_id = registry.get(config, result.route.version).run_id
    client.set_tag(run_id, "ftops.deploy", f"{result.outcome}: {result.reason}"[:5000])
    if result.load:
        client.log_metric(run_id, "deploy_p99_ms", result.load["p99_ms"])
        client.log_metric(run_id, "deploy_throughput", result.load["throughput"])
    if result.histogram:
        client.log_artifact(run_id, result.histogram, "deploy")
    if result.route.version is not None:
        client.set_model_version_tag(registry.model_name(config), result.route.version, "ftops.deploy",
                                     f"{result.outcome}: {result.reason}"[:5000])


def reload_routes(config: Config) -> dict[str, str]:
    """After a server (re)start: load the routed ensembles again, each only once its
    repository copy matches what was deployed; a mismatch raises after the others load."""
    info = server.status(config)
    loaded, refused = {}, []
    if info is None:
        return loaded
    repo = Path(info.repository)
    with TritonClient.for_config(info.url(config.serving.protocol), config) as client:
        for role, route in routing(config).items():
            if (repo / route.ensemble).is_dir() and not client.ready(route.ensemble):
                problems = _restore(config, repo, route)
                if problems:
                    refused.append(f"{role} {route.ensemble}: {'; '.join(problems)}. {_redeploy(route)}")
                    continue
                client.load(route.ensemble)
            loaded[role] = route.ensemble
    if refused:
        raise ServingError("Not loaded, their copies in the model repository are not what was deployed: "
                           + " | ".join(refused))
    return loaded


def _restore(config: Config, repo: Path, route: Route) -> list[str]:
    """What is wrong with a routed version's repository copy, after rewriting it from its
    export when the export itself verifies: a copy without a record (deployed by an older
    ftops) or a damaged one is then served again instead of leaving the route down."""
    problems = repository.version_problems(repo, ModelNames.of(route.ensemble))
    if not problems:
        return []
    try:
        model = Deployable.from_export(Path(route.export), route.variant)
    except (ServingError, OSError, ValueError) as exc:
        return [*problems, f"its export cannot restore it ({exc})"]
    write_version(repo, config.project.name, route.tag, model, config.serving)
    log.warning("the repository copy of %s did not match what was deployed (%s); rewritten from its verified "
                "export %s", route.ensemble, "; ".join(problems), route.export)
    return repository.version_problems(repo, ModelNames.of(route.ensemble))


def stage(config: Config, export_dir: Path, texts: list[str], version: str | None = None,
          variant: str | None = None) -> Route:
    """Load a version as the `challenger` route (smoke-tested, not promoted): the gateway's
    A/B split and shadow policies send traffic to it. The champion cannot be staged, the
    challenger again is a no-op, and a failed smoke test removes only what this call added."""
    info = _running(config)
    model = Deployable.from_export(export_dir, variant)
    tag = tag_for(model, version)
    route = Route(tag, ModelNames.for_tag(config.project.name, tag).ensemble, version, str(export_dir), model.variant)
    with promotion_lock(config, f"stage {tag}"):
        routes = routing(config)
        if routes.get("champion") is not None and routes["champion"].tag == tag:
            raise ServingError(f"{tag} is the champion; it cannot be its own challenger. Nothing was changed.")
        if routes.get("challenger") is not None and routes["challenger"].tag == tag:
            return routes["challenger"]
        routed = tag in {r.tag for r in routes.values()}
        with TritonClient.for_config(info.url(config.serving.protocol), config) as client, \
                _trial(client, Path(info.repository), ModelNames.of(route.ensemble), added=not routed) as trial:
            _place(config, Path(info.repository), model, route, trial)
            if trial.added or not client.ready(route.ensemble):
                client.load(route.ensemble)
            check = smoke(client, route.ensemble, model, texts[:SMOKE_TEXTS])
            if not check["passed"]:
                raise ServingError(f"Challenger {route.ensemble} answers differently from its export: {check}. "
                                   "It was not staged; what serves is unchanged.")
            routes = routing(config)
            routes["challenger"] = route
            save_routing(config, routes)
            trial.kept = True
        follow(config)
    return route


def unstage(config: Config) -> None:
    """Drop the challenger route (its models stay loaded until the next deploy clears them),
    and the registry's challenger alias if it named that version."""
    with promotion_lock(config, "unstage"):
        routes = routing(config)
        dropped = routes.pop("challenger", None)
        if dropped is None:
            return
        save_routing(config, routes)
        if dropped.version is not None:
            _best_effort(_drop_challenger_alias, config, str(dropped.version))


def _drop_challenger_alias(config: Config, version: str) -> None:
    if registry.aliases(config).get(registry.CHALLENGER) == version:
        registry.client(config).delete_registered_model_alias(registry.model_name(config), registry.CHALLENGER)
