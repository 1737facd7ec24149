"""`ftops tune`: search each candidate's settings with Optuna, then print each study."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from ftops.cli.render import out, progress_bars
from ftops.cli.root import (CandidatesOption, ConfigOption, DataOption, MaxRowsOption, ProjectDirOption,
                            RoundSnapshotOption, app, config_of)


@app.command("tune")
def tune_cmd(
    config: ConfigOption = None,
    candidates: CandidatesOption = None,
    trials: Annotated[int | None, typer.Option(
        help="Trials per candidate in this call (tuning.trials).")] = None,
    minutes: Annotated[float | None, typer.Option(
        help="Wall-clock minutes per candidate in this call (tuning.minutes).")] = None,
    snapshot: RoundSnapshotOption = None,
    data: DataOption = None,
    max_rows: MaxRowsOption = None,
    new: Annotated[bool, typer.Option(
        "--new", help="Delete the candidate's study (its trials and trial folders) and start it over.")] = False,
    project_dir: ProjectDirOption = None,
):
    """Search each candidate's settings with Optuna on the validation split and write the best back.

    The budget, per candidate: --trials or --minutes, whichever ends first. The pruner stops
    a trial whose validation macro-F1 falls behind the earlier trials' at the same
    evaluation, so pruned trials are cheap and the budget buys many short ones. The test
    split is never read. The study lives in uris.tuning and resumes on the next call on the
    same snapshot, adding trials (--new starts it over); several processes on one study
    share it. `ftops train --tuned` (or tuning.enabled) trains with the best settings.
    """
    import optuna

    from ftops import data as data_stage
    from ftops import tune as tune_stage

    cfg = config_of(config, {"data.source": data, "data.max_rows": max_rows, "tuning.trials": trials,
                             "tuning.minutes": minutes}, project_dir)
    names = candidates.split(",") if candidates else None
    tune_stage.check_tuning(cfg, names)  # every space checked before any data or trial
    snap = data_stage.load_snapshot(data_stage.snapshot_root(cfg), snapshot) if snapshot else data_stage.prepare(cfg)
    out.print(f"[bold]tune[/] snapshot {snap.id}: {snap.counts}; budget per candidate: {cfg.tuning.trials} trials "
              f"or {cfg.tuning.minutes:g} min, whichever ends first")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the bars say it, one line per trial is noise
    with progress_bars() as bars:
        tasks: dict[str, Any] = {}

        def progress(state):
            if state.candidate not in tasks:
                tasks[state.candidate] = bars.add_task(state.candidate, total=state.budget, status="")
            best = f"{state.best:.3f}" if state.best is not None else "-"
            bars.update(tasks[state.candidate], completed=state.run,
                        status=f"complete {state.complete}  pruned {state.pruned}  best val macro-F1 {best}")

        results = tune_stage.tune(cfg, snap, names, new_study=new, progress=progress)
    print_tuning(results)


def print_tuning(results) -> None:
    """One table per candidate: the study's trials, its best, and where the results are."""
    for res in results:
        table = Table(title=f"{res.candidate}: study {res.study} (F1 = validation macro-F1)", show_header=False)
        table.add_column("what")
        table.add_column("value", overflow="fold")
        table.add_row("trials", f"{res.trials_run} run now; study: {res.complete} complete, {res.pruned} pruned"
                      + (f", {res.failed} failed" if res.failed else ""))
        best = f"{res.best_val_macro_f1:.3f} (trial {res.best_trial})" if res.best_trial is not None else "-"
        table.add_row("best val F1", best)
        settings = {k: v for k, v in res.settings.items() if k != "params"} | res.settings.get("params", {})
        for key, value in settings.items():
            table.add_row(f"  {key}", f"{value:.3g}" if isinstance(value, float) else str(value))
        table.add_row("settings file", str(res.settings_file) if res.settings_file else "-")
        table.add_row("plots", "\n".join(map(str, res.plots)) or "-")
        table.add_row("storage", res.storage)
        for note in res.notes:
            table.add_row("note", note)
        out.print(table)
