"""What a check leaves for people to read: a self-contained HTML report per check (the
newest `keep_reports` kept) and snapshots in the Evidently workspace, whose project gets
its dashboard panels the first time."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from ftops import atomic
from ftops.config import Config
from ftops.monitor.results import (CONFIDENCE, DESCRIPTORS, EMBEDDING, LABEL, PREDICTION, REPORT_MODE, TEXT,
                                   monitoring_dir)

def report_path(config: Config, now: datetime) -> Path:
    folder = monitoring_dir(config) / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    stem = now.strftime("%Y-%m-%dT%H-%M-%SZ")
    path, n = folder / f"{stem}.html", 1
    while path.exists():
        path, n = folder / f"{stem}-{n}.html", n + 1
    return path


def prune_reports(config: Config) -> int:
    """Delete the oldest reports beyond `keep_reports` (checks every few minutes add up); how many."""
    reports = sorted((monitoring_dir(config) / "reports").glob("*.html"), key=lambda p: (p.stat().st_mtime, p.name))
    stale = reports[:max(0, len(reports) - config.monitoring.keep_reports)]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def write_html(snapshots: list, path: Path) -> Path:
    """One self-contained HTML page (Evidently inlines its JS) for all of a check's snapshots,
    written atomically: a full disk or a kill leaves no half page."""
    if len(snapshots) == 1:
        return atomic.write_text(path, snapshots[0].get_html_str(as_iframe=False), mode=REPORT_MODE)
    from evidently.core.metric_types import render_widgets
    from evidently.legacy.renderers.html_widgets import group_widget

    titles = ["", *["Embedding drift (sampled, PCA)"] * (len(snapshots) - 1)]
    widgets = [group_widget(title=t, widgets=s._widgets) for t, s in zip(titles, snapshots)]
    tests = [w for s in snapshots for w in s._tests_widgets]
    return atomic.write_text(path, render_widgets(widgets + tests, as_iframe=False), mode=REPORT_MODE)

def workspace(config: Config):
    from evidently.ui.workspace import Workspace

    return Workspace(config.resolved().uris.evidently_workspace)


def workspace_project(config: Config, labels: list[str], ws=None):
    """The project named after the model, created with its dashboard panels the first time."""
    ws = ws or workspace(config)
    name = config.project.name
    found = [p for p in ws.list_projects() if p.name == name]
    if found:
        return found[0]
    project = ws.create_project(name, description=f"ftops drift monitoring of {name}")
    for panel in dashboard_panels(labels):
        project.dashboard.add_panel(panel, tab="Drift")
    return project


def dashboard_panels(labels: list[str]) -> list:
    """Drift share over time, per-signal scores, prediction distribution, live quality."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import bar_plot_panel, counter_panel, line_plot_panel

    def drift(column: str) -> PanelMetric:
        return PanelMetric(legend=column, metric="ValueDrift", metric_labels={"column": column})

    share = PanelMetric(legend="drifted share", metric="DriftedColumnsCount", metric_labels={"value_type": "share"})
    return [
        counter_panel("Drifted share (last check)", [share], size="half", aggregation="last"),
        counter_panel("Rows in the last window", [PanelMetric(legend="rows", metric="RowCount")],
                      size="half", aggregation="last"),
        line_plot_panel("Drifted share over time", [share], size="full"),
        line_plot_panel("Content drift: domain classifier ROC AUC (text, embeddings)",
                        [drift(TEXT), PanelMetric(legend=EMBEDDING, metric="EmbeddingsDrift")], size="half"),
        line_plot_panel("Descriptor, prediction and label drift scores",
                        [drift(c) for c in (*DESCRIPTORS, PREDICTION, CONFIDENCE, LABEL)], size="half"),
        bar_plot_panel("Prediction distribution (share per label)",
                       [PanelMetric(legend=label, metric="UniqueValueCount",
                                    metric_labels={"column": PREDICTION, "value_type": "share", "label": label})
                        for label in labels], size="half", stacked=True),
        line_plot_panel("Live quality on feedback rows",
                        [PanelMetric(legend="accuracy", metric="Accuracy"),
                         PanelMetric(legend="macro-F1", metric="F1Score")], size="half"),
    ]


def add_snapshots(config: Config, snapshots: list, labels: list[str]) -> str | None:
    """Add a check's snapshots to the workspace; the id of the first (the drift snapshot)."""
    ws = workspace(config)
    project = workspace_project(config, labels, ws)
    ids = [str(ws.add_run(project.id, snapshot, include_data=False).id) for snapshot in snapshots]
    return ids[0] if ids else None


def prune_workspace(config: Config) -> int:
    """Delete this project's oldest workspace snapshots beyond retention.evidently_snapshots
    (a check adds one or two every few minutes, and the UI reads them all); how many.
    Evidently's snapshot ids are uuid7, so their order is the order they were added."""
    import uuid

    if not Path(config.resolved().uris.evidently_workspace).is_dir():
        return 0
    ws = workspace(config)
    removed = 0
    for project in (p for p in ws.list_projects() if p.name == config.project.name):
        runs = sorted(ws.list_runs(project.id), key=lambda sid: uuid.UUID(str(sid)).int)
        for snapshot_id in runs[:max(0, len(runs) - config.retention.evidently_snapshots)]:
            ws.delete_run(project.id, snapshot_id)
            removed += 1
    return removed
