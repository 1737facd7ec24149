"""`ftops ...`: a thin layer over the stage functions, one module per stage in lifecycle
order. `root` holds the typer app, the shared options, the config a command runs with and
`main` (user errors exit 2); `render` the consoles and the renderers several commands share.
Then: `services` (up, down, status, prune), `config`, `models` (models ls, strategies),
`data`, `tune`, `train`, `evaluate` (evaluate, compare, decide), `registry`, `export`,
`serve` (serve, deploy, reconcile, rollback, loadtest, predict), `gateway`, `online` (ab),
`monitor` and `run` (run, demo)."""

from ftops.cli import root
from ftops.cli import services, config, models, data, tune, train, evaluate, registry  # noqa: F401
from ftops.cli import export, serve, gateway, online, monitor, run  # noqa: F401
from ftops.cli.root import app, main

root.in_help_order()

__all__ = ["app", "main"]
