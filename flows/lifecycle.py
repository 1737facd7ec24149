"""The lifecycle as Prefect flows: thin wiring of the ftops stages.

lifecycle = prepare data -> (tune, with tuning.enabled) -> train candidates -> A/B the best
against the champion -> export + deploy behind the gates (the registry alias moves only
when serving passes).
Flows take `config_path` (a YAML file) so a deployment, a trigger and the CLI all run the
same thing; everything they return is a small JSON-able dict. The lifecycle and the monitor
end in a Completed state whose NAME says what happened (Promoted, Rejected at A/B, ...,
Skipped), so the Prefect UI tells a refused challenger from a promotion at a glance; the
lifecycle also leaves its summary in `<project dir>/runs/lifecycle-<flow run id>.json` and a
markdown artifact `lifecycle-<project>` (ftops.run).
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.states import Completed

from ftops import data, names, registry
from ftops import run as runs
from ftops.config import Config, load_config


def _config(config_path: str | None) -> Config:
    return load_config(config_path)


# Labelled traffic a retraining reads: the newest this many rows. Labels an earlier round
# took in live on in the champion's snapshot (which the next round rehearses), so older rows
# add nothing new; the bound keeps the read, its memory and the run's time flat as the log grows.
FEEDBACK_WINDOW = 50_000


@task(name="prepare-data", retries=1, retry_delay_seconds=5, timeout_seconds=900)
def prepare_data(config_path: str | None) -> dict:
    """First round: the configured source. Later rounds: the champion's rows + labelled
    traffic (rehearsal of the old domain, learning of the new one). What comes back is the
    run's data lineage: splits, test rows per source, per sender offered / kept."""
    from ftops import predlog

    config = _config(config_path)
    champion = registry.find(config, registry.CHAMPION)
    if champion is None:
        snapshot = data.prepare(config)
        return {"snapshot": snapshot.id, "counts": snapshot.counts, "retrain": False, "feedback_rows": 0}
    old = data.load_snapshot(data.snapshot_root(config), champion.tags[names.TAG_SNAPSHOT])
    feedback = predlog.labelled(predlog.engine(config.resolved().uris.prediction_log), max_rows=FEEDBACK_WINDOW)
    frame = data.retraining_frame(old, feedback, config)
    snapshot = data.prepare(retraining_config(config, old), frame,
                            origin=f"retrain: snapshot {old.id} + {len(feedback)} labelled requests")
    report = snapshot.report
    return {"snapshot": snapshot.id, "counts": snapshot.counts, "retrain": True, "feedback_rows": len(feedback),
            "parent_version": champion.version, "sources": snapshot.source_counts, "senders": report.senders,
            "kept_in_train": report.kept_in_train, "dropped": report.dropped}


def retraining_config(config: Config, old: data.Snapshot) -> Config:
    """The data settings of a retraining: every row kept (no max_rows sample), the
    champion's labels (the challenger must predict the same ones to be compared), and
    traffic's invalid rows dropped and counted: the shape of traffic never fails the run."""
    update = {"max_rows": None, "labels": list(old.labels), "on_invalid": "drop"}
    return config.model_copy(update={"data": config.data.model_copy(update=update)})


@flow(name="tune_candidates", log_prints=True)
def tune_candidates(config_path: str | None, snapshot_id: str, retrain: bool = False) -> dict:
    """`tuning.enabled`: an Optuna study per candidate on the train and validation splits
    (ftops.tune); the best settings are written back for train_candidates to apply. A
    retraining searches only candidates without tuned settings, unless
    `tuning.on_retrain: search`."""
    from ftops import tune
    from ftops.tune import tuned

    config = _config(config_path)
    snapshot = data.load_snapshot(data.snapshot_root(config), snapshot_id)
    names = [c.name for c in config.candidates]
    if retrain and config.tuning.on_retrain == "reuse":
        names = [c.name for c in config.candidates if tuned.load_tuned(config, c) is None]
        for name in sorted({c.name for c in config.candidates} - set(names)):
            print(f"{name}: reusing its tuned settings (tuning.on_retrain: reuse)")
    if not names:
        return {}

    def report(p) -> None:
        if p.run:
            best = "-" if p.best is None else f"{p.best:.3f}"
            print(f"tune {p.candidate}: trial {p.run}/{p.budget}, {p.complete} complete, {p.pruned} pruned, "
                  f"best val macro-F1 {best}")

    results = tune.tune(config, snapshot, names, progress=report)
    return {r.candidate: {"study": r.study, "complete": r.complete, "pruned": r.pruned, "best_trial": r.best_trial,
                          "best_val_macro_f1": r.best_val_macro_f1, "settings": r.settings} for r in results}


