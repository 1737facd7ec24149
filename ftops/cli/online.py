"""`ftops ab start / report / decide / stop`: online A/B and shadow experiments on live
traffic, judged from the prediction log's feedback."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ftops.cli.render import out, print_decision, print_deploy
from ftops.cli.root import ConfigOption, ProjectDirOption, SnapshotOption, app, config_of

ab_app = typer.Typer(help="Online A/B and shadow experiments: start, report, decide, stop.", no_args_is_help=True)
app.add_typer(ab_app, name="ab")


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

    cfg = config_of(config, project_dir=project_dir).resolved()
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
    cfg = config_of(config, project_dir=project_dir)
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

    ended = online.stop(config_of(config, project_dir=project_dir), reason)
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

    cfg = config_of(config, project_dir=project_dir)
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
