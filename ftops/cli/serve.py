"""`ftops serve up / down / status`, `deploy`, `reconcile`, `rollback`, `loadtest` and
`predict`: Triton, what it serves, and moving the champion route through the gates."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ftops.cli.render import out, print_deploy
from ftops.cli.root import ConfigOption, ProjectDirOption, SnapshotOption, app, config_of, snapshot_of

serve_app = typer.Typer(help="The Triton Inference Server of this project (127.0.0.1, explicit model control).",
                        no_args_is_help=True)
app.add_typer(serve_app, name="serve")


@serve_app.command("up")
def serve_up(config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Start tritonserver (no-op if it runs) and reload the routed versions; the
    supervisor keeps it up from now on."""
    from ftops import services
    from ftops.serve.triton import server

    cfg = config_of(config, project_dir=project_dir)
    loaded = services.start_one(cfg, "triton", str(config) if config else None)
    info = server.status(cfg)
    out.print(f"triton up: pid {info.pid}, http {info.http_url}, grpc {info.grpc_url}, "
              f"metrics {info.host}:{info.metrics_port}, log {info.log}")
    out.print(f"  loaded: {loaded}")


@serve_app.command("down")
def serve_down(config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Stop tritonserver by PID; stopped on purpose, so the supervisor leaves it down."""
    from ftops import services

    cfg = config_of(config, project_dir=project_dir)
    out.print("triton stopped" if services.stop_one(cfg, "triton") else "triton was not running")


@serve_app.command("status")
def serve_status(config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Is the server up, which models are loaded, and what is routed where."""
    from ftops.serve import deploy
    from ftops.serve.triton import server
    from ftops.serve.triton.client import TritonClient

    cfg = config_of(config, project_dir=project_dir)
    info = server.status(cfg)
    if info is None:
        out.print("triton: not running")
        raise typer.Exit(1)
    out.print(f"triton: pid {info.pid}, ready={server.ready(info)}, http {info.http_url}, grpc {info.grpc_url}")
    table = Table("model", "state", "route", title="repository")
    routes = {r.ensemble: role for role, r in deploy.routing(cfg).items()}
    with TritonClient.for_config(info.url(cfg.serving.protocol), cfg) as client:
        index = client.client.get_model_repository_index(as_json=True) if cfg.serving.protocol == "grpc" \
            else {"models": client.client.get_model_repository_index()}
    for entry in index.get("models", []):
        table.add_row(entry["name"], entry.get("state", "UNAVAILABLE"), routes.get(entry["name"], ""))
    out.print(table)


def _running_triton(cfg):
    """The project's running Triton, or the error that says how to start it."""
    from ftops.serve.triton import server
    from ftops.serve.runtime import ServingError

    info = server.status(cfg)
    if info is None:
        raise ServingError("Triton is not running for this project. Start it with `ftops serve up`.")
    return info


@app.command("deploy")
def deploy_cmd(
    export: Annotated[Path, typer.Option(help="An export folder (from `ftops export`).")],
    version: Annotated[str | None, typer.Option(help="Registry version it came from (moves the champion alias on success).")] = None,
    variant: Annotated[str | None, typer.Option(help="Variant to serve (default: the export's selected one).")] = None,
    config: ConfigOption = None, snapshot: SnapshotOption = None, project_dir: ProjectDirOption = None,
):
    """Load beside the champion, smoke-test, load-test against the P99 SLO, then promote or unload."""
    from ftops.serve import deploy

    cfg = config_of(config, project_dir=project_dir)
    texts = list(snapshot_of(cfg, snapshot).split("test")["text"])
    result = deploy.deploy(cfg, export, texts, version=version, variant=variant)
    print_deploy(result)
    if result.outcome == deploy.REJECTED:
        raise typer.Exit(1)


@app.command("reconcile")
def reconcile_cmd(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would change.")] = False,
    config: ConfigOption = None, project_dir: ProjectDirOption = None,
):
    """Bring the registry aliases and the drift reference into agreement with what serves
    (routing.json), e.g. after MLflow was down during a deploy; prints what it changed.
    `ftops up` and every lifecycle run do it too. Exits 1 when something could not be fixed."""
    from ftops.reconcile import reconcile

    result = reconcile(config_of(config, project_dir=project_dir), dry_run=dry_run)
    for line in result.lines():
        out.print(line)
    if result.problems:
        raise typer.Exit(1)


@app.command("rollback")
def rollback_cmd(config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Route Triton back to the previous version and roll the registry back with it."""
    from ftops.serve import deploy

    cfg = config_of(config, project_dir=project_dir)
    route = deploy.rollback(cfg)
    out.print(f"champion is now {route.ensemble} (version {route.version or '-'})")


@app.command("loadtest")
def loadtest_cmd(
    concurrency: Annotated[int | None, typer.Option(help="Parallel clients (serving.load_concurrency).")] = None,
    requests: Annotated[int | None, typer.Option(help="Requests to send (serving.load_requests).")] = None,
    model: Annotated[str | None, typer.Option(help="Triton model name (default: the champion route).")] = None,
    config: ConfigOption = None, snapshot: SnapshotOption = None, project_dir: ProjectDirOption = None,
):
    """A bounded load test with real texts: throughput, p50/p95/p99, errors, histogram."""
    from ftops.serve import deploy, loadtest
    from ftops.serve.triton import server

    cfg = config_of(config, project_dir=project_dir)
    info = _running_triton(cfg)
    name = model or deploy.champion_model(cfg)
    texts = list(snapshot_of(cfg, snapshot).split("test")["text"])
    result = loadtest.run(info.url(cfg.serving.protocol), name, texts, concurrency or cfg.serving.load_concurrency,
                          requests or cfg.serving.load_requests, cfg.serving.load_warmup, cfg.serving.protocol)
    path = loadtest.plot(result, server.state_dir(cfg) / f"loadtest-{name}.png", cfg.gates.p99_ms)
    table = Table("requests", "concurrency", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors", "server avg ms",
                  title=f"load test {name}")
    table.add_row(str(result.requests), str(result.concurrency), f"{result.throughput:.0f}", f"{result.p50_ms:.1f}",
                  f"{result.p95_ms:.1f}", f"{result.p99_ms:.1f}", str(result.errors), f"{(result.server_avg_ms or 0):.1f}")
    out.print(table)
    verdict = "meets" if result.p99_ms <= cfg.gates.p99_ms else "MISSES"
    out.print(f"p99 {verdict} the SLO of {cfg.gates.p99_ms:.0f} ms; histogram: {path}")


@app.command("predict")
def predict_cmd(texts: Annotated[list[str], typer.Argument(help="Texts to classify.")],
                config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Classify texts with the served champion."""
    from ftops.serve import deploy
    from ftops.serve.triton.client import TritonClient

    cfg = config_of(config, project_dir=project_dir)
    info = _running_triton(cfg)
    with TritonClient.for_config(info.url(cfg.serving.protocol), cfg) as client:
        for text, pred in zip(texts, client.classify(texts, deploy.champion_model(cfg))):
            out.print(f"{pred.label:>10} {pred.confidence:.3f}  {text}")
