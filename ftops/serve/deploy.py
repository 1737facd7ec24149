"""Deploy with gates: load a new version beside the champion, smoke-test it against the
exported ONNX in-process, load-test it against the P99 SLO, then route to it and move the
registry alias; on any failure unload it and leave the champion serving.

Routing lives in `<project>/triton/routing.json`: which ensemble is `champion` and which
is `previous`; the gateway and `ftops predict` read it.

Nothing is loaded unverified: the export's files are held to its manifest's sha256, the
repository copy to the record written beside it (ftops.serve.repository), and the smoke
test's reference runs on the verified bytes. The repository keeps the routed versions
(champion, previous, challenger); every other version of the project is unloaded and
removed after each promotion and by `ftops prune`.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ftops import registry
from ftops.config import Config
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


@dataclass
class DeployResult:
    outcome: str  # "promoted" | "rejected"
    reason: str
    route: Route
    smoke: dict
    load: dict | None
    histogram: str | None = None


# ---------------------------------------------------------------- routing


def _routing_file(config: Config) -> Path:
    return server.state_dir(config) / "routing.json"


def routing(config: Config) -> dict[str, Route]:
    path = _routing_file(config)
    if not path.is_file():
        return {}
    return {k: Route(**v) for k, v in json.loads(path.read_text()).items()}


def _save_routing(config: Config, routes: dict[str, Route]) -> None:
    path = _routing_file(config)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({k: asdict(v) for k, v in routes.items()}, indent=2))
    os.replace(tmp, path)  # readers never see a half-written file


def champion_model(config: Config) -> str:
    route = routing(config).get("champion")
    if route is None:
        raise ServingError("Nothing is deployed yet: no champion route. Run `ftops deploy --model ...`.")
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


@contextmanager
def _pending(repo: Path, names: ModelNames):
    """Mark a version as being deployed, so a prune running meanwhile leaves it alone."""
    repository.mark_pending(repo, names)
    try:
        yield
    finally:
        repository.clear_pending(repo, names)


def deploy(config: Config, export_dir: Path, texts: list[str], version: str | None = None,
           variant: str | None = None, run_id: str | None = None) -> DeployResult:
    """Load beside the champion, gate (smoke parity, P99 under load), then promote or unload.
    An export or repository file that fails its sha256 check raises before anything loads."""
    info = server.status(config)
    if info is None:
        raise ServingError("Triton is not running for this project. Start it with `ftops serve up`.")
    model = Deployable.from_export(export_dir, variant)
    tag = tag_for(model, version)
    repo = Path(info.repository)
    names = ModelNames.for_tag(config.project.name, tag)
    with _pending(repo, names):
        return _gate(config, info, repo, model, Route(tag, names.ensemble, version, str(export_dir), model.variant),
                     texts, run_id)


def _gate(config: Config, info: server.ServerInfo, repo: Path, model: Deployable, route: Route,
          texts: list[str], run_id: str | None) -> DeployResult:
    """Write (and verify) the version, load it, run the smoke and load gates, then promote or discard."""
    names = write_version(repo, config.project.name, route.tag, model, config.serving)
    cfg = config.serving
    url = info.url(cfg.protocol)
    with TritonClient(url, cfg.protocol, cfg.request_timeout_s) as client:
        try:
            client.client.load_model(names.ensemble)
        except Exception as exc:
            _discard(client, repo, names)
            return _reject(config, route, f"load failed: {exc}", {}, None, run_id)
        check = smoke(client, names.ensemble, model, texts[:SMOKE_TEXTS])
    if not check["passed"]:
        with TritonClient(url, cfg.protocol) as client:
            _discard(client, repo, names)
        return _reject(config, route, f"smoke test: Triton's answers differ from the exported model ({check})",
                       check, None, run_id)
    load = loadtest.run(url, names.ensemble, texts, cfg.load_concurrency, cfg.load_requests,
                        cfg.load_warmup, cfg.protocol, timeout_s=cfg.request_timeout_s)
    server.state_dir(config).mkdir(parents=True, exist_ok=True)  # absent when Triton is external
    histogram = loadtest.plot(load, server.state_dir(config) / f"latency-{route.tag}.png", config.gates.p99_ms)
    reasons = []
    if load.p99_ms > config.gates.p99_ms:
        reasons.append(f"p99 {load.p99_ms:.1f} ms > SLO {config.gates.p99_ms:.1f} ms (gates.p99_ms) "
                       f"at concurrency {load.concurrency}")
    if load.error_rate > cfg.max_error_rate:
        reasons.append(f"error rate {load.error_rate:.3%} > {cfg.max_error_rate:.3%} ({load.first_error})")
    if reasons:
        with TritonClient(url, cfg.protocol) as client:
            _discard(client, repo, names)
        return _reject(config, route, "; ".join(reasons), check, load, run_id, histogram)
    _promote(config, route)
    result = DeployResult("promoted", f"p99 {load.p99_ms:.1f} ms <= {config.gates.p99_ms:.1f} ms, "
                          f"{load.errors} errors", route, check, load.summary(), str(histogram))
    _record(config, result, run_id)
    return result


def _promote(config: Config, route: Route) -> None:
    routes = routing(config)
    if "champion" in routes and routes["champion"].tag != route.tag:
        routes["previous"] = routes["champion"]
    routes["champion"] = route
    _save_routing(config, routes)
    if route.version is not None:
        registry.promote(config, route.version)
    # Champion and previous stay loaded (rollback is a re-route); anything older goes.
    prune_repository(config)


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
        with TritonClient(info.url(config.serving.protocol), config.serving.protocol) as client:
            for names in stale:
                _unload(client, names)
    for names in stale:
        remove_version(repo, names)
    return [names.ensemble for names in stale]


def rollback(config: Config) -> Route:
    """Route back to the previous version (reloading it if needed) and roll the registry
    back with it; the champion and previous swap, so a second rollback undoes the first."""
    routes = routing(config)
    if "previous" not in routes:
        raise ServingError("Nothing to roll back to: no previous deployment in routing.json.")
    info = server.status(config)
    if info is None:
        raise ServingError("Triton is not running for this project. Start it with `ftops serve up`.")
    target = routes["previous"]
    # Checked even when it is still loaded: the copy on disk is what a restart would serve.
    repository.verify_version(Path(info.repository), ModelNames.of(target.ensemble),
                              f"Not rolled back; the champion keeps serving. {_redeploy(target)}")
    with TritonClient(info.url(config.serving.protocol), config.serving.protocol) as client:
        if not client.ready(target.ensemble):
            client.client.load_model(target.ensemble)
    routes["previous"], routes["champion"] = routes["champion"], target
    _save_routing(config, routes)
    if target.version is not None and registry.find(config, registry.PREVIOUS) is not None:
        if registry.get(config, registry.PREVIOUS).version == target.version:
            registry.rollback(config)
    return target


def _redeploy(route: Route) -> str:
    version = f" --version {route.version}" if route.version else ""
    return (f"Deploy that version again: `ftops deploy --export {route.export}{version}` "
            "(re-export it first if its export fails the check too).")


def _discard(client: TritonClient, repo: Path, names: ModelNames) -> None:
    _unload(client, names)
    remove_version(repo, names)


def _unload(client: TritonClient, names: ModelNames) -> None:
    for name in (names.ensemble, names.classifier, names.tokenizer, names.postprocess):
        try:
            client.client.unload_model(name)
        except Exception:  # not loaded (e.g. postprocess of the python runtime): nothing to do
            pass


def _reject(config: Config, route: Route, reason: str, check: dict, load, run_id: str | None,
            histogram: Path | None = None) -> DeployResult:
    result = DeployResult("rejected", reason, route, check, None if load is None else load.summary(),
                          None if histogram is None else str(histogram))
    _record(config, result, run_id)
    return result


def _record(config: Config, result: DeployResult, run_id: str | None) -> None:
    """The deploy outcome and reason on the model's MLflow run and registry version."""
    if run_id is None and result.route.version is None:
        return
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
    with TritonClient(info.url(config.serving.protocol), config.serving.protocol) as client:
        for role, route in routing(config).items():
            if (repo / route.ensemble).is_dir() and not client.ready(route.ensemble):
                problems = _restore(config, repo, route)
                if problems:
                    refused.append(f"{role} {route.ensemble}: {'; '.join(problems)}. {_redeploy(route)}")
                    continue
                client.client.load_model(route.ensemble)
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
    A/B split and shadow policies send traffic to it."""
    info = server.status(config)
    if info is None:
        raise ServingError("Triton is not running for this project. Start it with `ftops serve up`.")
    model = Deployable.from_export(export_dir, variant)
    tag = tag_for(model, version)
    repo = Path(info.repository)
    with _pending(repo, ModelNames.for_tag(config.project.name, tag)):
        names = write_version(repo, config.project.name, tag, model, config.serving)
        route = Route(tag, names.ensemble, version, str(export_dir), model.variant)
        url = info.url(config.serving.protocol)
        with TritonClient(url, config.serving.protocol, config.serving.request_timeout_s) as client:
            client.client.load_model(names.ensemble)
            check = smoke(client, names.ensemble, model, texts[:SMOKE_TEXTS])
            if not check["passed"]:
                _discard(client, repo, names)
                raise ServingError(f"Challenger {names.ensemble} answers differently from its export: {check}")
        routes = routing(config)
        routes["challenger"] = route
        _save_routing(config, routes)
    if version is not None:
        registry.set_alias(config, registry.CHALLENGER, version)
    return route


def unstage(config: Config) -> None:
    """Drop the challenger route (its models stay loaded until the next deploy clears them)."""
    routes = routing(config)
    if routes.pop("challenger", None) is not None:
        _save_routing(config, routes)
