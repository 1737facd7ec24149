"""`ftops ...`: a thin layer over the stage functions. User errors print one paragraph
and exit 2; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import sys
import time
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


# The option that sets a config key, where it is not `--<last part of the key>`, so that a
# config error names the flag the user typed (tests/test_docs.py holds it to the commands).
FLAGS = {"project.dir": "--project-dir", "data.source": "--data", "data.augment.enabled": "--augment",
         "serving.gateway_port": "--port", "monitoring.ui_port": "--port", "tuning.enabled": "--tuned"}


def _flag(dotted: str) -> str:
    return FLAGS.get(dotted) or "--" + dotted.rsplit(".", 1)[-1].replace("_", "-")


def _config(path: Path | None, overrides: dict[str, Any] | None = None, project_dir: Path | None = None):
    from ftops.config import load_config

    overrides = dict(overrides or {})
    if project_dir is not None:
        overrides["project.dir"] = str(project_dir)
    given = {k: v for k, v in overrides.items() if v is not None}
    return load_config(path, overrides=given, flags={k: _flag(k) for k in given})


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

# Shared by `train` and `tune`: what to train on and which candidates.
CandidatesOption = Annotated[str | None, typer.Option(
    help="Comma-separated candidate names from the config (default: all of them).")]
RoundSnapshotOption = Annotated[str | None, typer.Option(
    help="Use this data snapshot id (default: prepare one from the config's data section).")]
DataOption = Annotated[str | None, typer.Option(help="Data source to prepare first (data.source).")]
MaxRowsOption = Annotated[int | None, typer.Option(help="Stratified sample size after cleaning (data.max_rows).")]


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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ftops import data as data_stage
    from ftops import train as train_stage

    cfg = _config(config, {"data.source": data, "data.max_rows": max_rows, "training.nproc": nproc,
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

        result = train_stage.train_round(cfg, snap, names, progress_for=progress_for, resume=resume,
                                         notify=lambda line: out.print(line, markup=False))
    print_round(result)


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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ftops import data as data_stage
    from ftops import tune as tune_stage

    cfg = _config(config, {"data.source": data, "data.max_rows": max_rows, "tuning.trials": trials,
                           "tuning.minutes": minutes}, project_dir)
    names = candidates.split(",") if candidates else None
    tune_stage.check_tuning(cfg, names)  # every space checked before any data or trial
    snap = data_stage.load_snapshot(data_stage.snapshot_root(cfg), snapshot) if snapshot else data_stage.prepare(cfg)
    out.print(f"[bold]tune[/] snapshot {snap.id}: {snap.counts}; budget per candidate: {cfg.tuning.trials} trials "
              f"or {cfg.tuning.minutes:g} min, whichever ends first")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the bars say it, one line per trial is noise
    columns = (TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn())
    with Progress(*columns, console=out) as bars:
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


# ---------------------------------------------------------------- evaluate, compare, registry

SnapshotOption = Annotated[str | None, typer.Option(
    help="Data snapshot id whose test split is used (default: the latest).")]


def _snapshot(cfg, snapshot_id):
    from ftops import data as data_stage

    return data_stage.load_snapshot(data_stage.snapshot_root(cfg), snapshot_id)


@app.command("evaluate")
def evaluate_cmd(
    model: Annotated[str, typer.Option(help="champion / challenger / previous, a version (3, v3), or a trained candidate folder.")],
    config: ConfigOption = None, snapshot: SnapshotOption = None, project_dir: ProjectDirOption = None,
):
    """Metrics of one model on a snapshot's test split: overall, per class and per slice."""
    from ftops import decide, evaluate

    cfg = _config(config, project_dir=project_dir)
    snap = _snapshot(cfg, snapshot)
    ref = decide.resolve(cfg, model)
    m, tok, labels = decide.load(ref)
    pred = decide.predict(m, tok, labels, snap.split("test"), cfg.model.max_length)
    scores = evaluate.metrics(pred)
    head = Table(title=f"{model} on snapshot {snap.id} test split ({scores['n']} rows)")
    for key in ("accuracy", "macro_f1", "weighted_f1", "roc_auc", "ece"):
        head.add_column(key, justify="right")
    head.add_row(*[_num(scores[k]) for k in ("accuracy", "macro_f1", "weighted_f1", "roc_auc", "ece")])
    out.print(head)
    per_class = Table("class", "precision", "recall", "f1", "support", title="per class")
    for label, row in scores["per_class"].items():
        per_class.add_row(label, *[_num(row[k]) for k in ("precision", "recall", "f1")], str(row["support"]))
    out.print(per_class)
    sliced = Table("slice", "n", "accuracy", "macro_f1", title="slices")
    for column, values in evaluate.slices(pred).items():
        for value, row in values.items():
            numbers = ["skipped", ""] if "skipped" in row else [_num(row["accuracy"]), _num(row["macro_f1"])]
            sliced.add_row(f"{column}={value}", str(row["n"]), *numbers)
    out.print(sliced)


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


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

    cfg = _config(config, project_dir=project_dir)
    snap = _snapshot(cfg, snapshot)
    challenger_ref = decide.resolve(cfg, challenger)
    if champion is None and registry.find(cfg, registry.CHAMPION) is not None:
        champion = registry.CHAMPION
    champion_ref = decide.resolve(cfg, champion) if champion else None
    decision = decide.compare_refs(cfg, snap, challenger_ref, champion_ref,
                                   protected.split(",") if protected else None, with_baseline=baseline)
    folder = decide.record(cfg, decision)
    print_decision(decision)
    out.print(f"decision written to {folder}")


