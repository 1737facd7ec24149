"""`ftops up / down / status / prune`: the project's services as a whole, and their upkeep."""

from __future__ import annotations

import typer
from rich.table import Table

from ftops.cli.render import out
from ftops.cli.root import ConfigOption, ProjectDirOption, app, config_of


@app.command("up")
def up_cmd(config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Start every service on 127.0.0.1 (Prefect, MLflow UI, Triton, gateway, Evidently UI, deployments)."""
    from ftops import services

    cfg = config_of(config, project_dir=project_dir)
    print_services(services.up(cfg, str(config) if config else None, say=out.print))


@app.command("down")
def down_cmd(config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Stop every service of the project by PID."""
    from ftops import services

    stopped = services.down(config_of(config, project_dir=project_dir))
    out.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@app.command("status")
def status_cmd(config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Which services run, where, and their logs."""
    from ftops import services

    cfg = config_of(config, project_dir=project_dir)
    print_services(services.status(cfg))
    for what, state in services.protection(cfg):
        colour = "yellow" if state.startswith("OPEN") else "green"
        out.print(f"{what}: [{colour}]{state}[/]")
    _print_log_health(cfg)


def _print_log_health(cfg) -> None:
    """The gateway's prediction-log counts: rows set aside or dropped are never silent."""
    from ftops.serve import gateway

    info = gateway.status(cfg)
    answer = gateway.probe(info.url) if info else None
    if answer is None:
        return
    log = answer[1].get("log", {})
    parts = [f"{key.replace('_', ' ')} {log[key]}" for key in ("written", "buffered", "dropped", "dead_lettered")
             if key in log]
    colour = "red" if log.get("dropped") or log.get("dead_lettered") else "green"
    out.print(f"prediction log: [{colour}]{', '.join(parts)}[/]")


def print_services(rows) -> None:
    table = Table("service", "state", "url", "pid", "restarts", "log", title="services")
    for row in rows:
        colour = "green" if row.state == "up" else "red"
        table.add_row(row.name, f"[{colour}]{row.state}[/]", row.url, str(row.pid or ""), str(row.restarts or ""),
                      row.log or "")
    out.print(table)
    for row in rows:
        if row.restarts or row.state == "failed":
            out.print(f"{row.name}: {row.restarts} restart(s), last {row.last_restart or '-'}: {row.last_reason or '-'}")


@app.command("prune")
def prune_cmd(config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Apply the retention settings now: archive old prediction-log rows, keep only the routed
    Triton versions, rotate service logs, drop old downloads, snapshots and checkpoints."""
    from ftops import retention

    report = retention.apply(config_of(config, project_dir=project_dir))
    for line in report.lines():
        out.print(line, highlight=False)
    if report.errors:
        raise typer.Exit(1)
