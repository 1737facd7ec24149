"""Deciding an online experiment: the rows logged since it started, of its two models.
Fewer than `gates.online_min_feedback` rows with feedback on an arm is `wait` (with how many
more); else the online figures (ftops.serve.traffic.ab_report: unpaired for ab, paired for
shadow) are held to config.gates like the offline A/B: the macro-F1 gain must reach
min_effect, and the accuracy test and the macro-F1 CI must both favour the challenger at
alpha. A win is promoted through the serving gates (deploy: smoke + P99) and gets its drift
reference; the decision is written like the offline one (<project>/decisions/<stamp>/
decision.json + .md, the version's decision tag) and the experiment ends.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from ftops import data, names, predlog, registry
from ftops.config import Config
from ftops.evaluate.record import Decision, Rule
from ftops.lock import promotion_lock
from ftops.online.control import gate_texts, snapshot_for, stop
from ftops.online.experiment import (AB, ARM, COUNTED, PROMOTE, REJECT, WAIT, Experiment, OnlineDecision,
                                     OnlineError, current, log)
from ftops.serve import deploy, traffic
from ftops.serve.deploy import DeployResult


def window(config: Config, experiment: Experiment) -> pd.DataFrame:
    """The experiment's rows: logged since it started, answered by its champion or challenger."""
    cfg = config.resolved()
    eng = predlog.engine(cfg.uris.prediction_log, cfg.timeouts.database_s)
    try:
        frame = traffic.report_rows(eng, since=experiment.since)
    finally:
        eng.dispose()
    return frame[frame["model"].isin({experiment.champion, experiment.challenger})].reset_index(drop=True)


def feedback_counts(frame: pd.DataFrame, policy: str) -> dict[str, int]:
    """Rows with feedback that the test can use: for ab the answers of each arm (fallbacks
    are no arm's), for shadow the requests with a champion and a shadow answer (`paired`)."""
    labelled = frame[frame["feedback"].notna()]
    if policy == AB:
        clean = labelled[traffic.fallback_from(labelled).isna()]
        return {arm: int((clean["route"] == arm).sum()) for arm in (names.CHAMPION, names.CHALLENGER)}
    mirrored = set(frame.loc[frame["route"] == "shadow", "request_id"])  # logged after the label, maybe
    pairs = int(((labelled["route"] == names.CHAMPION) & labelled["request_id"].isin(mirrored)).sum())
    return {"paired": pairs}


def decide(config: Config, min_feedback: int | None = None, apply: bool = True,
           texts: list[str] | None = None) -> OnlineDecision:
    """Promote, reject or wait on the running experiment's online figures. With `apply`, a
    promote goes through the serving gates (smoke + P99 on `texts`, default the gates'
    texts of the experiment), the decision is recorded and the experiment ends; without,
    nothing changes. `min_feedback` defaults to gates.online_min_feedback."""
    need = max(1, config.gates.online_min_feedback if min_feedback is None else min_feedback)
    with promotion_lock(config, "ab decide"):
        experiment = _running(config)
        frame = window(config, experiment)
        figures = traffic.ab_report(frame, alpha=config.gates.alpha)[experiment.policy]
        counts = feedback_counts(frame, experiment.policy)
        needed = {arm: max(0, need - n) for arm, n in counts.items()}
        if any(needed.values()):
            return OnlineDecision(WAIT, _waiting(counts, needed, need), experiment, counts, needed, figures)
        rules = judge(config, experiment, figures)
        outcome = PROMOTE if all(r.passed for r in rules) else REJECT
        if not apply:
            return OnlineDecision(outcome, _summary(outcome, experiment, figures, rules), experiment, counts,
                                  needed, figures)
        return _apply(config, OnlineDecision(outcome, "", experiment, counts, needed, figures), rules, texts)


