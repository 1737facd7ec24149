"""`ftops evaluate / compare / decide`: a model's offline metrics, the A/B of a challenger
against the champion, and the decision that registers and promotes it."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ftops import names
from ftops.cli.render import num, out, print_decision
from ftops.cli.root import ConfigOption, ProjectDirOption, SnapshotOption, app, config_of, snapshot_of


@app.command("evaluate")
def evaluate_cmd(
    model: Annotated[str, typer.Option(help="champion / challenger / previous, a version (3, v3), or a trained candidate folder.")],
    config: ConfigOption = None, snapshot: SnapshotOption = None, project_dir: ProjectDirOption = None,
):
    """Metrics of one model on a snapshot's test split: overall, per class and per slice."""
    from ftops import decide, evaluate

    cfg = config_of(config, project_dir=project_dir)
    snap = snapshot_of(cfg, snapshot)
    ref = decide.resolve(cfg, model)
    m, tok, labels = decide.load(ref)
    pred = decide.predict(m, tok, labels, snap.split("test"), cfg.model.max_length)
    scores = evaluate.metrics(pred)
    head = Table(title=f"{model} on snapshot {snap.id} test split ({scores['n']} rows)")
    for key in ("accuracy", "macro_f1", "weighted_f1", "roc_auc", "ece"):
        head.add_column(key, justify="right")
    head.add_row(*[num(scores[k]) for k in ("accuracy", "macro_f1", "weighted_f1", "roc_auc", "ece")])
    out.print(head)
    per_class = Table("class", "precision", "recall", "f1", "support", title="per class")
    for label, row in scores["per_class"].items():
        per_class.add_row(label, *[num(row[k]) for k in ("precision", "recall", "f1")], str(row["support"]))
    out.print(per_class)
    sliced = Table("slice", "n", "accuracy", "macro_f1", title="slices")
    for column, values in evaluate.slices(pred).items():
        for value, row in values.items():
            numbers = ["skipped", ""] if "skipped" in row else [num(row["accuracy"]), num(row["macro_f1"])]
            sliced.add_row(f"{column}={value}", str(row["n"]), *numbers)
    out.print(sliced)


@app.command("compare")
def compare_cmd(
    challenger: Annotated[str, typer.Option(help="Model to judge (alias, version or folder).")],
    champion: Annotated[str | None, typer.Option(help="Model to beat (default: the registry champion, if any).")] = None,
    protected: Annotated[str | None, typer.Option(
        help="Comma-separated protected slices, e.g. domain or domain=airline (default: every categorical value).")] = None,
    baseline: Annotated[bool, typer.Option(
        "--baseline/--no-baseline", help="Also require beating the TF-IDF baseline.")] = True,
    config: ConfigOption = None, snapshot: SnapshotOption = None, project_dir: ProjectDirOption = None,
):
    """A/B a challenger against the champion on the same test rows and print the decision."""
    from ftops import decide, registry

    cfg = config_of(config, project_dir=project_dir)
    snap = snapshot_of(cfg, snapshot)
    challenger_ref = decide.resolve(cfg, challenger)
    if champion is None and registry.find(cfg, names.CHAMPION) is not None:
        champion = names.CHAMPION
    champion_ref = decide.resolve(cfg, champion) if champion else None
    decision = decide.compare_refs(cfg, snap, challenger_ref, champion_ref,
                                   protected.split(",") if protected else None, with_baseline=baseline)
    folder = decide.record(cfg, decision)
    print_decision(decision)
    out.print(f"decision written to {folder}")


@app.command("decide")
def decide_cmd(
    run_id: Annotated[str, typer.Argument(help="MLflow run id of a trained candidate (see `ftops train`).")],
    config: ConfigOption = None, snapshot: SnapshotOption = None, project_dir: ProjectDirOption = None,
):
    """Register a candidate as challenger, A/B it against the champion, promote if it wins."""
    from ftops import decide

    cfg = config_of(config, project_dir=project_dir)
    decision, version = decide.decide(cfg, snapshot_of(cfg, snapshot), run_id)
    print_decision(decision)
    out.print(f"version {version.version}: aliases {', '.join(version.aliases) or 'none'}")
