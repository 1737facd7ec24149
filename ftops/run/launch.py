"""Running the lifecycle once: where it runs (`plan`: through the deployment or in this
process), Prefect pointed at the project's API, the run itself, and how it ended
(`Finished`, the exit code, the report printed at the end).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ftops import procs, services
from ftops.config import DEFAULT_CONFIG, Config
from ftops.errors import FtopsError
from ftops.run.following import follow
from ftops.run.summary import PROMOTED, UNCHANGED, load_summary, outcome, stage_rows, summary_file

DEPLOYMENT = "lifecycle/lifecycle"
EPHEMERAL_START_S = 90  # a temporary Prefect server on a busy machine (Prefect's default: 20 s)


# ---------------------------------------------------------------- how a run ended


@dataclass
class Finished:
    flow_run_id: str | None
    state_type: str            # COMPLETED, FAILED, CRASHED, CANCELLED, ... (Prefect StateType value)
    state_name: str            # Promoted, Rejected at A/B, Failed, ...
    message: str
    summary: dict | None
    where: str                 # "deployment" | "in-process"
    links: dict[str, str] = field(default_factory=dict)

    @property
    def completed(self) -> bool:
        return self.state_type == "COMPLETED"


def exit_code(finished: Finished) -> int:
    """0 for an answer (promoted, or refused by a gate); 1 when the run did not finish."""
    return 0 if finished.completed else 1


def outcome_line(finished: Finished) -> str:
    if not finished.completed:
        return f"FAILED: the lifecycle run ended {finished.state_name}: {finished.message or 'no message'}"
    if finished.summary is not None:
        return outcome(finished.summary).line
    return (f"{finished.message or finished.state_name} (the run's summary file is not on this machine; its "
            "artifact in the Prefect UI has the details)")


def report(console, finished: Finished) -> None:
    """The summary table, the outcome line and where to look."""
    from rich.table import Table

    if finished.summary is not None:
        table = Table("stage", "result", title=f"lifecycle run {finished.flow_run_id} ({finished.where})")
        for stage, text in stage_rows(finished.summary):
            table.add_row(stage, text)
        console.print(table)
    colour = "red" if not finished.completed else "green" if finished.state_name in (PROMOTED, UNCHANGED) else "yellow"
    console.print(f"[bold {colour}]{outcome_line(finished)}[/]", highlight=False, soft_wrap=True)
    for name, url in finished.links.items():
        console.print(f"{name:>8}: {url}", highlight=False, soft_wrap=True)


# ---------------------------------------------------------------- where it runs


@dataclass
class Plan:
    mode: str        # "deployment" | "in-process"
    api: str | None  # the project's Prefect API, None: a temporary one in this process
    why: str


def plan(config: Config, in_process: bool = False) -> Plan:
    """Through the deployment when this project's Prefect and deployments are up (`ftops up`),
    or a Prefect worker serves them (team set-up); else in this process, tracked by the
    project's Prefect server when one answers."""
    api = config.uris.prefect_api
    rows = {row.name: row.state for row in services.status(config)}
    answers = rows.get("prefect") == "up" or procs.healthy(f"{api.rstrip('/')}/health", config.timeouts.prefect_s)
    if not answers:
        return Plan("in-process", None, f"no Prefect server answers at {api}; a temporary one in this process "
                                        "tracks the run (`ftops up` starts the project's)")
    if in_process:
        return Plan("in-process", api, "--in-process")
    if rows.get("deployments") == "up":
        return Plan("deployment", api, "the project's deployments process serves it")
    return Plan("in-process", api, "the deployments process is not running (`ftops up` starts it)")


