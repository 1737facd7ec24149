"""What the commands print with: the two consoles, the number format of the tables, the
progress bars of training and tuning, and the renderers that more than one command shares
(an A/B decision, a deploy)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

out = Console()
err = Console(stderr=True)


def num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def progress_bars():
    """One bar per candidate: its name, steps done of all, its status field and the time."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn())
    return Progress(*columns, console=out)


def print_decision(decision) -> None:
    colour = "green" if decision.outcome == "promote" else "red"
    out.print(f"[bold {colour}]{decision.outcome.upper()}[/] {decision.summary}")
    table = Table("rule", "value", "threshold", "pass", "detail", title="rules")
    for rule in decision.rules:
        table.add_row(rule.name, num(rule.value), num(rule.threshold),
                      "[green]yes[/]" if rule.passed else "[red]NO[/]", rule.detail)
    out.print(table)
    lat = decision.context.get("latency_batch1", {})
    if lat:
        timing = Table("model", "p50 ms", "p99 ms", "runtime", title="batch-1 latency, same texts")
        for name, row in lat.items():
            timing.add_row(name, f"{row['p50_ms']:.1f}", f"{row['p99_ms']:.1f}", row["runtime"])
        out.print(timing)


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