def print_decision(decision) -> None:
    colour = "green" if decision.outcome == "promote" else "red"
    out.print(f"[bold {colour}]{decision.outcome.upper()}[/] {decision.summary}")
    table = Table("rule", "value", "threshold", "pass", "detail", title="rules")
    for rule in decision.rules:
        table.add_row(rule.name, _num(rule.value), _num(rule.threshold),
                      "[green]yes[/]" if rule.passed else "[red]NO[/]", rule.detail)
    out.print(table)
    lat = decision.context.get("latency_batch1", {})
    if lat:
        timing = Table("model", "p50 ms", "p99 ms", "runtime", title="batch-1 latency, same texts")
        for name, row in lat.items():
            timing.add_row(name, f"{row['p50_ms']:.1f}", f"{row['p99_ms']:.1f}", row["runtime"])
        out.print(timing)


@app.command("decide")
def decide_cmd(
    run_id: Annotated[str, typer.Argument(help="MLflow run id of a trained candidate (see `ftops train`).")],
    config: ConfigOption = None, snapshot: SnapshotOption = None, project_dir: ProjectDirOption = None,
):
    """Register a candidate as challenger, A/B it against the champion, promote if it wins."""
    from ftops import decide

    cfg = _config(config, project_dir=project_dir)
    decision, version = decide.decide(cfg, _snapshot(cfg, snapshot), run_id)
    print_decision(decision)
    out.print(f"version {version.version}: aliases {', '.join(version.aliases) or 'none'}")


registry_app = typer.Typer(help="The model registry: versions and the champion / challenger / previous aliases.",
                           no_args_is_help=True)
app.add_typer(registry_app, name="registry")