def tuning_timeout_s(config: Config) -> float:
    """Each candidate's study stops at tuning.minutes; the last trial may run past it."""
    return len(config.candidates) * (config.tuning.minutes + 30) * 60


@flow(name="train_candidates", log_prints=True, timeout_seconds=7200, retries=1, retry_delay_seconds=30)
def train_candidates(config_path: str | None, snapshot_id: str, parent_version: str | None = None,
                     resume_key: str | None = None) -> dict:
    """Every configured candidate + the TF-IDF baseline, one MLflow round. The round is
    tagged with `resume_key` (default: this flow run's id), so a retry of the run resumes
    that round from its checkpoints instead of starting over."""
    from prefect.runtime import flow_run

    from ftops import train

    config = _config(config_path)
    snapshot = data.load_snapshot(data.snapshot_root(config), snapshot_id)
    retrain = None
    if parent_version is not None:
        champion_dir = registry.download(config, parent_version)
        old = data.load_snapshot(data.snapshot_root(config), registry.get(config, parent_version).tags[names.TAG_SNAPSHOT])
        # A TF-IDF champion teaches nothing a transformer can distil from or start from.
        teacher = None if train.is_baseline(champion_dir) else champion_dir
        retrain = train.RetrainSources(teacher_dir=teacher, old_train=old.split("train"))
    def progress_for(name: str):
        def report(step: int, total: int, metrics: dict) -> None:
            if "eval_macro_f1" in metrics:
                print(f"{name}: step {step}/{total}, val macro-F1 {metrics['eval_macro_f1']:.3f}")
        return report

    key = resume_key or flow_run.id
    earlier = train.find_round(config, key) if key else None
    if earlier:
        print(f"flow run {key} started round {earlier} before: resuming it")
    result = train.train_round(config, snapshot, retrain=retrain, parent_model_version=parent_version,
                               progress_for=progress_for, resume=earlier,
                               tags={train.TAG_FLOW_RUN: key} if key else None, notify=print)
    best, run_id = max(result.candidates, key=lambda item: item[0].val_macro_f1)
    table = {r.candidate: {"val_macro_f1": r.val_macro_f1, "test_macro_f1": r.test_macro_f1,
                           "trainable_share": r.trainable_share, "wall_seconds": r.wall_seconds}
             for r, _ in result.candidates}
    print(f"best candidate {best.candidate}: val macro-F1 {best.val_macro_f1:.3f}; baseline test "
          f"macro-F1 {result.baseline.test_macro_f1:.3f}")
    return {"round_run_id": result.run_id, "best": best.candidate, "best_run_id": run_id,
            "candidates": table, "baseline_test_macro_f1": result.baseline.test_macro_f1,
            "baseline_run_id": result.baseline.run_id}


@flow(name="evaluate_and_decide", log_prints=True, timeout_seconds=3600)
def evaluate_and_decide(config_path: str | None, snapshot_id: str, run_id: str,
                        baseline_run_id: str | None = None) -> dict:
    """Register the best candidate as challenger and A/B it against the champion on the same
    test rows. The champion alias is not moved here: serving gates decide that. With no
    champion and a candidate that loses the baseline rule, the round's TF-IDF baseline becomes
    the challenger (gates.baseline_serves): `run_id` and `served` in the result say which."""
    from ftops import decide

    config = _config(config_path)
    snapshot = data.load_snapshot(data.snapshot_root(config), snapshot_id)
    protected = ["source"] if "source" in snapshot.split("test") else None
    decision, version = decide.decide(config, snapshot, run_id, protected=protected, promote=False)
    print(decision.summary)
    served = decide.serve_baseline(config, decision, version, baseline_run_id)
    if served is not None:
        decision, version = served
        run_id = baseline_run_id
        print(decision.summary)
    rules = [{"name": r.name, "passed": bool(r.passed), "value": _number(r.value), "threshold": _number(r.threshold),
              "detail": r.detail} for r in decision.rules]
    return {"outcome": decision.outcome, "summary": decision.summary, "version": version.version,
            "run_id": run_id, "served": "baseline" if served is not None else "candidate",
            "mode": decision.mode, "reference": decision.reference, "rules": rules,
            "failed_rules": [r["name"] for r in rules if not r["passed"]],
            "metrics": {k: (v or {}).get("macro_f1") for k, v in decision.metrics.items()},
            "slices": {k: v.get("delta") for k, v in decision.slices.items()},
            "test_rows_by_source": decision.context.get("test_rows_by_source")}


