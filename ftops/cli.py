"""`ftops ...`: a thin layer over the stage functions. User errors print one paragraph
and exit 2; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from ftops.errors import FtopsError

app = typer.Typer(help="ftops: fine-tune, A/B, export, serve, monitor and retrain text classifiers.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="The data stage: validate, clean, split and snapshot labelled text.",
                       no_args_is_help=True)
config_app = typer.Typer(help="Show or check a project config.", no_args_is_help=True)
models_app = typer.Typer(help="Models that resolve offline.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")
app.add_typer(models_app, name="models")

out = Console()
err = Console(stderr=True)

ConfigOption = Annotated[Path | None, typer.Option(
    "--config", "-c", help="Project YAML (default: $FTOPS_CONFIG, else deploy/ftops.yaml).")]
ProjectDirOption = Annotated[Path | None, typer.Option(
    "--project-dir", help="Where snapshots, runs and databases go (config: project.dir).")]


def _config(path: Path | None, overrides: dict[str, Any] | None = None, project_dir: Path | None = None):
    from ftops.config import load_config

    overrides = dict(overrides or {})
    if project_dir is not None:
        overrides["project.dir"] = str(project_dir)
    return load_config(path, overrides={k: v for k, v in overrides.items() if v is not None})


# ---------------------------------------------------------------- data


@data_app.command("prepare")
def data_prepare(
    config: ConfigOption = None,
    data: Annotated[str | None, typer.Option(
        "--data", help="A CSV / TSV / JSONL / JSON / Parquet file, or a builtin corpus: "
        "builtin:tweets, builtin:tweets?domain=airline, builtin:tweets?exclude_domain=airline, "
        "builtin:movies (config: data.source).")] = None,
    text_column: Annotated[str | None, typer.Option(help="Column holding the text (data.text_column).")] = None,
    label_column: Annotated[str | None, typer.Option(help="Column holding the label (data.label_column).")] = None,
    labels: Annotated[str | None, typer.Option(
        help="Allowed labels in id order, comma-separated; other labels are invalid rows (data.labels).")] = None,
    encoding: Annotated[str | None, typer.Option(help="Text encoding of CSV/JSONL files (data.encoding).")] = None,
    on_invalid: Annotated[str | None, typer.Option(
        help="'error' stops at invalid rows and lists them; 'drop' drops and counts them (data.on_invalid).")] = None,
    max_rows: Annotated[int | None, typer.Option(
        help="Keep a stratified, seeded sample of this many rows after cleaning (data.max_rows).")] = None,
    validation_size: Annotated[float | None, typer.Option(help="Validation share (data.validation_size).")] = None,
    test_size: Annotated[float | None, typer.Option(help="Test share (data.test_size).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of sampling, splitting and augmentation (data.seed).")] = None,
    augment: Annotated[bool | None, typer.Option(
        "--augment/--no-augment", help="EDA augmentation of the train split (data.augment.enabled).")] = None,
    project_dir: ProjectDirOption = None,
):
    """Validate, clean, split and snapshot labelled text; print counts and what was dropped."""
    from ftops import data as data_stage

    overrides = {
        "data.source": data, "data.text_column": text_column, "data.label_column": label_column,
        "data.labels": labels.split(",") if labels else None, "data.encoding": encoding,
        "data.on_invalid": on_invalid, "data.max_rows": max_rows,
        "data.validation_size": validation_size, "data.test_size": test_size, "data.seed": seed,
        "data.augment.enabled": augment,
    }
    cfg = _config(config, overrides, project_dir)
    out.print(f"[bold]data prepare[/] {cfg.data.source}")
    snapshot = data_stage.prepare(cfg)
    print_snapshot(snapshot)


def print_snapshot(snapshot) -> None:
    from ftops.data import drop_summary

    table = Table(title=f"snapshot {snapshot.id}  ({snapshot.path})")
    table.add_column("split")
    for label in snapshot.labels:
        table.add_column(label, justify="right")
    table.add_column("rows", justify="right")
    for name, count in snapshot.counts.items():
        per_label = snapshot.label_counts[name]
        table.add_row(name, *[str(per_label.get(l, 0)) for l in snapshot.labels], str(count))
    out.print(table)
    report = snapshot.report
    cleaning = Table(title=f"cleaning: {report.rows_in} rows in, {report.rows_out} rows out")
    cleaning.add_column("reason")
    cleaning.add_column("rows", justify="right")
    cleaning.add_column("e.g. rows")
    for reason, count in drop_summary(report):
        cleaning.add_row(f"dropped: {reason}", str(count), ", ".join(map(str, report.examples[reason])))
    if report.truncated:
        cleaning.add_row("truncated to max_chars", str(report.truncated), "")
    if report.subsampled:
        cleaning.add_row("left out by max_rows sampling", str(report.subsampled), "")
    if not cleaning.rows:
        cleaning.add_row("nothing dropped", "0", "")
    out.print(cleaning)


@data_app.command("corpora")
def data_corpora():
    """List the builtin corpora (real labelled text shipped in PyPI wheels)."""
    from ftops.corpora import describe

    table = Table("source", "content")
    for name, description in describe():
        table.add_row(name, description)
    out.print(table)


# ---------------------------------------------------------------- train


@app.command("train")
def train_cmd(
    config: ConfigOption = None,
    candidates: Annotated[str | None, typer.Option(
        help="Comma-separated candidate names from the config (default: all of them).")] = None,
    snapshot: Annotated[str | None, typer.Option(
        help="Train on this data snapshot id (default: prepare one from the config's data section).")] = None,
    data: Annotated[str | None, typer.Option(help="Data source to prepare first (data.source).")] = None,
    max_rows: Annotated[int | None, typer.Option(help="Stratified sample size after cleaning (data.max_rows).")] = None,
    epochs: Annotated[float | None, typer.Option(help="Override every candidate's epochs.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Cap every candidate's optimizer steps (quick runs).")] = None,
    project_dir: ProjectDirOption = None,
):
    """Fine-tune candidates (+ a TF-IDF baseline) on a data snapshot, tracked in MLflow."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ftops import data as data_stage
    from ftops import train as train_stage

    cfg = _config(config, {"data.source": data, "data.max_rows": max_rows}, project_dir)
    cfg = _override_candidates(cfg, epochs=epochs, max_steps=max_steps)
    names = candidates.split(",") if candidates else None
    train_stage.check_candidates(cfg, names)  # every candidate checked before any trains
    if snapshot:
        snap = data_stage.load_snapshot(data_stage.snapshot_root(cfg), snapshot)
    else:
        snap = data_stage.prepare(cfg)
    out.print(f"[bold]train[/] snapshot {snap.id}: {snap.counts}")
    columns = (TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn())
    with Progress(*columns, console=out) as bars:
        def progress_for(name):
            task = bars.add_task(name, total=None, status="")

            def report(step, total, metrics):
                status = f"val macro-F1 {metrics['eval_macro_f1']:.3f}" if "eval_macro_f1" in metrics else None
                bars.update(task, completed=step, total=total,
                            **({"status": status} if status else {}))
            return report

        result = train_stage.train_round(cfg, snap, names, progress_for=progress_for)
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
    for name in ("candidate", "strategy", "train %", "val F1", "test F1", "samp/s", "wall s", "vs base"):
        table.add_column(name, justify="left" if name in ("candidate", "strategy") else "right")
    for res, _ in result.candidates:
        delta = res.test_macro_f1 - base.test_macro_f1
        colour = "green" if delta > 0 else "red"
        table.add_row(res.candidate, res.strategy, f"{100 * res.trainable_share:.2f}",
                      f"{res.val_macro_f1:.3f}", f"{res.test_macro_f1:.3f}",
                      f"{res.samples_per_second:.1f}", f"{res.wall_seconds:.0f}",
                      f"[{colour}]{delta:+.3f}[/]")
    table.add_row("baseline", "tfidf+logreg", "-", f"{base.val_macro_f1:.3f}", f"{base.test_macro_f1:.3f}",
                  "-", f"{base.wall_seconds:.1f}", "")
    out.print(table)


