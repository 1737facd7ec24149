"""The demo: the drift story (README, The demo), end to end, on the real corpus and the
real MiniLM, through the real services.

Its project dir is reset at the start, and only a folder the demo created is ever reset:
one it finds missing or empty it creates and marks (MARKER); any other non-empty folder is
refused untouched (project.dir may come from $FTOPS_PROJECT__DIR, e.g. a team's volume).

1. services up (Prefect, MLflow UI, Triton, gateway, Evidently UI, the deployments process);
2. the first lifecycle run, started through Prefect: airline champion, A/B vs the baseline,
   ONNX export, Triton behind the P99 gate;
3. in-domain traffic through the gateway, a drift check: no drift;
4. traffic shifts to the other domains (labels arrive as feedback), drift checks until the
   monitor emits `ftops.drift.detected`; the deployment trigger starts the lifecycle;
5. the retrained model (old + new data) is A/B'd, exported, deployed and promoted;
6. before/after macro-F1 of both versions on held-out rows of both domains, via Triton.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from ftops import data, names, registry, services
from ftops.config import Config, load_config
from ftops.data import corpora
from ftops.errors import FtopsError

IN_DOMAIN_TRAFFIC = 300
SHIFTED_TRAFFIC = 1200
HOLDOUT = 600
MARKER = ".ftops-demo"  # written into the project dir the demo created: the only kind it resets


@dataclass
class Step:
    name: str
    what: str
    figures: str
    seconds: float


@dataclass
class Story:
    steps: list[Step] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)
    before_after: dict[str, dict[str, float]] = field(default_factory=dict)
    drift_to_run_s: float | None = None
    total_s: float = 0.0


def run(config_path: str, reset: bool = True, say: Callable[[str], None] = print,
        shifted_traffic: int = SHIFTED_TRAFFIC) -> Story:
    started = time.monotonic()
    config_path = str(Path(config_path).resolve())
    config = load_config(config_path)
    os.environ.update(services.environment(config, config_path))
    story = Story()
    folder = config.resolved().project.dir
    if reset and is_demo_dir(folder):
        services.down(config)
        shutil.rmtree(folder)
    claim(folder, reset, config_path)

    clock = time.monotonic()
    rows = services.up(config, config_path)
    story.links = {r.name: r.url for r in rows if r.url}
    story.steps.append(Step("services", "Prefect, MLflow UI, Triton, gateway, Evidently UI, deployments",
                            ", ".join(f"{r.name} {r.state}" for r in rows), time.monotonic() - clock))
    say(f"services up in {story.steps[-1].seconds:.0f} s")

    clock = time.monotonic()
    first = start_lifecycle(config_path, "initial")
    state = wait_for(first, say, config)
    champion = registry.find(config, registry.CHAMPION)
    if champion is None:
        raise RuntimeError(f"The first lifecycle run ended {state} without a champion; see the Prefect UI "
                           f"({story.links.get('prefect')}) and {config.resolved().project.dir / 'decisions'}.")
    story.steps.append(Step("first champion", f"lifecycle run {state}: airline model v{champion.version} "
                            "trained, A/B'd vs the TF-IDF baseline, exported, deployed behind the P99 gate",
                            decision_figures(config) + "; " + deploy_figures(config), time.monotonic() - clock))
    say(story.steps[-1].what)

    snapshot = data.load_snapshot(data.snapshot_root(config), champion.tags[names.TAG_SNAPSHOT])
    airline_unused, shifted, holdout = traffic_sets(snapshot, config.data.seed, shifted_traffic)
    gateway_url = story.links["gateway"]

    clock = time.monotonic()
    send(gateway_url, airline_unused.head(IN_DOMAIN_TRAFFIC), feedback_share=0.3)
    check = run_check(config_path, say)
    story.steps.append(Step("in-domain traffic", f"{IN_DOMAIN_TRAFFIC} airline tweets via the gateway; drift check",
                            check, time.monotonic() - clock))

    clock = time.monotonic()
    event_time = None
    chunk = max(1, shifted_traffic // 4)
    starts = list(range(0, shifted_traffic, chunk))
    for start in starts:
        send(gateway_url, shifted.iloc[start:start + chunk], feedback_share=1.0)
        if start not in (starts[0], starts[-1]):
            continue  # checks after the first and the last chunk: persistence needs two
        before = datetime.now(UTC)
        check = run_check(config_path, say)
        if "ALERT" in check:
            event_time = before
            break
    if event_time is None:
        raise RuntimeError("The traffic shifted but no drift alert was raised; see `ftops monitor history`.")
    story.steps.append(Step("traffic shifts", f"{shifted_traffic} tweets of other domains with feedback labels; "
                            "drift checks until the alert", check, time.monotonic() - clock))

    clock = time.monotonic()
    retrain_run, delay = find_triggered_run(event_time, say)
    story.drift_to_run_s = delay
    state = wait_for(retrain_run, say, config)
    new_champion = registry.find(config, registry.CHAMPION)
    promoted = new_champion is not None and new_champion.version != champion.version
    story.steps.append(Step("drift-triggered retraining", f"lifecycle run {state} started by the drift event "
                            f"after {delay:.1f} s; {'promoted v' + new_champion.version if promoted else 'NOT promoted'}",
                            decision_figures(config) + "; " + deploy_figures(config), time.monotonic() - clock))
    say(story.steps[-1].what)

    clock = time.monotonic()
    story.before_after = before_after(config, snapshot.split("test"), holdout)
    figures = "; ".join(f"{who}: airline {v['airline']:.3f}, other domains {v['other domains']:.3f}"
                        for who, v in story.before_after.items())
    story.steps.append(Step("before / after", "macro-F1 of both versions on held-out rows of both domains, via Triton",
                            figures, time.monotonic() - clock))
    story.total_s = time.monotonic() - started
    return story


# ---------------------------------------------------------------- the project dir


def is_demo_dir(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def claim(folder: Path, reset: bool, config_path: str) -> None:
    """Create and mark a missing or empty project dir. Any other folder is refused when a
    reset was asked for (a reset deletes the whole folder); with --keep it is used as is."""
    if folder.exists() and not folder.is_dir():
        raise FtopsError(f"The demo's project dir {folder} is a file. Point project.dir ({config_path}, or "
                         "$FTOPS_PROJECT__DIR) at a new or empty folder.")
    if folder.is_dir() and any(folder.iterdir()) and not is_demo_dir(folder):
        if not reset:
            return
        raise FtopsError(f"The demo's project dir {folder} is not empty and was not created by the demo "
                         f"(it has no {MARKER} file), so it is not reset: a reset deletes the whole folder. "
                         f"Nothing in it was touched. Point project.dir ({config_path}, or $FTOPS_PROJECT__DIR) "
                         "at a new or empty folder, or run with --keep to use this one without a reset.")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("Created by `ftops demo`, which deletes and recreates this folder at each run.\n")


# ---------------------------------------------------------------- Prefect


def start_lifecycle(config_path: str, reason: str):
    from prefect.deployments import run_deployment

    return run_deployment("lifecycle/lifecycle", parameters={"config_path": config_path, "reason": reason},
                          timeout=0)


def wait_for(flow_run, say: Callable[[str], None], config: Config | None = None, limit_s: float = 3600) -> str:
    """Follow a lifecycle run as `ftops run` does (its stages' log lines and states, live);
    the final state's name (Promoted, Rejected at A/B, ...). With the config, the outcome
    line of the run's summary closes it."""
    from ftops import run as runs

    final = runs.follow(flow_run.id, lambda line: say(f"  {line}"), limit_s=limit_s)
    if config is not None:
        summary = runs.load_summary(config, str(final.id))
        say("  " + (runs.outcome(summary).line if summary and final.state.is_completed()
                    else f"{final.state.name}: {final.state.message or 'no message'}"))
    return final.state.name


def run_check(config_path: str, say: Callable[[str], None]) -> str:
    """One drift check, as a run of the monitor deployment (visible in the Prefect UI)."""
    from prefect.deployments import run_deployment

    from ftops import monitor

    flow_run = run_deployment("monitor_drift/monitor", parameters={"config_path": config_path}, timeout=600)
    latest = monitor.history(load_config(config_path), last=1)
    line = describe(latest[0]) if latest else f"check run {flow_run.state.name}"
    say(f"  drift check: {line}")
    return line


def describe(check) -> str:
    top = ", ".join(f"{s.name} {s.score:.2f}" for s in check.top(3))
    share = "-" if check.drifted_share is None else f"{check.drifted_share:.2f}"
    alert = " ALERT (event sent)" if check.alert and check.event_sent else " ALERT" if check.alert else ""
    return f"{check.decision}{alert}: window {check.window_size}, drifted share {share}; top {top}"


def find_triggered_run(after: datetime, say: Callable[[str], None], limit_s: float = 120):
    """The lifecycle run the drift trigger created, and seconds from the check's start to
    the run's start (event emitted -> automation -> run scheduled -> runner picks it up)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterExpectedStartTime
    from prefect.client.schemas.sorting import FlowRunSort

    deadline = time.monotonic() + limit_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(after_=after)),
                sort=FlowRunSort.START_TIME_DESC)
            for run in runs:
                if run.parameters.get("reason") == "drift" and run.start_time is not None:
                    events = event_time(client, after)
                    delay = (run.start_time - (events or after)).total_seconds()
                    say(f"  drift event -> lifecycle run {run.name} started in {delay:.1f} s")
                    return run, delay
            time.sleep(0.5)
    raise TimeoutError("No lifecycle run was started by the drift event within "
                       f"{limit_s:.0f} s; check the deployments process log.")


def event_time(client, after: datetime) -> datetime | None:
    """When the drift event occurred, read back from Prefect's event store."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

    try:
        page = client.request("POST", "/events/filter", json={"filter": EventFilter(
            event=EventNameFilter(name=[names.EVENT_DRIFT]),
            occurred=EventOccurredFilter(since=after)).model_dump(mode="json"), "limit": 5})
        events = page.json().get("events", [])
    except Exception:
        return None
    if not events:
        return None
    return datetime.fromisoformat(events[0]["occurred"].replace("Z", "+00:00"))


# ---------------------------------------------------------------- traffic


def traffic_sets(snapshot, seed: int, shifted_traffic: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Airline tweets the champion never saw; other-domain tweets for traffic (with
    feedback); other-domain tweets held out for the before/after figures."""
    airline, _ = corpora.load_builtin("builtin:tweets?domain=airline")
    used = set().union(*(set(snapshot.split(s)["row"]) for s in data.SPLITS))
    unused = airline[~airline["row"].isin(used)].sample(frac=1.0, random_state=seed)
    others, _ = corpora.load_builtin("builtin:tweets?exclude_domain=airline")
    others = others.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    return unused, others.iloc[:shifted_traffic], others.iloc[shifted_traffic:shifted_traffic + HOLDOUT]


def send(gateway_url: str, frame: pd.DataFrame, feedback_share: float, batch: int = 16) -> int:
    """Texts through the gateway; the true labels of a share come back later as feedback."""
    rng = np.random.default_rng(0)
    sent = 0
    for start in range(0, len(frame), batch):
        part = frame.iloc[start:start + batch]
        answer = post(f"{gateway_url}/predict", {"texts": list(part["text"]), "user": f"demo-{start}"})
        for prediction, label in zip(answer["predictions"], part["label"]):
            if rng.random() < feedback_share:
                post(f"{gateway_url}/feedback", {"request_id": prediction["request_id"], "label": label})
        sent += len(part)
    return sent


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


# ---------------------------------------------------------------- figures


def decision_figures(config: Config) -> str:
    folders = sorted((config.resolved().project.dir / "decisions").glob("*/decision.json"))
    if not folders:
        return "no decision"
    decision = json.loads(folders[-1].read_text())
    f1 = {k: (v or {}).get("macro_f1") for k, v in decision["metrics"].items()}
    parts = [f"A/B {decision['outcome']}: challenger {f1['challenger']:.3f}"]
    for other in ("champion", "baseline"):
        if f1.get(other) is not None:
            parts.append(f"{other} {f1[other]:.3f}")
    return ", ".join(parts)


def deploy_figures(config: Config) -> str:
    from ftops.serve import deploy

    champion = deploy.routing(config).get("champion")
    if champion is None:
        return "not deployed"
    version = registry.find(config, registry.CHAMPION)
    tag = (version.tags.get("ftops.deploy") if version else None) or ""
    return f"serving {champion.ensemble} ({champion.variant}) {tag}"


def before_after(config: Config, airline_test: pd.DataFrame, holdout: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Macro-F1 of the previous and the current champion, both served by Triton, beside the
    cheap reference: TF-IDF + logistic regression fitted on the champion's own training rows
    (old + labelled traffic). The loop is worth its cost only if the champion is not below it."""
    from ftops.serve import deploy
    from ftops.serve.triton import server
    from ftops.serve.triton.client import TritonClient

    routes = deploy.routing(config)
    info = server.status(config)
    out = {}
    with TritonClient(info.url(config.serving.protocol), config.serving.protocol) as client:
        for role, name in (("before (previous)", "previous"), ("after (champion)", "champion")):
            if name not in routes:
                continue
            model = routes[name].ensemble
            out[role] = {}
            for domain, frame in (("airline", airline_test), ("other domains", holdout)):
                preds = [p.label for p in client.classify(list(frame["text"]), model)]
                out[role][domain] = float(f1_score(frame["label"], preds, average="macro"))
    out["TF-IDF (same rows)"] = baseline_figures(config, {"airline": airline_test, "other domains": holdout})
    return out


def baseline_figures(config: Config, frames: dict[str, pd.DataFrame]) -> dict[str, float]:
    from ftops import train

    champion = registry.find(config, registry.CHAMPION)
    snapshot = data.load_snapshot(data.snapshot_root(config), champion.tags[names.TAG_SNAPSHOT])
    pipeline = train.fit_baseline(snapshot).pipeline
    return {domain: float(f1_score(frame["label"], pipeline.predict(frame["text"]), average="macro"))
            for domain, frame in frames.items()}
