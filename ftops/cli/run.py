"""`ftops run` and `ftops demo`: the lifecycle once with live progress, and the whole drift
story end to end."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ftops.cli.render import out
from ftops.cli.root import ConfigOption, app, config_of


@app.command("run")
def run_cmd(
    config: ConfigOption = None,
    in_process: Annotated[bool, typer.Option(
        "--in-process", help="Run the flows in this process even when the deployment is served.")] = False,
    reason: Annotated[str, typer.Option(help="Why it runs; recorded with the run (manual, schedule, drift, ...).")] = "manual",
):
    """The lifecycle once (data, train, A/B, export, deploy) with live progress: through the
    Prefect deployment when `ftops up` serves it, else in this process. Exit 0 when it
    promoted or a gate refused the challenger, 1 when the run failed."""
    from ftops import run as runs

    cfg = config_of(config)
    finished = runs.run(cfg, runs.config_path_of(config), reason, in_process,
                        say=lambda line: out.print(line, markup=False, highlight=False, soft_wrap=True))
    runs.report(out, finished)
    raise typer.Exit(runs.exit_code(finished))


@app.command("demo")
def demo(
    config: Annotated[Path, typer.Option("--config", "-c", help="Demo project YAML.")] = Path("deploy/demo.yaml"),
    keep: Annotated[bool, typer.Option("--keep/--reset", help="Keep the demo project dir instead of starting fresh.")] = False,
    down: Annotated[bool, typer.Option("--down/--stay-up", help="Stop the services at the end.")] = False,
):
    """The whole drift story end to end: first champion, traffic shift, drift, automatic retraining."""
    from flows import demo as story_module
    from ftops import services

    started = time.monotonic()
    story = story_module.run(str(config), reset=not keep, say=lambda line: out.print(line, highlight=False))
    table = Table("step", "what happened", "key figures", "s", title=f"ftops demo: {story.total_s / 60:.1f} min")
    for step in story.steps:
        table.add_row(step.name, step.what, step.figures, f"{step.seconds:.0f}")
    out.print(table)
    if story.drift_to_run_s is not None:
        out.print(f"drift event -> retraining run started: {story.drift_to_run_s:.1f} s")
    for name, url in story.links.items():
        out.print(f"{name:>12}: {url}")
    if down:
        services.down(config_of(config))
    else:
        out.print("services keep running: `ftops down -c deploy/demo.yaml` stops them")
    out.print(f"total {time.monotonic() - started:.0f} s")