@app.command("strategies")
def strategies_cmd():
    """List the fine-tuning strategies and their params."""
    from ftops.strategies import STRATEGIES

    table = Table("strategy", "what it does", "params (defaults)")
    for name, strategy in STRATEGIES.items():
        defaults = ", ".join(f"{k}={f.default}" for k, f in strategy.Params.model_fields.items()) or "-"
        table.add_row(name, strategy.description, defaults)
    out.print(table)


# ---------------------------------------------------------------- config, models


@config_app.command("show")
def config_show(config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Print the effective config (file + FTOPS_ env overrides + embedded defaults)."""
    cfg = _config(config, project_dir=project_dir).resolved()
    out.print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")


@config_app.command("check")
def config_check(config: ConfigOption = None):
    """Validate a config; exit 2 with the offending keys if it is wrong."""
    cfg = _config(config)
    out.print(f"config ok: project {cfg.project.name}, {len(cfg.candidates)} candidates")


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


# ---------------------------------------------------------------- demo


@app.command("demo")
def demo(config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """The main job on the bundled corpus (so far: the data stage of the drift story)."""
    from ftops import data as data_stage

    for source in ("builtin:tweets?domain=airline", "builtin:tweets?exclude_domain=airline"):
        cfg = _config(config, {"data.source": source}, project_dir)
        out.rule(f"data prepare {source}")
        print_snapshot(data_stage.prepare(cfg))


def main() -> None:
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines drown the progress bars
    try:
        app()
    except FtopsError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
