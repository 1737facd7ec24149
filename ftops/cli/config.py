"""`ftops config show / check`: the effective project config, and whether a file is valid."""

from __future__ import annotations

import typer
import yaml

from ftops.cli.render import out
from ftops.cli.root import ConfigOption, ProjectDirOption, app, config_of

config_app = typer.Typer(help="Show or check a project config.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Print the effective config (file + FTOPS_ env overrides + embedded defaults)."""
    from ftops import security

    cfg = config_of(config, project_dir=project_dir).resolved()
    out.print(yaml.safe_dump(security.masked(cfg.model_dump(mode="json")), sort_keys=False), end="")


@config_app.command("check")
def config_check(config: ConfigOption = None):
    """Validate a config; exit 2 with the offending keys if it is wrong."""
    cfg = config_of(config)
    out.print(f"config ok: project {cfg.project.name}, {len(cfg.candidates)} candidates")