@registry_app.command("ls")
def registry_ls(config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Versions, newest first, with aliases, candidate, decision and data snapshot."""
    from ftops import registry

    cfg = _config(config, project_dir=project_dir)
    table = Table("version", "aliases", "candidate", "decision", "snapshot", "run", title=f"registry: {cfg.project.name}")
    for v in registry.versions(cfg):
        table.add_row(v.version, ", ".join(v.aliases), v.tags.get("ftops.candidate", ""),
                      v.tags.get(registry.TAG_DECISION, ""), v.tags.get("ftops.data_snapshot", ""), v.run_id[:8])
    out.print(table)


@registry_app.command("promote")
def registry_promote(version: Annotated[str, typer.Argument(help="Version number (3 or v3) or alias.")],
                     config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Make a version the champion in the registry alone, for a project that serves nothing
    yet; once a champion serves, what serves decides: `ftops deploy --version N`."""
    from ftops import registry

    cfg = _config(config, project_dir=project_dir)
    _registry_only(cfg, f"ftops deploy --export <its export folder> --version {version.removeprefix('v')}")
    champion = registry.promote(cfg, version)
    out.print(f"champion is now version {champion.version}")


@registry_app.command("rollback")
def registry_rollback(config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Swap champion and previous in the registry alone, for a project that serves nothing
    yet; once a champion serves, `ftops rollback` moves serving and registry together."""
    from ftops import registry

    cfg = _config(config, project_dir=project_dir)
    _registry_only(cfg, "ftops rollback")
    champion = registry.rollback(cfg)
    out.print(f"champion is now version {champion.version} (rolled back)")


def _registry_only(cfg, instead: str) -> None:
    """Registry aliases follow what serves (`ftops reconcile` moves them back), so a move of
    the alias alone is refused once something serves."""
    from ftops.serve import deploy

    if "champion" in deploy.routing(cfg):
        raise FtopsError(f"A champion serves for {cfg.project.name}: the registry follows what serves, so moving the "
                         f"alias alone would be undone by `ftops reconcile`. Run `{instead}` instead.")


# ---------------------------------------------------------------- serving

serve_app = typer.Typer(help="The Triton Inference Server of this project (127.0.0.1, explicit model control).",
                        no_args_is_help=True)
app.add_typer(serve_app, name="serve")


@serve_app.command("up")
def serve_up(config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Start tritonserver (no-op if it runs) and reload the routed versions; the
    supervisor keeps it up from now on."""
    from ftops import services
    from ftops.serve import server

    cfg = _config(config, project_dir=project_dir)
    loaded = services.start_one(cfg, "triton", str(config) if config else None)
    info = server.status(cfg)
    out.print(f"triton up: pid {info.pid}, http {info.http_url}, grpc {info.grpc_url}, "
              f"metrics {info.host}:{info.metrics_port}, log {info.log}")
    out.print(f"  loaded: {loaded}")


@serve_app.command("down")
def serve_down(config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Stop tritonserver by PID; stopped on purpose, so the supervisor leaves it down."""
    from ftops import services

    cfg = _config(config, project_dir=project_dir)
    out.print("triton stopped" if services.stop_one(cfg, "triton") else "triton was not running")


@serve_app.command("status")
def serve_status(config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Is the server up, which models are loaded, and what is routed where."""
    from ftops.serve import deploy, server
    from ftops.serve.client import TritonClient

    cfg = _config(config, project_dir=project_dir)
    info = server.status(cfg)
    if info is None:
        out.print("triton: not running")
        raise typer.Exit(1)
    out.print(f"triton: pid {info.pid}, ready={server.ready(info)}, http {info.http_url}, grpc {info.grpc_url}")
    table = Table("model", "state", "route", title="repository")
    routes = {r.ensemble: role for role, r in deploy.routing(cfg).items()}
    with TritonClient.for_config(info.url(cfg.serving.protocol), cfg) as client:
        index = client.client.get_model_repository_index(as_json=True) if cfg.serving.protocol == "grpc" \
            else {"models": client.client.get_model_repository_index()}
    for entry in index.get("models", []):
        table.add_row(entry["name"], entry.get("state", "UNAVAILABLE"), routes.get(entry["name"], ""))
    out.print(table)


@app.command("deploy")
def deploy_cmd(
    export: Annotated[Path, typer.Option(help="An export folder (from `ftops export`).")],
    version: Annotated[str | None, typer.Option(help="Registry version it came from (moves the champion alias on success).")] = None,
    variant: Annotated[str | None, typer.Option(help="Variant to serve (default: the export's selected one).")] = None,
    config: ConfigOption = None, snapshot: SnapshotOption = None, project_dir: ProjectDirOption = None,
):
    """Load beside the champion, smoke-test, load-test against the P99 SLO, then promote or unload."""
    from ftops.serve import deploy

    cfg = _config(config, project_dir=project_dir)
    texts = list(_snapshot(cfg, snapshot).split("test")["text"])
    result = deploy.deploy(cfg, export, texts, version=version, variant=variant)
    print_deploy(result)
    if result.outcome == deploy.REJECTED:
        raise typer.Exit(1)


def print_deploy(result) -> None:
    colour = {"promoted": "green", "unchanged": "yellow"}.get(result.outcome, "red")
    out.print(f"[bold {colour}]{result.outcome.upper()}[/] {result.route.ensemble} ({result.route.variant}): {result.reason}")
    for item in getattr(result, "unfinished", []):
        out.print(f"  [yellow]unfinished:[/] {item}")
    if result.load:
        load = result.load
        out.print(f"  load: {load['requests']} requests at concurrency {load['concurrency']}: "
                  f"{load['throughput']:.0f} req/s, p50 {load['p50_ms']:.1f} / p95 {load['p95_ms']:.1f} / "
                  f"p99 {load['p99_ms']:.1f} ms, errors {load['errors']}, server-side avg "
                  f"{(load['server_avg_ms'] or 0):.1f} ms; histogram {result.histogram}")


@app.command("reconcile")
def reconcile_cmd(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would change.")] = False,
    config: ConfigOption = None, project_dir: ProjectDirOption = None,
):
    """Bring the registry aliases and the drift reference into agreement with what serves
    (routing.json), e.g. after MLflow was down during a deploy; prints what it changed.
    `ftops up` and every lifecycle run do it too. Exits 1 when something could not be fixed."""
    from ftops.reconcile import reconcile

    result = reconcile(_config(config, project_dir=project_dir), dry_run=dry_run)
    for line in result.lines():
        out.print(line)
    if result.problems:
        raise typer.Exit(1)


@app.command("rollback")
def rollback_cmd(config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Route Triton back to the previous version and roll the registry back with it."""
    from ftops.serve import deploy

    cfg = _config(config, project_dir=project_dir)
    route = deploy.rollback(cfg)
    out.print(f"champion is now {route.ensemble} (version {route.version or '-'})")


@app.command("loadtest")
def loadtest_cmd(
    concurrency: Annotated[int | None, typer.Option(help="Parallel clients (serving.load_concurrency).")] = None,
    requests: Annotated[int | None, typer.Option(help="Requests to send (serving.load_requests).")] = None,
    model: Annotated[str | None, typer.Option(help="Triton model name (default: the champion route).")] = None,
    config: ConfigOption = None, snapshot: SnapshotOption = None, project_dir: ProjectDirOption = None,
):
    """A bounded load test with real texts: throughput, p50/p95/p99, errors, histogram."""
    from ftops.serve import deploy, loadtest, server

    cfg = _config(config, project_dir=project_dir)
    info = server.status(cfg)
    if info is None:
        from ftops.serve.repository import ServingError

        raise ServingError("Triton is not running for this project. Start it with `ftops serve up`.")
    name = model or deploy.champion_model(cfg)
    texts = list(_snapshot(cfg, snapshot).split("test")["text"])
    result = loadtest.run(info.url(cfg.serving.protocol), name, texts, concurrency or cfg.serving.load_concurrency,
                          requests or cfg.serving.load_requests, cfg.serving.load_warmup, cfg.serving.protocol)
    path = loadtest.plot(result, server.state_dir(cfg) / f"loadtest-{name}.png", cfg.gates.p99_ms)
    table = Table("requests", "concurrency", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors", "server avg ms",
                  title=f"load test {name}")
    table.add_row(str(result.requests), str(result.concurrency), f"{result.throughput:.0f}", f"{result.p50_ms:.1f}",
                  f"{result.p95_ms:.1f}", f"{result.p99_ms:.1f}", str(result.errors), f"{(result.server_avg_ms or 0):.1f}")
    out.print(table)
    verdict = "meets" if result.p99_ms <= cfg.gates.p99_ms else "MISSES"
    out.print(f"p99 {verdict} the SLO of {cfg.gates.p99_ms:.0f} ms; histogram: {path}")


@app.command("predict")
def predict_cmd(texts: Annotated[list[str], typer.Argument(help="Texts to classify.")],
                config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Classify texts with the served champion."""
    from ftops.serve import deploy, server
    from ftops.serve.client import TritonClient
    from ftops.serve.repository import ServingError

    cfg = _config(config, project_dir=project_dir)
    info = server.status(cfg)
    if info is None:
        raise ServingError("Triton is not running for this project. Start it with `ftops serve up`.")
    with TritonClient.for_config(info.url(cfg.serving.protocol), cfg) as client:
        for text, pred in zip(texts, client.classify(texts, deploy.champion_model(cfg))):
            out.print(f"{pred.label:>10} {pred.confidence:.3f}  {text}")


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
    from ftops import security

    cfg = _config(config, project_dir=project_dir).resolved()
    out.print(yaml.safe_dump(security.masked(cfg.model_dump(mode="json")), sort_keys=False), end="")


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


# ---------------------------------------------------------------- run, demo


@app.command("run")
def run_cmd(
    config: ConfigOption = None,
    in_process: Annotated[bool, typer.Option(
        "--in-process", help="Run the flows in this process even when the deployment is served.")] = False,
    reason: Annotated[str, typer.Option(help="Why it runs; recorded with the run (manual, schedule, drift, ...).")] = "manual",
):
    """The lifecycle once (data, train, A/B, export, deploy) with live progress: through the
    Prefect deployment when `ftops up` serves it, else in this process. Exit 0 when it
    promoted or a gate refused the challenger, 1 when the run failed."""
    from ftops import run as runs

    cfg = _config(config)
    finished = runs.run(cfg, runs.config_path_of(config), reason, in_process,
                        say=lambda line: out.print(line, markup=False, highlight=False, soft_wrap=True))
    runs.report(out, finished)
    raise typer.Exit(runs.exit_code(finished))


@app.command("demo")
def demo(
    config: Annotated[Path, typer.Option("--config", "-c", help="Demo project YAML.")] = Path("deploy/demo.yaml"),
    keep: Annotated[bool, typer.Option("--keep/--reset", help="Keep the demo project dir instead of starting fresh.")] = False,
    down: Annotated[bool, typer.Option("--down/--stay-up", help="Stop the services at the end.")] = False,
):
    """The whole drift story end to end: first champion, traffic shift, drift, automatic retraining."""
    from flows import demo as story_module
    from ftops import services

    started = time.monotonic()
    story = story_module.run(str(config), reset=not keep, say=lambda line: out.print(line, highlight=False))
    table = Table("step", "what happened", "key figures", "s", title=f"ftops demo: {story.total_s / 60:.1f} min")
    for step in story.steps:
        table.add_row(step.name, step.what, step.figures, f"{step.seconds:.0f}")
    out.print(table)
    if story.drift_to_run_s is not None:
        out.print(f"drift event -> retraining run started: {story.drift_to_run_s:.1f} s")
    for name, url in story.links.items():
        out.print(f"{name:>12}: {url}")
    if down:
        services.down(_config(config))
    else:
        out.print("services keep running: `ftops down -c deploy/demo.yaml` stops them")
    out.print(f"total {time.monotonic() - started:.0f} s")


@app.command("up")
def up_cmd(config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Start every service on 127.0.0.1 (Prefect, MLflow UI, Triton, gateway, Evidently UI, deployments)."""
    from ftops import services

    cfg = _config(config, project_dir=project_dir)
    print_services(services.up(cfg, str(config) if config else None, say=out.print))


@app.command("down")
def down_cmd(config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Stop every service of the project by PID."""
    from ftops import services

    stopped = services.down(_config(config, project_dir=project_dir))
    out.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@app.command("status")
def status_cmd(config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Which services run, where, and their logs."""
    from ftops import services

    cfg = _config(config, project_dir=project_dir)
    print_services(services.status(cfg))
    for what, state in services.protection(cfg):
        colour = "yellow" if state.startswith("OPEN") else "green"
        out.print(f"{what}: [{colour}]{state}[/]")
    _print_log_health(cfg)


def _print_log_health(cfg) -> None:
    """The gateway's prediction-log counts: rows set aside or dropped are never silent."""
    from ftops.serve import gateway

    info = gateway.status(cfg)
    answer = gateway.probe(info.url) if info else None
    if answer is None:
        return
    log = answer[1].get("log", {})
    parts = [f"{key.replace('_', ' ')} {log[key]}" for key in ("written", "buffered", "dropped", "dead_lettered")
             if key in log]
    colour = "red" if log.get("dropped") or log.get("dead_lettered") else "green"
    out.print(f"prediction log: [{colour}]{', '.join(parts)}[/]")


def print_services(rows) -> None:
    table = Table("service", "state", "url", "pid", "restarts", "log", title="services")
    for row in rows:
        colour = "green" if row.state == "up" else "red"
        table.add_row(row.name, f"[{colour}]{row.state}[/]", row.url, str(row.pid or ""), str(row.restarts or ""),
                      row.log or "")
    out.print(table)
    for row in rows:
        if row.restarts or row.state == "failed":
            out.print(f"{row.name}: {row.restarts} restart(s), last {row.last_restart or '-'}: {row.last_reason or '-'}")


# ---------------------------------------------------------------- gateway, online A/B

gateway_app = typer.Typer(help="The HTTP gateway in front of Triton: text in/out, prediction log, A/B and shadow.",
                          no_args_is_help=True)
ab_app = typer.Typer(help="Online A/B and shadow experiments: start, report, decide, stop.", no_args_is_help=True)
app.add_typer(gateway_app, name="gateway")
app.add_typer(ab_app, name="ab")


@gateway_app.command("up")
def gateway_up(
    port: Annotated[int | None, typer.Option(help="Port on serving.host; 0 picks a free one (serving.gateway_port).")] = None,
    traffic: Annotated[str | None, typer.Option(
        help="champion | ab | shadow (serving.traffic).")] = None,
    ab_share: Annotated[float | None, typer.Option(help="Share sent to the challenger under ab (serving.ab_share).")] = None,
    config: ConfigOption = None, project_dir: ProjectDirOption = None,
):
    """Start the gateway in the background (no-op if it runs); stop it with `ftops gateway down`.
    The supervisor restarts it with the project's config: flags given here last until then."""
    from ftops import services
    from ftops.serve import gateway

    cfg = _config(config, {"serving.gateway_port": port, "serving.traffic": traffic,
                           "serving.ab_share": ab_share}, project_dir)
    services.start_one(cfg, "gateway", str(config) if config else None)
    info = gateway.status(cfg)
    out.print(f"gateway up: pid {info.pid}, {info.url}, log {info.log}")
    _print_health(gateway.probe(info.url))


def _print_health(answer) -> None:
    if answer is None:
        out.print("  health: no answer")
        return
    code, body = answer
    colour = "green" if code == 200 else "red"
    out.print(f"  health: [{colour}]{body.get('status')}[/] {body.get('reason') or ''}  policy: {body.get('policy')}")
    if body.get("note"):
        out.print(f"  note: {body['note']}")
    for role in ("champion", "challenger"):
        if body.get(role):
            out.print(f"  {role}: {body[role]['ensemble']} (version {body[role]['version'] or '-'})")


@gateway_app.command("down")
def gateway_down(config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Stop the gateway by PID (in-flight requests finish and the log is flushed first);
    stopped on purpose, so the supervisor leaves it down."""
    from ftops import services

    cfg = _config(config, project_dir=project_dir)
    out.print("gateway stopped" if services.stop_one(cfg, "gateway") else "gateway was not running")


@gateway_app.command("status")
def gateway_status(config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Is the gateway up, is it healthy, and where does traffic go."""
    from ftops.serve import gateway

    cfg = _config(config, project_dir=project_dir)
    info = gateway.status(cfg)
    if info is None:
        out.print("gateway: not running")
        raise typer.Exit(1)
    out.print(f"gateway: pid {info.pid}, {info.url}, log {info.log}")
    _print_health(gateway.probe(info.url))


@gateway_app.command("loadtest")
def gateway_loadtest(
    requests: Annotated[int | None, typer.Option(min=1, help="Requests to send (serving.load_requests).")] = None,
    concurrency: Annotated[int | None, typer.Option(min=1, help="Parallel clients (serving.load_concurrency).")] = None,
    warmup: Annotated[int | None, typer.Option(
        min=0, help="Requests sent first and not timed (serving.load_warmup).")] = None,
    max_seconds: Annotated[float, typer.Option(help="Stop after this long whatever is left.")] = 60.0,
    users: Annotated[int, typer.Option(min=0, help="Distinct user keys to send (0: none, random A/B arm).")] = 0,
    feedback_share: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Share of answers that also get their true label on /feedback.")] = 0.0,
    data: Annotated[str, typer.Option(help="Builtin corpus whose texts (and labels) are sent.")] = "builtin:tweets?domain=airline",
    url: Annotated[str | None, typer.Option(help="Gateway URL (default: this project's running gateway).")] = None,
    config: ConfigOption = None, project_dir: ProjectDirOption = None,
):
    """A bounded load test of the gateway with real texts: throughput, p50/p95/p99, errors."""
    from ftops.corpora import load_builtin
    from ftops.serve import gateway

    cfg = _config(config, project_dir=project_dir)
    if url is None:
        info = gateway.status(cfg)
        if info is None:
            raise gateway.GatewayError("The gateway is not running for this project. Start it with "
                                       "`ftops gateway up`, or pass --url.")
        url = info.url
    frame, _ = load_builtin(data)
    frame = frame.sample(frac=1.0, random_state=0)
    load = cfg.serving
    result = gateway.loadtest(url, list(frame["text"]), requests or load.load_requests,
                              concurrency or load.load_concurrency, max_seconds, users, list(frame["label"]),
                              feedback_share, warmup=load.load_warmup if warmup is None else warmup,
                              timeout_s=load.request_timeout_s)
    table = Table("requests", "concurrency", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors", "routes", "feedback",
                  title=f"gateway load test {url}")
    table.add_row(str(result.requests), str(result.concurrency), f"{result.throughput:.0f}", f"{result.p50_ms:.1f}",
                  f"{result.p95_ms:.1f}", f"{result.p99_ms:.1f}", str(result.errors),
                  ", ".join(f"{k} {v}" for k, v in sorted(result.routes.items())), str(result.feedback))
    out.print(table)
    if result.first_error:
        out.print(f"[red]first error:[/] {result.first_error}")


@ab_app.command("report")
def ab_report_cmd(
    since_hours: Annotated[float | None, typer.Option(help="Only rows logged in the last H hours.")] = None,
    last: Annotated[int | None, typer.Option(help="Only the last N logged rows.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    config: ConfigOption = None, project_dir: ProjectDirOption = None,
):
    """Champion vs challenger on logged traffic with feedback: accuracy, macro-F1 (bootstrap
    CIs), latency and a significance test (unpaired for A/B, paired for shadow)."""
    import json
    from dataclasses import asdict
    from datetime import UTC, datetime, timedelta

    from ftops import online, predlog
    from ftops.serve.traffic import REPORT_MAX_ROWS, ab_report, report_rows

    cfg = _config(config, project_dir=project_dir).resolved()
    since = datetime.now(UTC) - timedelta(hours=since_hours) if since_hours else None
    experiment = online.current(cfg)
    if experiment is not None and since is None and last is None:
        frame = online.window(cfg, experiment)  # the running experiment's rows, its two models
    else:
        frame = report_rows(predlog.engine(cfg.uris.prediction_log), since=since, last=last)  # bounded, in chunks
    report = ab_report(frame, alpha=cfg.gates.alpha)
    if as_json:
        out.print_json(json.dumps({**report, "experiment": asdict(experiment) if experiment else None}))
        return
    if experiment is not None:
        window = "its rows" if since is None and last is None else "the window asked for"
        out.print(f"[bold]experiment[/] {experiment.describe()} (champion {experiment.champion}, challenger "
                  f"{experiment.challenger}); report on {window}", highlight=False)
    if last is None and len(frame) == REPORT_MAX_ROWS:
        out.print(f"[yellow]Only the newest {REPORT_MAX_ROWS} logged rows were read; pass --last or --since-hours "
                  "for another window.[/]")
    print_ab_report(report, len(frame))


def print_ab_report(report: dict, rows: int) -> None:
    if report["ab"] is None and report["shadow"] is None:
        out.print(f"No A/B or shadow traffic in the {rows} logged rows (challenger and shadow routes are empty).")
        return
    for name, title in (("ab", "A/B split (different requests)"), ("shadow", "shadow (same requests)")):
        section = report[name]
        if section is None:
            continue
        table = Table("arm", "requests", "fell back", "n feedback", "accuracy [CI]", "macro-F1 [CI]", "p50 ms",
                      "p99 ms", "models", title=title)
        for arm, row in section["arms"].items():
            table.add_row(arm, str(row["requests"]), str(row.get("fallbacks") or 0), str(row["n"]),
                          _with_ci(row, "accuracy"), _with_ci(row, "macro_f1"),
                          _num1(row["p50_ms"]), _num1(row["p99_ms"]), ", ".join(row["models"]))
        out.print(table)
        test = section["test"]
        if test.get("p_value") is None:
            out.print(f"  {test['test']}: {test['reason']}")
            continue
        verdict = "[green]significant[/]" if test["significant"] else "not significant"
        low, high = test["macro_f1_delta_ci"]
        out.print(f"  {test['test']}: accuracy delta {test['accuracy_delta']:+.4f}, p = {test['p_value']:.4g} "
                  f"({verdict} at alpha {report['alpha']}); macro-F1 delta {test['macro_f1_delta']:+.4f} "
                  f"[{low:+.4f}, {high:+.4f}]")


def _with_ci(row: dict, metric: str) -> str:
    if row[metric] is None:
        return "-"
    low, high = row[f"{metric}_ci"]
    return f"{row[metric]:.4f} [{low:.3f}, {high:.3f}]"


def _num1(value) -> str:
    return "-" if value is None else f"{value:.1f}"


@ab_app.command("start")
def ab_start_cmd(
    version: Annotated[str, typer.Option(help="Registry version to put online as the challenger (3 or v3).")],
    share: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="Share of users sent to the challenger (default: serving.ab_share).")] = None,
    shadow: Annotated[bool, typer.Option(
        "--shadow", help="Mirror every request to the challenger instead; the champion answers all of them.")] = False,
    config: ConfigOption = None, snapshot: SnapshotOption = None, project_dir: ProjectDirOption = None,
):
    """Stage a registry version beside the champion (its verified export, else a new one; the
    smoke gate) and split live traffic to it (A/B) or mirror it (shadow)."""
    from ftops import online

    if shadow and share is not None:
        raise typer.BadParameter("--share splits traffic and --shadow mirrors it: give one of them.")
    cfg = _config(config, project_dir=project_dir)
    started = online.start(cfg, version, online.SHADOW if shadow else online.AB, share, snapshot,
                           progress=lambda line: out.print(f"  {line}", highlight=False))
    experiment = started.experiment
    out.print(f"[bold green]STARTED[/] {experiment.describe()}", highlight=False)
    out.print(f"  challenger {experiment.challenger} from {experiment.export}", highlight=False)
    out.print(f"  {started.gateway}", highlight=False)
    out.print("  report: `ftops ab report`; decide once it has feedback: `ftops ab decide`", highlight=False)


@ab_app.command("stop")
def ab_stop_cmd(
    reason: Annotated[str, typer.Option(help="Why it ends (kept in the experiment's record).")] = "stopped by hand",
    config: ConfigOption = None, project_dir: ProjectDirOption = None,
):
    """End the running experiment without a decision: the challenger is unstaged and all
    traffic returns to the champion."""
    from ftops import online

    ended = online.stop(_config(config, project_dir=project_dir), reason)
    if ended is None:
        out.print("no experiment was running")
        return
    out.print(f"[bold]STOPPED[/] {ended.describe()}: {reason}; all traffic goes to the champion", highlight=False)


@ab_app.command("decide")
def ab_decide_cmd(
    min_feedback: Annotated[int | None, typer.Option(
        min=1, help="Rows with feedback each arm needs first (default: gates.online_min_feedback).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what it would decide.")] = False,
    config: ConfigOption = None, project_dir: ProjectDirOption = None,
):
    """Decide the running experiment from its online figures: promote (through the smoke and
    P99 gates), reject, or wait for more feedback; a decision ends the experiment."""
    from ftops import online

    cfg = _config(config, project_dir=project_dir)
    result = online.decide(cfg, min_feedback, apply=not dry_run)
    if result.decision is not None:
        print_decision(result.decision)
    else:
        colour = {"promote": "green", "reject": "red"}.get(result.outcome, "yellow")
        out.print(f"[bold {colour}]{result.outcome.upper()}[/] {result.summary}", highlight=False)
    if result.deploy is not None:
        print_deploy(result.deploy)
    for item in result.unfinished:
        out.print(f"  [yellow]unfinished:[/] {item}", highlight=False)
    if result.folder is not None:
        out.print(f"decision written to {result.folder}; experiment ended ({result.experiment.outcome})")
    if result.outcome == online.REJECT:
        raise typer.Exit(1)


# ---------------------------------------------------------------- monitor

monitor_app = typer.Typer(help="Drift monitoring with Evidently: checks, history and the dashboard UI.",
                          no_args_is_help=True)
monitor_ui_app = typer.Typer(help="The Evidently UI over this project's workspace (127.0.0.1:monitoring.ui_port).",
                             no_args_is_help=True)
app.add_typer(monitor_app, name="monitor")
monitor_app.add_typer(monitor_ui_app, name="ui")


@monitor_app.command("check")
def monitor_check(
    window: Annotated[int | None, typer.Option(
        min=10, help="Rows in the current window (monitoring.window_size).")] = None,
    embeddings: Annotated[bool, typer.Option(
        "--embeddings/--no-embeddings", help="Also compare pooled embeddings (loads the champion model).")] = False,
    config: ConfigOption = None, project_dir: ProjectDirOption = None,
):
    """Compare recent logged traffic with the champion's reference; record the check, alert if drift holds."""
    from ftops import monitor

    cfg = _config(config, project_dir=project_dir)
    if window is not None:
        cfg.monitoring = cfg.monitoring.model_copy(
            update={"window_size": window, "min_window": min(window, cfg.monitoring.min_window)})
    embed = None
    if embeddings:
        from ftops import decide

        model, tokenizer, _ = decide.load(decide.resolve(cfg, "champion"))
        embed = monitor.embedder(model, tokenizer, cfg.model.max_length)
    print_check(monitor.check(cfg, embed=embed))


def print_check(result) -> None:
    colour = {"drift": "red", "no_drift": "green"}.get(result.decision, "yellow")
    alert = " [bold red]ALERT[/]" if result.alert else ""
    out.print(f"[bold {colour}]{result.decision.upper().replace('_', ' ')}[/]{alert} {result.project}: "
              f"{result.window_size} rows vs {result.reference_size} reference rows"
              f" (champion v{result.reference_version or '-'}); {result.reason}", highlight=False)
    if result.signals:
        table = Table("signal", "score", "threshold", "method", "drifted", title="top drifting signals")
        for sig in result.top(len(result.signals)):
            table.add_row(sig.name, f"{sig.score:.4g}", f"{sig.threshold:.4g}", sig.method,
                          "[red]yes[/]" if sig.drifted else "no")
        out.print(table)
    share = "-" if result.drifted_share is None else f"{result.drifted_share:.2f}"
    quality = "" if result.accuracy is None else \
        f"; live accuracy {result.accuracy:.3f}, macro-F1 {result.macro_f1:.3f} on {result.feedback_rows} feedback rows"
    out.print(f"drifted share {share}{quality}")
    if result.report_path:
        out.print(f"report: {result.report_path}")
    if result.alert:
        sent = "sent" if result.event_sent else \
            "[red]not delivered yet[/] (pending: re-sent by the next check, the supervisor or `ftops up`)"
        out.print(f"event ftops.drift.detected: {sent}")


@monitor_app.command("history")
def monitor_history(
    last: Annotated[int, typer.Option(min=1, help="How many checks, newest first.")] = 20,
    config: ConfigOption = None, project_dir: ProjectDirOption = None,
):
    """Stored drift checks: time, window, drifted share, decision, alert and the strongest signals."""
    from ftops import monitor

    cfg = _config(config, project_dir=project_dir)
    checks = monitor.history(cfg, last)
    if not checks:
        out.print(f"No drift checks stored for {cfg.project.name} yet. Run `ftops monitor check`.")
        return
    table = Table("id", "time (UTC)", "rows", "share", "decision", "alert", "event", "top signals",
                  title=f"drift checks of {cfg.project.name}")
    for c in checks:
        top = ", ".join(s.name for s in c.top(3) if s.drifted) or "-"
        event = c.event_state or ("-" if c.event_sent is None else ("sent" if c.event_sent else "not sent"))
        table.add_row(str(c.id), f"{c.ts:%Y-%m-%d %H:%M:%S}", str(c.window_size),
                      "-" if c.drifted_share is None else f"{c.drifted_share:.2f}", c.decision,
                      "[red]yes[/]" if c.alert else "no", event, top)
    out.print(table)


@monitor_ui_app.command("up")
def monitor_ui_up(
    port: Annotated[int | None, typer.Option(help="Port on 127.0.0.1 (monitoring.ui_port).")] = None,
    config: ConfigOption = None, project_dir: ProjectDirOption = None,
):
    """Start the Evidently UI in the background (no-op if it runs) and wait until it answers."""
    from ftops import monitor, services

    cfg = _config(config, {"monitoring.ui_port": port}, project_dir)
    services.start_one(cfg, "evidently", str(config) if config else None)
    info = monitor.ui_status(cfg)
    out.print(f"evidently ui up: {info.url} (pid {info.pid}, workspace {info.workspace}, log {info.log})")


@monitor_ui_app.command("down")
def monitor_ui_down(config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Stop the Evidently UI by PID; stopped on purpose, so the supervisor leaves it down."""
    from ftops import services

    cfg = _config(config, project_dir=project_dir)
    out.print("evidently ui stopped" if services.stop_one(cfg, "evidently") else "evidently ui was not running")


@monitor_ui_app.command("status")
def monitor_ui_status(config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Is the Evidently UI of this project running, and where."""
    from ftops import monitor

    info = monitor.ui_status(_config(config, project_dir=project_dir))
    if info is None:
        out.print("evidently ui: not running")
        raise typer.Exit(1)
    out.print(f"evidently ui: {info.url} (pid {info.pid}, ready={monitor.ui_ready(info)})")



# ---------------------------------------------------------------- export


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

    cfg = _config(config, project_dir=project_dir)
    snap = _snapshot(cfg, snapshot)
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
    out.print(f"manifest: {result.out_dir / export_stage.MANIFEST_FILE}")


# ---------------------------------------------------------------- retention


@app.command("prune")
def prune_cmd(config: ConfigOption = None, project_dir: ProjectDirOption = None):
    """Apply the retention settings now: archive old prediction-log rows, keep only the routed
    Triton versions, rotate service logs, drop old downloads, snapshots and checkpoints."""
    from ftops import retention

    report = retention.apply(_config(config, project_dir=project_dir))
    for line in report.lines():
        out.print(line, highlight=False)
    if report.errors:
        raise typer.Exit(1)


def main() -> None:
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines drown the progress bars
    try:
        app()
    except FtopsError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
