"""The Prefect event an alert sends: `ftops.drift.detected` about the project's model, which
the lifecycle deployment's trigger matches to start retraining. Sending never fails a check:
an event that does not go out returns False and its alert stays pending."""

from __future__ import annotations

import logging
from typing import Any

from ftops import names, procs
from ftops.config import Config
from ftops.monitor.results import CheckResult

log = logging.getLogger("ftops.monitor")

EVENT = names.EVENT_DRIFT


def prefect_reachable(api_url: str, timeout: float = 3.0) -> bool:
    return procs.healthy(f"{api_url.rstrip('/')}/health", timeout=timeout)


def event_payload(result: CheckResult) -> dict[str, Any]:
    return {
        "project": result.project, "reference_version": result.reference_version,
        "window_size": result.window_size, "drifted_share": result.drifted_share,
        "scores": result.scores(), "drifted": [s.name for s in result.top(len(result.signals)) if s.drifted],
        "accuracy": result.accuracy, "macro_f1": result.macro_f1, "reason": result.reason,
        "report": result.report_path, "checked_at": result.ts.isoformat(), "check_id": result.id,
    }


def emit_drift_event(config: Config, result: CheckResult, timeout: float | None = None) -> bool:
    """`ftops.drift.detected` on the Prefect server at uris.prefect_api; False (and a warning)
    when none answers within `timeout` (default timeouts.prefect_s), so a check never fails
    for want of an orchestrator: the alert stays pending and is re-sent."""
    api_url = config.uris.prefect_api
    timeout = config.timeouts.prefect_s if timeout is None else timeout
    if not prefect_reachable(api_url, timeout):
        log.warning("drift alert for %s NOT sent: no Prefect server answers at %s within %g s (start one with "
                    "`ftops up`); it stays pending and is re-sent by the next check or `ftops up`",
                    config.project.name, api_url, timeout)
        return False
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from ftops import security

    name = config.project.name
    settings = {PREFECT_API_URL: api_url}
    auth = security.prefect_auth(config)
    if auth:
        settings[PREFECT_API_AUTH_STRING] = auth
    try:
        with temporary_settings(updates=settings):
            event = emit_event(EVENT, resource={"prefect.resource.id": names.model_resource(name),
                                                "prefect.resource.name": name},
                               payload=event_payload(result))
            pending = _drain(EventsWorker, timeout)
    except Exception as exc:  # noqa: BLE001 - an unsent event stays pending, never fatal to the check
        log.warning("drift alert for %s: emitting the Prefect event to %s failed: %s", name, api_url, exc)
        return False
    if event is None or pending:
        log.warning("drift alert for %s: the Prefect event could not be delivered to %s", name, api_url)
        return False
    return True


def _drain(worker, timeout: float) -> bool:
    """Wait until queued events are sent (sync callers); True if some are still pending. Inside
    a running event loop (an async flow) the worker flushes on its own, at the latest at exit."""
    import asyncio

    try:
        asyncio.get_running_loop()
        return False
    except RuntimeError:
        _, pending = worker.drain_all(timeout=timeout, at_exit=False)
        return bool(pending)
