"""`ftops registry ls / promote / rollback`: the registry's versions and, for a project that
serves nothing yet, moving its champion alias by hand."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ftops import names
from ftops.cli.render import out
from ftops.cli.root import ConfigOption, ProjectDirOption, app, config_of
from ftops.errors import FtopsError

registry_app = typer.Typer(help="The model registry: versions and the champion / challenger / previous aliases.",
                           no_args_is_help=True)
app.add_typer(registry_app, name="registry")


@registry_app.command("ls")
def registry_ls(config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Versions, newest first, with aliases, candidate, decision and data snapshot."""
    from ftops import registry

    cfg = config_of(config, project_dir=project_dir)
    table = Table("version", "aliases", "candidate", "decision", "snapshot", "run", title=f"registry: {cfg.project.name}")
    for v in registry.versions(cfg):
        table.add_row(v.version, ", ".join(v.aliases), v.tags.get(names.TAG_CANDIDATE, ""),
                      v.tags.get(names.TAG_DECISION, ""), v.tags.get(names.TAG_SNAPSHOT, ""), v.run_id[:8])
    out.print(table)


@registry_app.command("promote")
def registry_promote(version: Annotated[str, typer.Argument(help="Version number (3 or v3) or alias.")],
                     config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Make a version the champion in the registry alone, for a project that serves nothing
    yet; once a champion serves, what serves decides: `ftops deploy --version N`."""
    from ftops import registry

    cfg = config_of(config, project_dir=project_dir)
    _registry_only(cfg, f"ftops deploy --export <its export folder> --version {version.removeprefix('v')}")
    champion = registry.promote(cfg, version)
    out.print(f"champion is now version {champion.version}")


@registry_app.command("rollback")
def registry_rollback(config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Swap champion and previous in the registry alone, for a project that serves nothing
    yet; once a champion serves, `ftops rollback` moves serving and registry together."""
    from ftops import registry

    cfg = config_of(config, project_dir=project_dir)
    _registry_only(cfg, "ftops rollback")
    champion = registry.rollback(cfg)
    out.print(f"champion is now version {champion.version} (rolled back)")


def _registry_only(cfg, instead: str) -> None:
    """Registry aliases follow what serves (`ftops reconcile` moves them back), so a move of
    the alias alone is refused once something serves."""
    from ftops.serve import deploy

    if names.CHAMPION in deploy.routing(cfg):
        raise FtopsError(f"A champion serves for {cfg.project.name}: the registry follows what serves, so moving the "
                         f"alias alone would be undone by `ftops reconcile`. Run `{instead}` instead.")
