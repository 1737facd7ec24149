"""The `ftops` command itself: the typer app, the options many commands share, the config a
command runs with, and the one place where errors become exit codes. User errors print one
paragraph and exit 2; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ftops.cli.render import err
from ftops.errors import FtopsError

app = typer.Typer(help="ftops: fine-tune, A/B, export, serve, monitor and retrain text classifiers.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)

# `ftops --help` lists the commands, then the groups, in this order, the one users know; the
# modules that define them follow the lifecycle instead.
COMMANDS = ("train", "tune", "evaluate", "compare", "decide", "deploy", "reconcile", "rollback", "loadtest",
            "predict", "strategies", "run", "demo", "up", "down", "status", "export", "prune")
GROUPS = ("data", "config", "models", "registry", "serve", "gateway", "ab", "monitor")


def in_help_order() -> None:
    """Sort the registered commands and groups as `ftops --help` lists them (new ones last)."""
    app.registered_commands.sort(key=lambda c: COMMANDS.index(c.name) if c.name in COMMANDS else len(COMMANDS))
    app.registered_groups.sort(key=lambda g: GROUPS.index(g.name) if g.name in GROUPS else len(GROUPS))


ConfigOption = Annotated[Path | None, typer.Option(
    "--config", "-c", help="Project YAML (default: $FTOPS_CONFIG, else deploy/ftops.yaml).")]
ProjectDirOption = Annotated[Path | None, typer.Option(
    "--project-dir", help="Where snapshots, runs and databases go (config: project.dir).")]
SnapshotOption = Annotated[str | None, typer.Option(
    help="Data snapshot id whose test split is used (default: the latest).")]

# Shared by `train` and `tune`: what to train on and which candidates.
CandidatesOption = Annotated[str | None, typer.Option(
    help="Comma-separated candidate names from the config (default: all of them).")]
RoundSnapshotOption = Annotated[str | None, typer.Option(
    help="Use this data snapshot id (default: prepare one from the config's data section).")]
DataOption = Annotated[str | None, typer.Option(help="Data source to prepare first (data.source).")]
MaxRowsOption = Annotated[int | None, typer.Option(help="Stratified sample size after cleaning (data.max_rows).")]


# The option that sets a config key, where it is not `--<last part of the key>`, so that a
# config error names the flag the user typed (tests/test_docs.py holds it to the commands).
FLAGS = {"project.dir": "--project-dir", "data.source": "--data", "data.augment.enabled": "--augment",
         "serving.gateway_port": "--port", "monitoring.ui_port": "--port", "tuning.enabled": "--tuned"}


def _flag(dotted: str) -> str:
    return FLAGS.get(dotted) or "--" + dotted.rsplit(".", 1)[-1].replace("_", "-")


def config_of(path: Path | None, overrides: dict[str, Any] | None = None, project_dir: Path | None = None):
    """The project config a command runs with: the file, then the flags given (None: not given)."""
    from ftops.config import load_config

    overrides = dict(overrides or {})
    if project_dir is not None:
        overrides["project.dir"] = str(project_dir)
    given = {k: v for k, v in overrides.items() if v is not None}
    return load_config(path, overrides=given, flags={k: _flag(k) for k in given})


def snapshot_of(cfg, snapshot_id):
    """The data snapshot `--snapshot` names (None: the latest)."""
    from ftops import data as data_stage

    return data_stage.load_snapshot(data_stage.snapshot_root(cfg), snapshot_id)


def main() -> None:
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines drown the progress bars
    try:
        app()
    except FtopsError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