def config_path_of(config: Path | str | None) -> str | None:
    """The absolute YAML path flows get (the deployment runs in another folder), as
    load_config finds it; None for the built-in defaults."""
    if config is not None:
        return str(Path(config).resolve())
    found = os.environ.get("FTOPS_CONFIG") or (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    return str(Path(found).resolve()) if found else None


@contextmanager
def prefect_api(config: Config, config_path: str | None, api: str | None) -> Iterator[None]:
    """Prefect pointed at the project's API (with its auth string), or, with api None, at a
    temporary one whose database lives in the project's Prefect home (the run shows up in
    the UI once `ftops up` starts the server). Environment first, for Prefect not yet
    imported and for child processes; then the settings of a Prefect already imported."""
    env = services.environment(config, config_path)
    Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # Prefect makes only the last level
    if api is None:
        env.pop("PREFECT_API_URL")
        env.update(PREFECT_SERVER_ALLOW_EPHEMERAL_MODE="true",
                   PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=str(EPHEMERAL_START_S))
        os.environ.pop("PREFECT_API_URL", None)
    os.environ.update(env)
    from prefect.settings import (PREFECT_API_AUTH_STRING, PREFECT_API_URL, PREFECT_HOME,
                                  PREFECT_SERVER_EPHEMERAL_ENABLED, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
                                  temporary_settings)

    updates: dict = {PREFECT_HOME: env["PREFECT_HOME"]}
    if api is None:
        updates.update({PREFECT_SERVER_EPHEMERAL_ENABLED: True,
                        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: EPHEMERAL_START_S})
    else:
        updates[PREFECT_API_URL] = api
        if env.get("PREFECT_API_AUTH_STRING"):
            updates[PREFECT_API_AUTH_STRING] = env["PREFECT_API_AUTH_STRING"]
    with temporary_settings(updates=updates, restore_defaults=set() if api else {PREFECT_API_URL}):
        yield


# ---------------------------------------------------------------- running it


def served_by_a_worker() -> bool:
    """The deployment is registered on a work pool (infra/, `flows.deployments --work-pool`):
    a worker runs it, no local deployments process is needed."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return bool(client.read_deployment_by_name(DEPLOYMENT).work_pool_name)
        except ObjectNotFound:
            return False


def via_deployment(config: Config, config_path: str | None, reason: str, say: Callable[[str], None]) -> Finished:
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    try:
        flow_run = run_deployment(DEPLOYMENT, parameters={"config_path": config_path, "reason": reason}, timeout=0)
    except ObjectNotFound:
        raise FtopsError(f"The deployment {DEPLOYMENT} is not on the Prefect server at {config.uris.prefect_api}; the "
                         "deployments process registers it when it starts (`ftops up`). Or run `ftops run --in-process`.") \
            from None
    say(f"lifecycle run {flow_run.name} ({flow_run.id}) started through the deployment {DEPLOYMENT}: "
        f"{run_url(config, flow_run.id)}")
    try:
        final = follow(flow_run.id, say)
    except KeyboardInterrupt:
        raise FtopsError(f"Stopped following. The lifecycle run {flow_run.name} goes on in Prefect: "
                         f"{run_url(config, flow_run.id)} (cancel it there if it should stop).") from None
    return Finished(str(final.id), final.state.type.value, final.state.name, final.state.message or "",
                    load_summary(config, str(final.id)), "deployment")


def in_process(config: Config, config_path: str | None, reason: str) -> Finished:
    from flows.lifecycle import lifecycle

    state = lifecycle(config_path, reason, return_state=True)
    run_id = state.state_details.flow_run_id
    summary = state.result(raise_on_failure=False) if state.is_completed() else None
    if not isinstance(summary, dict):
        summary = load_summary(config, str(run_id)) if run_id else None
    return Finished(str(run_id) if run_id else None, state.type.value, state.name, state.message or "", summary,
                    "in-process")


def run_url(config: Config, flow_run_id) -> str:
    return f"{config.uris.prefect_api.rstrip('/').removesuffix('/api')}/runs/flow-run/{flow_run_id}"


def links(config: Config, finished: Finished, plan_: Plan) -> dict[str, str]:
    from ftops.serve import gateway

    rows = {row.name: row.state for row in services.status(config)}
    out = {}
    if finished.flow_run_id:
        later = "" if plan_.api else " (once `ftops up` runs the project's Prefect server)"
        out["prefect"] = run_url(config, finished.flow_run_id) + later
    mlflow = config.uris.mlflow_ui
    answers = rows.get("mlflow") == "up" or procs.healthy(f"{mlflow.rstrip('/')}/health")
    out["mlflow"] = mlflow + ("" if answers else " (not running: `ftops up` starts it)")
    running = gateway.status(config)
    out["gateway"] = running.url if running else "not running (`ftops up` starts it)"
    if finished.flow_run_id and finished.summary is not None:
        out["summary"] = str(summary_file(config, finished.flow_run_id))
    return out


def run(config: Config, config_path: str | None, reason: str = "manual", force_in_process: bool = False,
        say: Callable[[str], None] = print) -> Finished:
    """The lifecycle once, where `plan` says; how it ended, with the links to look at."""
    chosen = plan(config, force_in_process)
    say(f"lifecycle of {config.project.name} ({reason}): {chosen.mode} ({chosen.why})")
    with prefect_api(config, config_path, chosen.api):
        if chosen.mode == "in-process" and chosen.api and not force_in_process and served_by_a_worker():
            say("a Prefect worker serves the deployment (team set-up): the run goes through it")
            chosen = Plan("deployment", chosen.api, "a work pool serves it")
        if chosen.mode == "deployment":
            finished = via_deployment(config, config_path, reason, say)
        else:
            finished = in_process(config, config_path, reason)
    finished.links = links(config, finished, chosen)
    return finished