def _number(value) -> float | None:
    return None if value is None else float(value)


PARITY_FIGURES = ("max_abs_diff", "agreement", "delta_macro_f1", "p50_ms", "p99_ms", "size_mb")


def variant_figures(exported) -> dict:
    """Each ONNX variant's parity-gate status and figures, for the summary and the artifact."""
    return {name: {"status": r.status, "reason": r.reason,
                   **{k: float(r.figures[k]) for k in PARITY_FIGURES if k in r.figures}}
            for name, r in exported.variants.items()}


@flow(name="export_and_deploy", log_prints=True, timeout_seconds=3600)
def export_and_deploy(config_path: str | None, version: str, snapshot_id: str, run_id: str) -> dict:
    """ONNX export behind the parity gate, then Triton behind the smoke + P99 gates; on a
    pass the champion alias and route move and the monitor's reference is saved."""
    from ftops import export, lock, monitor
    from ftops.serve import deploy
    from ftops.serve.triton import server

    config = _config(config_path)
    snapshot = data.load_snapshot(data.snapshot_root(config), snapshot_id)
    exported = export.export_version(config, version, snapshot, run_id=run_id, progress=print)
    if exported.selected is None:
        print(f"export: no variant passed the parity gate ({exported.selection_reason}); champion keeps serving")
        return {"gate": "export", "outcome": "rejected", "reason": f"export: {exported.selection_reason}",
                "export": str(exported.out_dir), "variants": variant_figures(exported), "version": version}
    test_texts = list(snapshot.split("test")["text"])
    # One promotion at a time: a `ftops deploy` / `rollback` by hand waits for this one. The
    # export above stays outside the lock (minutes of work that moves nothing).
    with lock.promotion_lock(config, f"lifecycle export_and_deploy v{version}"):
        server.start(config)
        deploy.reload_routes(config)
        result = deploy.deploy(config, exported.out_dir, test_texts, version=version, run_id=run_id)
        print(f"deploy {result.route.ensemble}: {result.outcome} ({result.reason})")
        unfinished = list(result.unfinished)
        if result.outcome == deploy.PROMOTED and not unfinished:
            try:
                monitor.save_champion_reference(config, version, snapshot)
            except Exception as exc:  # noqa: BLE001 - it serves; `ftops reconcile` builds the reference later
                unfinished.append(f"the drift reference of v{version} was not saved ({exc}); `ftops reconcile` "
                                  "builds it")
    for item in unfinished:
        print(f"unfinished: {item}")
    return {"gate": "deploy", "outcome": result.outcome, "reason": result.reason, "export": str(exported.out_dir),
            "version": version, "variant": exported.selected, "variants": variant_figures(exported),
            "smoke": result.smoke, "load": result.load, "p99_slo_ms": config.gates.p99_ms, "unfinished": unfinished}


@flow(name="monitor_drift", log_prints=True, timeout_seconds=900)
def monitor_drift(config_path: str | None = None):
    """One drift check of recent traffic against the champion's reference; on an alert the
    check emits `ftops.drift.detected`, which the lifecycle deployment's trigger turns into
    a retraining run. Then retention (ftops.retention) bounds what the loop accumulates.
    Before the first champion there is nothing to compare with: the run ends "Skipped"
    (a Completed state) with the reason, not red at every interval."""
    from ftops import monitor, retention

    config = _config(config_path)
    why = no_champion(config)
    if why is not None:
        print(f"skipped: {why}")
        pruned = retention.apply(config)
        return Completed(name=runs.SKIPPED, message=why, data={"skipped": why, "retention": pruned.as_dict()})
    result = monitor.check(config)
    print(f"{result.decision} (alert: {result.alert}, event: {result.event_state or '-'}): {result.reason}")
    online_ab = close_online_ab(config)
    pruned = retention.apply(config)
    print("retention: " + "; ".join(pruned.lines()))
    figures = {"check_id": result.id, **{k: v for k, v in result.row().items() if k != "ts"}}
    return {**json.loads(json.dumps(figures, default=str)), "online_ab": online_ab, "retention": pruned.as_dict()}


