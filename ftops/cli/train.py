"""`ftops train`: fine-tune a round of candidates with live bars, then print the round."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ftops.cli.render import out, progress_bars
from ftops.cli.root import (CandidatesOption, ConfigOption, DataOption, MaxRowsOption, ProjectDirOption,
                            RoundSnapshotOption, app, config_of)


@app.command("train")
def train_cmd(
    config: ConfigOption = None,
    candidates: CandidatesOption = None,
    snapshot: RoundSnapshotOption = None,
    data: DataOption = None,
    max_rows: MaxRowsOption = None,
    epochs: Annotated[float | None, typer.Option(help="Override every candidate's epochs.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Cap every candidate's optimizer steps (quick runs).")] = None,
    nproc: Annotated[int | None, typer.Option(
        help="Data-parallel processes, one per device (training.nproc); >1 runs torchrun DDP.")] = None,
    resume: Annotated[str | None, typer.Option(
        help="Continue the round with this MLflow run id (same config and snapshot): finished candidates "
             "are kept, unfinished ones continue from their last checkpoint.")] = None,
    tuned: Annotated[bool | None, typer.Option(
        "--tuned/--no-tuned", help="Train candidates with their `ftops tune` settings, where they have "
        "them (tuning.enabled).")] = None,
    project_dir: ProjectDirOption = None,
):
    """Fine-tune candidates (+ a TF-IDF baseline) on a data snapshot, tracked in MLflow."""
    from ftops import data as data_stage
    from ftops import train as train_stage

    cfg = config_of(config, {"data.source": data, "data.max_rows": max_rows, "training.nproc": nproc,
                             "tuning.enabled": tuned}, project_dir)
    cfg = _override_candidates(cfg, epochs=epochs, max_steps=max_steps)
    names = candidates.split(",") if candidates else None
    train_stage.check_candidates(cfg, names)  # every candidate checked before any trains
    if resume:  # the round's own snapshot, unless --snapshot names one (then it must be the same)
        snapshot = snapshot or train_stage.saved_round(cfg, resume).snapshot_id
    if snapshot:
        snap = data_stage.load_snapshot(data_stage.snapshot_root(cfg), snapshot)
    else:
        snap = data_stage.prepare(cfg)
    ddp = f", DDP over {cfg.training.nproc} processes" if cfg.training.nproc > 1 else ""
    again = f" (resuming round {resume})" if resume else ""
    out.print(f"[bold]train[/] snapshot {snap.id}: {snap.counts}{ddp}{again}")
    with progress_bars() as bars:
        def progress_for(name):
            task = bars.add_task(name, total=None, status="")

            def report(step, total, metrics):
                status = f"val macro-F1 {metrics['eval_macro_f1']:.3f}" if "eval_macro_f1" in metrics else None
                bars.update(task, completed=step, total=total,
                            **({"status": status} if status else {}))
            return report

        result = train_stage.train_round(cfg, snap, names, progress_for=progress_for, resume=resume,
                                         notify=lambda line: out.print(line, markup=False))
    print_round(result)


def _override_candidates(cfg, **values):
    values = {k: v for k, v in values.items() if v is not None}
    if values:
        cfg.candidates = [c.model_copy(update=values) for c in cfg.candidates]
        type(cfg).model_validate(cfg.model_dump())  # re-validate the overridden values
    return cfg


def print_round(result) -> None:
    base = result.baseline
    table = Table(title=f"round {result.run_id[:8]} on snapshot {result.snapshot_id} (F1 = macro-F1)")
    for name in ("candidate", "strategy", "extras", "train %", "val F1", "test F1", "samp/s", "wall s", "vs base"):
        table.add_column(name, justify="left" if name in ("candidate", "strategy", "extras") else "right")
    for res, _ in result.candidates:
        delta = res.test_macro_f1 - base.test_macro_f1
        colour = "green" if delta > 0 else "red"
        extras = res.extras + (f" x{res.world_size} procs" if res.world_size > 1 else "")
        table.add_row(res.candidate, res.strategy, extras or "-", f"{100 * res.trainable_share:.2f}",
                      f"{res.val_macro_f1:.3f}", f"{res.test_macro_f1:.3f}",
                      f"{res.samples_per_second:.1f}", f"{res.wall_seconds:.0f}",
                      f"[{colour}]{delta:+.3f}[/]")
    table.add_row("baseline", "tfidf+logreg", "-", "-", f"{base.val_macro_f1:.3f}", f"{base.test_macro_f1:.3f}",
                  "-", f"{base.wall_seconds:.1f}", "")
    out.print(table)
    for res, _ in result.candidates:
        for task, values in res.task_metrics.items():
            out.print(f"  {res.candidate}: task [bold]{task}[/] test macro-F1 {values['macro_f1']:.3f}, "
                      f"accuracy {values['accuracy']:.3f}")
