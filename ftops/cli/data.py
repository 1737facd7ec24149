"""`ftops data prepare / corpora`: labelled text in, a validated, split snapshot out."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ftops.cli.render import out
from ftops.cli.root import ConfigOption, ProjectDirOption, app, config_of

data_app = typer.Typer(help="The data stage: validate, clean, split and snapshot labelled text.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")


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
    cfg = config_of(config, overrides, project_dir)
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
    from ftops.data.corpora import describe

    table = Table("source", "content")
    for name, description in describe():
        table.add_row(name, description)
    out.print(table)
