"""`ftops models ls` and `ftops strategies`: what can be fine-tuned, the model names that
resolve offline and the strategies with their params."""

from __future__ import annotations

import typer
from rich.table import Table

from ftops.cli.render import out
from ftops.cli.root import app
from ftops.errors import FtopsError

models_app = typer.Typer(help="Models that resolve offline.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("ls")
def models_ls():
    """Model names that resolve to weights inside installed packages."""
    from ftops.models import KNOWN_MODELS, resolve_model

    table = Table("name", "weights", "description")
    for name, known in KNOWN_MODELS.items():
        try:
            where = str(resolve_model(name))
        except FtopsError as exc:
            where = f"[red]{exc}[/]"
        table.add_row(name, where, known.description)
    out.print(table)


@app.command("strategies")
def strategies_cmd():
    """List the fine-tuning strategies, their params and the settings each trains with unless set."""
    from ftops.strategies import STRATEGIES

    table = Table()
    for column in ("strategy", "what it does", "params (defaults)", "trains with, unless set"):
        table.add_column(column, overflow="fold")  # a narrow terminal wraps values, never cuts them
    for name, strategy in STRATEGIES.items():
        defaults = ", ".join(f"{k}={f.default}" for k, f in strategy.Params.model_fields.items()) or "-"
        own = "\n".join(f"{k}={v}" for k, v in strategy.defaults.items()) or "the candidate's defaults"
        table.add_row(name, strategy.description, defaults, own)
    out.print(table)
