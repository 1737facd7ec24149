"""`ftops export`: a model to gated ONNX variants, and the table of how each did."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ftops import names
from ftops.cli.render import out
from ftops.cli.root import ConfigOption, ProjectDirOption, app, config_of, snapshot_of


@app.command("export")
def export_cmd(
    model: Annotated[str, typer.Option(help="champion / challenger / previous, a version (3, v3), or a trained candidate folder.")],
    snapshot: Annotated[str | None, typer.Option(
        help="Data snapshot id: calibration texts from its train split, parity texts from its test split (default: the latest).")] = None,
    out_dir: Annotated[Path | None, typer.Option(
        "--out", help="Export folder (default: <project dir>/exports/<name>-<timestamp>).")] = None,
    config: ConfigOption = None, project_dir: ProjectDirOption = None,
):
    """Export a model to ONNX variants (fp32, optimized, int8, fp16), gate each against PyTorch
    on the test split, time them, and select one for serving."""
    from ftops import decide
    from ftops import export as export_stage

    cfg = config_of(config, project_dir=project_dir)
    snap = snapshot_of(cfg, snapshot)
    ref = decide.resolve(cfg, model)
    out.print(f"[bold]export[/] {model} ({ref.folder}) with snapshot {snap.id}")
    result = export_stage.export_ref(cfg, ref, snap, out_dir,
                                     progress=lambda line: out.print(f"  {line}", highlight=False))
    print_export(result)
    if result.selected is None:
        raise typer.Exit(1)


def print_export(result) -> None:
    from ftops import export as export_stage

    table = Table(title=f"export {result.out_dir} (PyTorch macro-F1 {result.reference['macro_f1']:.4f} "
                        f"on {result.reference['n_texts']} test texts)")
    for name in ("variant", "MB", "p50 ms b1", "p99 ms b1", "samples/s b32", "max diff", "agreement",
                 "delta F1", "status", "reason"):
        table.add_column(name, justify="left" if name in ("variant", "status", "reason") else "right")
    colours = {export_stage.PASS: "green", export_stage.UNBATCHED: "yellow"}
    for report in result.variants.values():
        t = export_stage.figure_text(report)
        mark = " *" if report.name == result.selected else ""
        table.add_row(report.name + mark, t["size_mb"], t["p50_ms"], t["p99_ms"], t["samples_per_s"],
                      t["max_abs_diff"], t["agreement"], t["delta_macro_f1"],
                      f"[{colours.get(report.status, 'red')}]{report.status}[/]", report.reason)
    out.print(table)
    if result.selected:
        out.print(f"[bold green]selected {result.selected}[/]: {result.selection_reason}")
    else:
        out.print(f"[bold red]nothing selected[/]: {result.selection_reason}")
    out.print(f"manifest: {result.out_dir / names.MANIFEST_FILE}")
