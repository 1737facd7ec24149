"""`ftops monitor check / history / ui`: drift of logged traffic against the champion's
reference, the stored checks, and the Evidently UI."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ftops import names
from ftops.cli.render import out
from ftops.cli.root import ConfigOption, ProjectDirOption, app, config_of

monitor_app = typer.Typer(help="Drift monitoring with Evidently: checks, history and the dashboard UI.",
                          no_args_is_help=True)
monitor_ui_app = typer.Typer(help="The Evidently UI over this project's workspace (127.0.0.1:monitoring.ui_port).",
                             no_args_is_help=True)
app.add_typer(monitor_app, name="monitor")
monitor_app.add_typer(monitor_ui_app, name="ui")


@monitor_app.command("check")
def monitor_check(
    window: Annotated[int | None, typer.Option(
        min=10, help="Rows in the current window (monitoring.window_size).")] = None,
    embeddings: Annotated[bool, typer.Option(
        "--embeddings/--no-embeddings", help="Also compare pooled embeddings (loads the champion model).")] = False,
    config: ConfigOption = None, project_dir: ProjectDirOption = None,
):
    """Compare recent logged traffic with the champion's reference; record the check, alert if drift holds."""
    from ftops import monitor

    cfg = config_of(config, project_dir=project_dir)
    if window is not None:
        cfg.monitoring = cfg.monitoring.model_copy(
            update={"window_size": window, "min_window": min(window, cfg.monitoring.min_window)})
    embed = None
    if embeddings:
        from ftops import decide

        model, tokenizer, _ = decide.load(decide.resolve(cfg, names.CHAMPION))
        if tokenizer is None:
            out.print("[yellow]the champion is the TF-IDF baseline: it has no embeddings; --embeddings is ignored[/]")
        else:
            embed = monitor.embedder(model, tokenizer, cfg.model.max_length)
    print_check(monitor.check(cfg, embed=embed))


def print_check(result) -> None:
    colour = {"drift": "red", "no_drift": "green"}.get(result.decision, "yellow")
    alert = " [bold red]ALERT[/]" if result.alert else ""
    out.print(f"[bold {colour}]{result.decision.upper().replace('_', ' ')}[/]{alert} {result.project}: "
              f"{result.window_size} rows vs {result.reference_size} reference rows"
              f" (champion v{result.reference_version or '-'}); {result.reason}", highlight=False)
    if result.signals:
        table = Table("signal", "score", "threshold", "method", "drifted", title="top drifting signals")
        for sig in result.top(len(result.signals)):
            table.add_row(sig.name, f"{sig.score:.4g}", f"{sig.threshold:.4g}", sig.method,
                          "[red]yes[/]" if sig.drifted else "no")
        out.print(table)
    share = "-" if result.drifted_share is None else f"{result.drifted_share:.2f}"
    quality = "" if result.accuracy is None else \
        f"; live accuracy {result.accuracy:.3f}, macro-F1 {result.macro_f1:.3f} on {result.feedback_rows} feedback rows"
    out.print(f"drifted share {share}{quality}")
    if result.report_path:
        out.print(f"report: {result.report_path}")
    if result.alert:
        sent = "sent" if result.event_sent else \
            "[red]not delivered yet[/] (pending: re-sent by the next check, the supervisor or `ftops up`)"
        out.print(f"event {names.EVENT_DRIFT}: {sent}")


@monitor_app.command("history")
def monitor_history(
    last: Annotated[int, typer.Option(min=1, help="How many checks, newest first.")] = 20,
    config: ConfigOption = None, project_dir: ProjectDirOption = None,
):
    """Stored drift checks: time, window, drifted share, decision, alert and the strongest signals."""
    from ftops import monitor

    cfg = config_of(config, project_dir=project_dir)
    checks = monitor.history(cfg, last)
    if not checks:
        out.print(f"No drift checks stored for {cfg.project.name} yet. Run `ftops monitor check`.")
        return
    table = Table("id", "time (UTC)", "rows", "share", "decision", "alert", "event", "top signals",
                  title=f"drift checks of {cfg.project.name}")
    for c in checks:
        top = ", ".join(s.name for s in c.top(3) if s.drifted) or "-"
        event = c.event_state or ("-" if c.event_sent is None else ("sent" if c.event_sent else "not sent"))
        table.add_row(str(c.id), f"{c.ts:%Y-%m-%d %H:%M:%S}", str(c.window_size),
                      "-" if c.drifted_share is None else f"{c.drifted_share:.2f}", c.decision,
                      "[red]yes[/]" if c.alert else "no", event, top)
    out.print(table)


@monitor_ui_app.command("up")
def monitor_ui_up(
    port: Annotated[int | None, typer.Option(help="Port on 127.0.0.1 (monitoring.ui_port).")] = None,
    config: ConfigOption = None, project_dir: ProjectDirOption = None,
):
    """Start the Evidently UI in the background (no-op if it runs) and wait until it answers."""
    from ftops import monitor, services

    cfg = config_of(config, {"monitoring.ui_port": port}, project_dir)
    services.start_one(cfg, "evidently", str(config) if config else None)
    info = monitor.ui_status(cfg)
    out.print(f"evidently ui up: {info.url} (pid {info.pid}, workspace {info.workspace}, log {info.log})")


@monitor_ui_app.command("down")
def monitor_ui_down(config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Stop the Evidently UI by PID; stopped on purpose, so the supervisor leaves it down."""
    from ftops import services

    cfg = config_of(config, project_dir=project_dir)
    out.print("evidently ui stopped" if services.stop_one(cfg, "evidently") else "evidently ui was not running")


@monitor_ui_app.command("status")
def monitor_ui_status(config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Is the Evidently UI of this project running, and where."""
    from ftops import monitor

    info = monitor.ui_status(config_of(config, project_dir=project_dir))
    if info is None:
        out.print("evidently ui: not running")
        raise typer.Exit(1)
    out.print(f"evidently ui: {info.url} (pid {info.pid}, ready={monitor.ui_ready(info)})")