def _apply(config: Config, decided: OnlineDecision, rules: list[Rule], texts: list[str] | None) -> OnlineDecision:
    """A win through the serving gates (a failed gate turns it into a reject), then the
    record, then the experiment's end."""
    if decided.outcome == PROMOTE:
        decided.deploy = _promote(config, decided.experiment, texts)
        rules.append(_serving_rule(config, decided.deploy))
        decided.outcome = PROMOTE if decided.deploy.outcome == deploy.PROMOTED else REJECT
        decided.unfinished += decided.deploy.unfinished
        if decided.outcome == PROMOTE and not decided.deploy.unfinished:
            decided.unfinished += _drift_reference(config, decided.experiment.version)
    decided.summary = _summary(decided.outcome, decided.experiment, decided.figures, rules)
    decided.decision = _decision(decided, rules)
    decided.folder, unrecorded = _record(config, decided)
    decided.unfinished += unrecorded
    decided.experiment = stop(config, reason=decided.summary, outcome=decided.outcome)
    return decided


def _running(config: Config) -> Experiment:
    """The running experiment, its routes still the ones it compares."""
    experiment = current(config)
    if experiment is None:
        raise OnlineError("No online experiment is running. Start one with `ftops ab start --version <version>`.")
    routes = deploy.routing(config)
    champion, challenger = routes.get(names.CHAMPION), routes.get(names.CHALLENGER)
    if champion is None or champion.tag != experiment.champion_tag:
        raise OnlineError(f"The champion changed since the experiment started ({experiment.champion_tag} then, "
                          f"{champion.tag if champion else 'none'} now): its figures compare with a model that no "
                          "longer serves. End it with `ftops ab stop` and start a new one.")
    if challenger is None or challenger.tag != experiment.tag:
        raise OnlineError(f"The challenger route no longer serves {experiment.tag} (it is "
                          f"{challenger.tag if challenger else 'gone'}). End the experiment with `ftops ab stop`.")
    return experiment


def judge(config: Config, experiment: Experiment, figures: dict) -> list[Rule]:
    """The offline A/B's rules on the online figures: effect (macro-F1 gain >= min_effect),
    significance (the accuracy test below alpha in the challenger's favour AND the macro-F1
    delta's CI above 0), and for ab the challenger's failures (fallbacks)."""
    gates, test = config.gates, figures["test"]
    arms = figures["arms"]
    mine, theirs = arms[ARM[experiment.policy]], arms["champion"]
    low, high = test["macro_f1_delta_ci"]
    level = round(100 * (1 - gates.alpha))
    rules = [Rule("effect", test["macro_f1_delta"] >= gates.min_effect, test["macro_f1_delta"], gates.min_effect,
                  f"challenger macro-F1 {mine['macro_f1']:.4f} vs champion {theirs['macro_f1']:.4f} on live "
                  "traffic with feedback"),
             Rule("significance", test["p_value"] < gates.alpha and test["accuracy_delta"] > 0 and low > 0,
                  test["p_value"], gates.alpha,
                  f"{test['test']}: accuracy delta {test['accuracy_delta']:+.4f}, p={test['p_value']:.3g} must be "
                  f"below alpha in the challenger's favour; {level}% CI of delta macro-F1 [{low:+.4f}, {high:+.4f}] "
                  "must be above 0")]
    if experiment.policy == AB:
        failed, answered = mine["fallbacks"], mine["requests"]
        share = failed / max(1, failed + answered)
        limit = config.serving.max_error_rate
        rules.append(Rule("fallbacks", share <= limit, share, limit,
                          f"{failed} of the challenger's {failed + answered} requests failed and the champion "
                          "answered (serving.max_error_rate)"))
    return rules


def _promote(config: Config, experiment: Experiment, texts: list[str] | None) -> DeployResult:
    if texts is None:
        snapshot = snapshot_for(config, experiment.version, experiment.snapshot) if experiment.snapshot else None
        texts = gate_texts(config, snapshot)
    return deploy.deploy(config, Path(experiment.export), texts, version=experiment.version)


