"""`ftops run`: the lifecycle once, from the CLI, with its progress live and its outcome at
the end.

Through the Prefect deployment `lifecycle/lifecycle` when this project's deployments are
served (the run is in the Prefect UI, one at a time with the scheduled and drift-triggered
ones); otherwise the same flow function in this process. A deployment run is followed by
polling its logs and those of its subflows; in-process, the flows' prints reach the
terminal directly.

What the lifecycle decided is a JSON summary it writes to `<project dir>/runs/lifecycle-<flow
run id>.json` (`summary_file`); its state's NAME says the same in the Prefect UI (`outcome`),
and a markdown artifact (key `lifecycle-<project>`) holds the decision, the export variants
and the deploy gates. A gate refusing the challenger is an answer (exit 0), a failed or
crashed run is not (exit 1).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ftops import atomic, procs, services
from ftops.config import DEFAULT_CONFIG, Config
from ftops.errors import FtopsError

DEPLOYMENT = "lifecycle/lifecycle"
PROMOTED, UNCHANGED = "Promoted", "Unchanged"
REJECTED_AB, REJECTED_EXPORT, REJECTED_DEPLOY = "Rejected at A/B", "Rejected at export", "Rejected at deploy"
SKIPPED = "Skipped"  # a monitor run with no champion to compare traffic with
STAGED = "Staged for online A/B"  # gates.promotion: online_ab | shadow
FOLLOW_LIMIT_S = 4 * 3600 + 600  # the lifecycle's own timeout, and time to be picked up
POLL_S = 2.0
LOG_OVERLAP = timedelta(seconds=60)  # logs arrive in batches, a little out of timestamp order
SETTLE = timedelta(seconds=3)  # a line is printed this long after it happened: the batch before it is in
PAGE = 200  # the Prefect API's largest page
EPHEMERAL_START_S = 90  # a temporary Prefect server on a busy machine (Prefect's default: 20 s)
DRAIN_QUIET_S = 4.0  # two of Prefect's log batch intervals without a new line: the run's lines are in


# ---------------------------------------------------------------- what the lifecycle decided


@dataclass
class Outcome:
    name: str         # the Prefect state name: PROMOTED, REJECTED_AB, ...
    line: str         # one sentence, as printed at the end of `ftops run`
    gate: str | None  # the gate that refused the challenger: "A/B", "export", "deploy"


def outcome(summary: dict) -> Outcome:
    """The lifecycle's answer from its summary (the flow's return value)."""
    decided = summary.get("decision") or {}
    if decided.get("outcome") != "promote":
        first = decided.get("mode") == "no-champion-yet"
        keeps = "nothing serves yet" if first else "the champion keeps serving"
        why = str(decided.get("summary", "no decision")).removeprefix("reject: ")
        return Outcome(REJECTED_AB, f"REJECTED at the A/B gate: {why}; {keeps}", "A/B")
    staged = summary.get("online")
    if staged:
        return Outcome(STAGED, f"STAGED: v{staged['version']} is judged online ({staged['policy']}) against the "
                               "champion; `ftops ab report` shows it, the monitor decides it", None)
    deployed = summary.get("deploy") or {}
    reason = str(deployed.get("reason", ""))
    if deployed.get("gate") == "export" or reason.startswith("export:"):
        return Outcome(REJECTED_EXPORT, f"REJECTED at the export gate: {reason.removeprefix('export: ')}; "
                                        "what serves is unchanged", "export")
    if deployed.get("outcome") == "rejected":
        return Outcome(REJECTED_DEPLOY, f"REJECTED at the deploy gate: {reason}; what serves is unchanged", "deploy")
    version = deployed.get("version") or decided.get("version")
    if deployed.get("outcome") == "unchanged":
        return Outcome(UNCHANGED, f"UNCHANGED: {reason}", None)
    unfinished = deployed.get("unfinished") or []
    rest = f"; {len(unfinished)} unfinished item(s): `ftops reconcile` finishes them" if unfinished else ""
    return Outcome(PROMOTED, f"PROMOTED: v{version} serves as champion ({deployed.get('variant')}): {reason}{rest}",
                   None)


def summary_file(config: Config, flow_run_id: str) -> Path:
    return config.resolved().project.dir / "runs" / f"lifecycle-{flow_run_id}.json"


def save_summary(config: Config, flow_run_id: str, summary: dict) -> Path:
    path = summary_file(config, flow_run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps(summary, indent=2, default=str) + "\n")
    return path


def load_summary(config: Config, flow_run_id: str) -> dict | None:
    """The summary a lifecycle run wrote, or None (it failed first, or ran on another machine)."""
    try:
        return json.loads(summary_file(config, flow_run_id).read_text())
    except (OSError, ValueError):
        return None


def artifact_key(config: Config) -> str:
    """Prefect artifact keys take lowercase letters, digits and dashes only."""
    return "lifecycle-" + (re.sub(r"[^a-z0-9-]+", "-", config.project.name.lower()).strip("-") or "project")


def _f(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def stage_rows(summary: dict) -> list[tuple[str, str]]:
    """(stage, what it found) for the summary table and the artifact."""
    prepared, trained = summary.get("data") or {}, summary.get("train") or {}
    decided, deployed = summary.get("decision") or {}, summary.get("deploy")
    counts = ", ".join(f"{split} {n}" for split, n in (prepared.get("counts") or {}).items())
    data = f"snapshot {prepared.get('snapshot', '-')}: {counts or '-'}"
    if prepared.get("retrain"):
        data += f"; retraining from v{prepared.get('parent_version')} + {prepared.get('feedback_rows', 0)} labelled requests"
    rows = [("data", data)]
    for name, study in (summary.get("tune") or {}).items():
        rows.append(("tune", f"{name}: {study.get('complete', 0)} trials complete, {study.get('pruned', 0)} pruned; "
                             f"best val macro-F1 {_f(study.get('best_val_macro_f1'))} (trial {study.get('best_trial')})"))
    best = trained.get("best")
    scores = (trained.get("candidates") or {}).get(best, {})
    others = ", ".join(f"{name} {_f(s.get('val_macro_f1'))}" for name, s in (trained.get("candidates") or {}).items()
                       if name != best)
    rows.append(("train", f"best {best or '-'}: val macro-F1 {_f(scores.get('val_macro_f1'))}, test macro-F1 "
                          f"{_f(scores.get('test_macro_f1'))}; baseline test macro-F1 "
                          f"{_f(trained.get('baseline_test_macro_f1'))}" + (f"; others (val): {others}" if others else "")))
    f1 = ", ".join(f"{who} {_f(v)}" for who, v in (decided.get("metrics") or {}).items() if v is not None)
    failed = decided.get("failed_rules")
    rows.append(("A/B", f"{decided.get('outcome', '-')} v{decided.get('version', '-')}: macro-F1 {f1 or '-'}"
                        + (f"; failed rules: {', '.join(failed)}" if failed else "")))
    rows += _export_and_deploy_rows(deployed)
    return rows


def _export_and_deploy_rows(deployed: dict | None) -> list[tuple[str, str]]:
    if deployed is None:
        return [("export", "not reached (the A/B gate refused)"), ("deploy", "not reached")]
    if deployed.get("gate") == "export" or not deployed.get("variant"):
        return [("export", f"no variant passed: {str(deployed.get('reason', '')).removeprefix('export: ')}"),
                ("deploy", "not reached")]
    variant = deployed["variant"]
    parity = (deployed.get("variants") or {}).get(variant, {})
    export = (f"{variant}: max |diff| {_f(parity.get('max_abs_diff'), '.2e')}, label agreement "
              f"{_f(parity.get('agreement'), '.4f')}, delta macro-F1 {_f(parity.get('delta_macro_f1'), '+.4f')}")
    load = deployed.get("load") or {}
    figures = (f"; p50 {_f(load.get('p50_ms'), '.1f')} ms, p99 {_f(load.get('p99_ms'), '.1f')} ms "
               f"(SLO {_f(deployed.get('p99_slo_ms'), '.0f')} ms), errors {load.get('errors', '-')}") if load else ""
    rows = [("export", export), ("deploy", f"{deployed.get('outcome')}: {deployed.get('reason', '')}{figures}")]
    rows += [("unfinished", item) for item in deployed.get("unfinished") or []]
    return rows


def markdown(summary: dict) -> str:
    """The Prefect artifact: the decision, the export variants and the deploy gates."""
    result = outcome(summary)
    lines = [f"# Lifecycle: {result.name}", "", result.line, "", "| stage | result |", "|---|---|"]
    lines += [f"| {stage} | {_cell(text)} |" for stage, text in stage_rows(summary)]
    rules = (summary.get("decision") or {}).get("rules") or []
    if rules:
        lines += ["", "## A/B rules", "", "| rule | pass | value | threshold | detail |", "|---|:-:|---:|---:|---|"]
        lines += [f"| {r['name']} | {'yes' if r['passed'] else 'NO'} | {_f(r.get('value'), '.4f')} | "
                  f"{_f(r.get('threshold'), '.4f')} | {_cell(r.get('detail', ''))} |" for r in rules]
    deployed = summary.get("deploy") or {}
    variants = deployed.get("variants") or {}
    if variants:
        lines += ["", "## Export variants (parity gate)", "",
                  "| variant | status | max diff | agreement | delta F1 | p99 ms | reason |", "|---|---|---:|---:|---:|---:|---|"]
        lines += [f"| {name}{' (selected)' if name == deployed.get('variant') else ''} | {v.get('status')} | "
                  f"{_f(v.get('max_abs_diff'), '.2e')} | {_f(v.get('agreement'), '.4f')} | "
                  f"{_f(v.get('delta_macro_f1'), '+.4f')} | {_f(v.get('p99_ms'), '.2f')} | {_cell(v.get('reason', ''))} |"
                  for name, v in variants.items()]
    if deployed.get("gate") == "deploy":
        lines += ["", "## Deploy gates", ""] + _deploy_gate_lines(deployed)
    return "\n".join(lines) + "\n"


def _deploy_gate_lines(deployed: dict) -> list[str]:
    smoke, load = deployed.get("smoke") or {}, deployed.get("load") or {}
    out = []
    if smoke:
        out.append(f"- smoke (Triton's answers = the exported model's): {'passed' if smoke.get('passed') else 'FAILED'}, "
                   f"label agreement {_f(smoke.get('alone_label_agreement'), '.4f')} on {smoke.get('n')} texts, "
                   f"max prob diff {_f(smoke.get('alone_max_prob_diff'), '.2e')}")
    if load:
        out.append(f"- load test: {load.get('requests')} requests at concurrency {load.get('concurrency')}: "
                   f"p50 {_f(load.get('p50_ms'), '.1f')} ms, p99 {_f(load.get('p99_ms'), '.1f')} ms vs SLO "
                   f"{_f(deployed.get('p99_slo_ms'), '.0f')} ms, errors {load.get('errors')}")
    out.append(f"- outcome: {deployed.get('outcome')}: {deployed.get('reason', '')}")
    return out + [f"- unfinished: {item}" for item in deployed.get("unfinished") or []]


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


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


# ---------------------------------------------------------------- following a deployment run


class Follower:
    """Prints the new log lines of a flow run and of its subflow runs (found by their parent
    task runs), and their state changes, in time order. Lines reach the API in batches, so
    each is held back `settle` before it is printed; `flush` prints the rest."""

    def __init__(self, client, flow_run_id, say: Callable[[str], None], settle: timedelta = SETTLE):
        self.client, self.root, self.say, self.settle = client, flow_run_id, say, settle
        self.names: dict = {}    # flow run id -> flow name
        self.states: dict = {}   # flow run id -> state name last seen
        self.flows: dict = {}    # flow id -> flow name
        self.tasks: dict = {}    # task run id -> task run name
        self.seen: set = set()   # log ids taken
        self.since = None        # newest log timestamp taken
        self.pending: list = []  # (timestamp, order, line) not printed yet
        self.order = itertools.count()

    def poll(self):
        """One round; the root flow run as it is now."""
        root = self.client.read_flow_run(self.root)
        runs = [root, *self._children()]
        for run in runs:
            self.names.setdefault(run.id, self._flow_name(run))
        self._states(runs)
        self.logs()
        self.flush(datetime.now(UTC) - self.settle)
        return root

    def flush(self, until: datetime | None = None) -> None:
        """Print the held lines up to `until` (default: all), oldest first."""
        ready = sorted(e for e in self.pending if until is None or e[0] <= until)
        self.pending = [e for e in self.pending if not (until is None or e[0] <= until)]
        for _, _, line in ready:
            self.say(line)

    def _hold(self, when: datetime, line: str) -> None:
        self.pending.append((when, next(self.order), f"  {when.astimezone():%H:%M:%S} {line}"))

    def _children(self) -> list:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

        return self.client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=list(self.names) or [self.root])))

    def _flow_name(self, run) -> str:
        if run.flow_id not in self.flows:
            self.flows[run.flow_id] = self.client.read_flow(run.flow_id).name
        return self.flows[run.flow_id]

    def _states(self, runs: list) -> None:
        for run in runs:
            state = run.state
            if state and self.states.get(run.id) != state.name:
                self.states[run.id] = state.name
                # a completed lifecycle logged its outcome line itself; a failure's message says why
                message = f" ({state.message})" if state.message and state.is_final() and not state.is_completed() else ""
                self._hold(state.timestamp, f"{self.names[run.id]} [{run.name}] -> {state.name}{message}")

    def logs(self) -> int:
        """Take the log lines not taken yet; how many."""
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterTimestamp
        from prefect.client.schemas.sorting import LogSort

        window = LogFilterTimestamp(after_=self.since - LOG_OVERLAP) if self.since else None
        flt = LogFilter(flow_run_id=LogFilterFlowRunId(any_=list(self.names) or [self.root]), timestamp=window)
        taken, offset = 0, 0
        while True:
            page = self.client.read_logs(log_filter=flt, limit=PAGE, offset=offset, sort=LogSort.TIMESTAMP_ASC)
            for entry in page:
                if entry.id not in self.seen:
                    self.seen.add(entry.id)
                    self.since = max(self.since, entry.timestamp) if self.since else entry.timestamp
                    self._hold(entry.timestamp, self._line(entry))
                    taken += 1
            if len(page) < PAGE:
                return taken
            offset += PAGE

    def _line(self, entry) -> str:
        level = "" if entry.level < 30 else "WARNING " if entry.level < 40 else "ERROR "
        who = self.names.get(entry.flow_run_id, "lifecycle")
        if entry.task_run_id:
            who += f"/{self._task_name(entry.task_run_id)}"
        return f"{who}: {level}{entry.message}"

    def _task_name(self, task_run_id) -> str:
        if task_run_id not in self.tasks:
            self.tasks[task_run_id] = self.client.read_task_run(task_run_id).name
        return self.tasks[task_run_id]


def follow(flow_run_id, say: Callable[[str], None], limit_s: float = FOLLOW_LIMIT_S, poll_s: float = POLL_S):
    """Follow a flow run to its end, printing its logs and states; the final flow run."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + limit_s
    with get_client(sync_client=True) as client:
        follower = Follower(client, flow_run_id, say)
        while time.monotonic() < deadline:
            run = follower.poll()
            if run.state and run.state.is_final():
                _drain(follower)
                follower.flush()
                return run
            time.sleep(poll_s)
    raise FtopsError(f"The lifecycle run {flow_run_id} did not finish within {limit_s / 3600:.1f} h of following; "
                     "it goes on in Prefect: see its page in the Prefect UI.")


def _drain(follower: Follower, quiet_s: float = DRAIN_QUIET_S, limit_s: float = 15.0) -> None:
    """The last lines reach the API after the final state (the run's process sends them in
    batches, every 2 s by default): read until none came for `quiet_s`."""
    end = time.monotonic() + limit_s
    last = time.monotonic()
    while time.monotonic() < end and time.monotonic() - last < quiet_s:
        time.sleep(0.5)
        if follower.logs():
            last = time.monotonic()


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
