"""Drift monitoring: logged traffic vs the champion's reference data, checked with Evidently.

Reference = the champion's validation split with its predictions (an MLflow artifact of its
training run); current = the last `monitoring.window_size` served rows of the prediction log
(or the last `window_hours`). A check compares them on several signals, decides whether the
window drifts and whether that holds long enough for an alert, stores the check, and on an
alert sends the Prefect event `ftops.drift.detected` that starts retraining.

- `checker`: one check, start to end (`check`);
- `frames`: the compared frames (`predictions_frame`, the prediction log's current window);
- `reference`: building, logging and loading the champion's reference (cached for when MLflow is down);
- `signals`: Evidently's drift signals (text, descriptors, predictions, labels, embeddings);
- `policy`: window drift, persistence and cooldown;
- `store`: the `drift_checks` table and its history;
- `delivery`: store, claim, send, mark: every alert reaches Prefect once;
- `events`: the Prefect event;
- `publish`: HTML reports and the Evidently workspace's dashboards;
- `ui`: the Evidently UI process;
- `results`: the check record and the words these files share.
"""

from ftops.monitor.checker import check
from ftops.monitor.delivery import pending_alerts, resend_pending
from ftops.monitor.events import EVENT, emit_drift_event
from ftops.monitor.frames import predictions_frame
from ftops.monitor.publish import add_snapshots, prune_workspace, workspace, write_html
from ftops.monitor.reference import (REFERENCE_DIR, REFERENCE_FILE, add_embeddings, build_reference, embedder,
                                     load_reference, mlflow_reachable, save_champion_reference, save_reference)
from ftops.monitor.results import MonitorError, monitoring_dir
from ftops.monitor.store import history
from ftops.monitor.ui import ui_ready, ui_start, ui_status, ui_stop

__all__ = [
    "EVENT", "REFERENCE_DIR", "REFERENCE_FILE", "MonitorError", "add_embeddings", "add_snapshots", "build_reference",
    "check", "embedder", "emit_drift_event", "history", "load_reference",
    "mlflow_reachable", "monitoring_dir", "pending_alerts", "predictions_frame", "prune_workspace", "resend_pending",
    "save_champion_reference", "save_reference", "ui_ready", "ui_start", "ui_status", "ui_stop", "workspace",
    "write_html",
]