def close_online_ab(config: Config) -> dict | None:
    """On the monitor's schedule: an online A/B or shadow experiment with enough feedback is
    decided (promoted through the deploy gates, or rejected); with too little it waits."""
    from ftops import online

    if online.current(config) is None:
        return None
    decided = online.decide(config)
    print(f"online experiment: {decided.outcome}: {decided.summary}")
    return {"outcome": decided.outcome, "summary": decided.summary}


def no_champion(config: Config) -> str | None:
    """Why a drift check has nothing to compare traffic with, or None. The route is read
    first (a local file); the registry only when MLflow answers, so a down tracking server
    leaves the decision to the check and its cached reference."""
    from ftops import monitor
    from ftops.serve import deploy

    if "champion" in deploy.routing(config):
        return None
    if not monitor.mlflow_reachable(config)[0] or registry.find(config, registry.CHAMPION) is not None:
        return None
    return (f"no champion yet for {config.project.name} (no champion route, no registry champion): nothing serves, "
            "so there is no traffic to compare; the first lifecycle run (`ftops run`) makes one")


@flow(name="lifecycle", log_prints=True, timeout_seconds=4 * 3600)
def lifecycle(config_path: str | None = None, reason: str = "manual"):
    """The whole chain, once. The deployment allows one run at a time (concurrency limit 1):
    a second trigger waits in the queue rather than interleaving with this one. It ends in a
    Completed state named after the outcome, whose result is the summary dict."""
    from prefect.runtime import flow_run

    from ftops.reconcile import reconcile

    logger = get_run_logger()
    logger.info("lifecycle started (%s), config %s", reason, config_path or "default")
    # Serving, registry and drift reference agree before this run reads the champion.
    for line in reconcile(_config(config_path)).lines():
        logger.info("reconcile: %s", line)
    prepared = prepare_data(config_path)
    config = _config(config_path)
    tuned = None
    if config.tuning.enabled:
        tuned = tune_candidates.with_options(timeout_seconds=tuning_timeout_s(config))(
            config_path, prepared["snapshot"], retrain=prepared["retrain"])
    # Keyed by this run: a retry of the lifecycle resumes its round instead of training anew.
    trained = train_candidates(config_path, prepared["snapshot"], prepared.get("parent_version"),
                               resume_key=flow_run.id)
    decided = evaluate_and_decide(config_path, prepared["snapshot"], trained["best_run_id"],
                                  trained.get("baseline_run_id"))
    summary = {"reason": reason, "data": prepared, "train": trained, "decision": decided}
    if tuned is not None:
        summary["tune"] = tuned
    if decided["outcome"] == "promote" and config.gates.promotion != "direct":
        summary["online"] = stage_online(config, decided["version"], prepared["snapshot"])
    elif decided["outcome"] == "promote":
        summary["deploy"] = export_and_deploy(config_path, decided["version"], prepared["snapshot"],
                                              decided["run_id"])
    return finish(config, summary, flow_run.id)


def stage_online(config: Config, version: str, snapshot_id: str) -> dict:
    """`gates.promotion: online_ab | shadow`: the offline winner is staged beside the champion
    (export, parity and smoke gates) and judged on live traffic; the monitor flow decides it
    once `gates.online_min_feedback` labelled rows per arm have come back."""
    from ftops import online

    started = online.start(config, version, online.POLICY_OF_PROMOTION[config.gates.promotion],
                           snapshot_id=snapshot_id, progress=print)
    experiment = started.experiment
    print(f"staged v{version} for an online {experiment.policy} against the champion")
    return {"version": version, "policy": experiment.policy, "share": experiment.share,
            "challenger": started.route.ensemble}


def finish(config: Config, summary: dict, flow_run_id: str | None):
    """The outcome as the state's name and message, the summary file and the artifact."""
    from prefect.artifacts import create_markdown_artifact

    result = runs.outcome(summary)
    summary.update(outcome=result.name, outcome_line=result.line, flow_run_id=flow_run_id)
    get_run_logger().info("%s", result.line)
    if flow_run_id:
        runs.save_summary(config, flow_run_id, summary)
    try:
        create_markdown_artifact(key=runs.artifact_key(config), markdown=runs.markdown(summary),
                                 description=f"{config.project.name}: {result.name}")
    except Exception as exc:  # noqa: BLE001 - the outcome stands; the state and the summary file carry it
        get_run_logger().warning("the lifecycle artifact was not created (%s)", exc)
    return Completed(name=result.name, message=result.line, data=summary)


def config_path_of(path: str | Path | None) -> str | None:
    return None if path is None else str(Path(path).resolve())
