"""`ftops gateway up / down / status / loadtest`: the HTTP gateway in front of Triton."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ftops import names
from ftops.cli.render import out
from ftops.cli.root import ConfigOption, ProjectDirOption, app, config_of

gateway_app = typer.Typer(help="The HTTP gateway in front of Triton: text in/out, prediction log, A/B and shadow.",
                          no_args_is_help=True)
app.add_typer(gateway_app, name="gateway")


@gateway_app.command("up")
def gateway_up(
    port: Annotated[int | None, typer.Option(help="Port on serving.host; 0 picks a free one (serving.gateway_port).")] = None,
    traffic: Annotated[str | None, typer.Option(
        help="champion | ab | shadow (serving.traffic).")] = None,
    ab_share: Annotated[float | None, typer.Option(help="Share sent to the challenger under ab (serving.ab_share).")] = None,
    config: ConfigOption = None, project_dir: ProjectDirOption = None,
):
    """Start the gateway in the background (no-op if it runs); stop it with `ftops gateway down`.
    The supervisor restarts it with the project's config: flags given here last until then."""
    from ftops import services
    from ftops.serve import gateway

    cfg = config_of(config, {"serving.gateway_port": port, "serving.traffic": traffic,
                             "serving.ab_share": ab_share}, project_dir)
    services.start_one(cfg, "gateway", str(config) if config else None)
    info = gateway.status(cfg)
    out.print(f"gateway up: pid {info.pid}, {info.url}, log {info.log}")
    _print_health(gateway.probe(info.url))


def _print_health(answer) -> None:
    if answer is None:
        out.print("  health: no answer")
        return
    code, body = answer
    colour = "green" if code == 200 else "red"
    out.print(f"  health: [{colour}]{body.get('status')}[/] {body.get('reason') or ''}  policy: {body.get('policy')}")
    if body.get("note"):
        out.print(f"  note: {body['note']}")
    for role in (names.CHAMPION, names.CHALLENGER):
        if body.get(role):
            out.print(f"  {role}: {body[role]['ensemble']} (version {body[role]['version'] or '-'})")


@gateway_app.command("down")
def gateway_down(config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Stop the gateway by PID (in-flight requests finish and the log is flushed first);
    stopped on purpose, so the supervisor leaves it down."""
    from ftops import services

    cfg = config_of(config, project_dir=project_dir)
    out.print("gateway stopped" if services.stop_one(cfg, "gateway") else "gateway was not running")


@gateway_app.command("status")
def gateway_status(config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Is the gateway up, is it healthy, and where does traffic go."""
    from ftops.serve import gateway

    cfg = config_of(config, project_dir=project_dir)
    info = gateway.status(cfg)
    if info is None:
        out.print("gateway: not running")
        raise typer.Exit(1)
    out.print(f"gateway: pid {info.pid}, {info.url}, log {info.log}")
    _print_health(gateway.probe(info.url))


@gateway_app.command("loadtest")
def gateway_loadtest(
    requests: Annotated[int | None, typer.Option(min=1, help="Requests to send (serving.load_requests).")] = None,
    concurrency: Annotated[int | None, typer.Option(min=1, help="Parallel clients (serving.load_concurrency).")] = None,
    warmup: Annotated[int | None, typer.Option(
        min=0, help="Requests sent first and not timed (serving.load_warmup).")] = None,
    max_seconds: Annotated[float, typer.Option(help="Stop after this long whatever is left.")] = 60.0,
    users: Annotated[int, typer.Option(min=0, help="Distinct user keys to send (0: none, random A/B arm).")] = 0,
    feedback_share: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Share of answers that also get their true label on /feedback.")] = 0.0,
    data: Annotated[str, typer.Option(help="Builtin corpus whose texts (and labels) are sent.")] = "builtin:tweets?domain=airline",
    url: Annotated[str | None, typer.Option(help="Gateway URL (default: this project's running gateway).")] = None,
    config: ConfigOption = None, project_dir: ProjectDirOption = None,
):
    """A bounded load test of the gateway with real texts: throughput, p50/p95/p99, errors."""
    from ftops.data.corpora import load_builtin
    from ftops.serve import gateway, loadtest

    cfg = config_of(config, project_dir=project_dir)
    if url is None:
        info = gateway.status(cfg)
        if info is None:
            raise gateway.GatewayError("The gateway is not running for this project. Start it with "
                                       "`ftops gateway up`, or pass --url.")
        url = info.url
    frame, _ = load_builtin(data)
    frame = frame.sample(frac=1.0, random_state=0)
    load = cfg.serving
    result = loadtest.gateway(url, list(frame["text"]), requests or load.load_requests,
                              concurrency or load.load_concurrency, max_seconds, users, list(frame["label"]),
                              feedback_share, warmup=load.load_warmup if warmup is None else warmup,
                              timeout_s=load.request_timeout_s)
    table = Table("requests", "concurrency", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors", "routes", "feedback",
                  title=f"gateway load test {url}")
    table.add_row(str(result.requests), str(result.concurrency), f"{result.throughput:.0f}", f"{result.p50_ms:.1f}",
                  f"{result.p95_ms:.1f}", f"{result.p99_ms:.1f}", str(result.errors),
                  ", ".join(f"{k} {v}" for k, v in sorted(result.routes.items())), str(result.feedback))
    out.print(table)
    if result.first_error:
        out.print(f"[red]first error:[/] {result.first_error}")