def _drift_reference(config: Config, version: str) -> list[str]:
    """The new champion's drift reference, as the lifecycle's deploy step saves it; what
    could not be done, for `ftops reconcile` (it serves either way)."""
    from ftops import monitor

    snapshot_id = registry.get(config, version).tags.get(names.TAG_SNAPSHOT)
    if not snapshot_id:
        return [f"v{version} has no {names.TAG_SNAPSHOT} tag naming its data: no drift reference was built, "
                "so drift checks have nothing to compare with (see `ftops reconcile`)"]
    try:
        monitor.save_champion_reference(config, version, data.load_snapshot(data.snapshot_root(config), snapshot_id))
    except Exception as exc:  # noqa: BLE001 - it serves; reconcile builds the reference later
        return [f"the drift reference of v{version} was not saved ({type(exc).__name__}: {exc}); "
                "`ftops reconcile` builds it"]
    return []


def _serving_rule(config: Config, result: DeployResult) -> Rule:
    p99 = (result.load or {}).get("p99_ms")
    return Rule("serving", result.outcome == deploy.PROMOTED, p99, config.gates.p99_ms,
                f"deploy (smoke + P99 gates): {result.outcome}: {result.reason}")


def _waiting(counts: dict[str, int], needed: dict[str, int], need: int) -> str:
    more = ", ".join(f"{n} more {COUNTED[arm]}" for arm, n in needed.items() if n)
    have = ", ".join(f"{n} {COUNTED[arm]}" for arm, n in counts.items())
    return (f"wait: {need} rows with feedback are needed per arm (gates.online_min_feedback); {have} so far: "
            f"{more}")


def _summary(outcome: str, experiment: Experiment, figures: dict, rules: list[Rule]) -> str:
    test, arms = figures["test"], figures["arms"]
    mine, theirs = arms[ARM[experiment.policy]], arms["champion"]
    low, high = test["macro_f1_delta_ci"]
    failed = [r.name for r in rules if not r.passed]
    verdict = f"failed: {', '.join(failed)}" if failed else "all rules passed"
    return (f"{outcome}: v{experiment.version} vs champion {experiment.champion_tag} on live {experiment.policy} "
            f"traffic: macro-F1 {mine['macro_f1']:.4f} vs {theirs['macro_f1']:.4f} (delta "
            f"{test['macro_f1_delta']:+.4f}, CI [{low:+.4f}, {high:+.4f}]), accuracy delta "
            f"{test['accuracy_delta']:+.4f}, {test['test']} p={test['p_value']:.3g}; {verdict}")


def _decision(decided: OnlineDecision, rules: list[Rule]) -> Decision:
    """The offline Decision's shape, so one reader (and `ftops decide`'s printer) fits both."""
    experiment, figures = decided.experiment, decided.figures
    context: dict[str, Any] = {"experiment": asdict(experiment), "feedback": decided.feedback,
                               "test": figures["test"]}
    if decided.deploy is not None:
        context["deploy"] = {"outcome": decided.deploy.outcome, "reason": decided.deploy.reason,
                             "load": decided.deploy.load}
    metrics = {"challenger": figures["arms"][ARM[experiment.policy]], "champion": figures["arms"]["champion"]}
    return Decision(decided.outcome, f"online {experiment.policy}", decided.summary, rules, metrics, {},
                    "champion", None, None, context=context)


def _record(config: Config, decided: OnlineDecision) -> tuple[Path, list[str]]:
    """decision.json + .md under <project>/decisions (as ftops.decide.record writes them),
    then the version's decision tag; MLflow down costs the tag (said in `unfinished`), never
    the record."""
    folder = config.resolved().project.dir / "decisions" / datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    decided.decision.write(folder)
    version = decided.experiment.version
    try:
        registry.tag_decision(config, version, decided.outcome, decided.summary)
    except Exception as exc:  # noqa: BLE001 - bookkeeping in MLflow: the record is written
        message = (f"the decision tag of v{version} was not written ({type(exc).__name__}: {exc}); the record "
                   f"is in {folder}")
        log.warning("%s", message)
        return folder, [message]
    return folder, []
