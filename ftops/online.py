"""Online A/B and shadow experiments: a registry version staged beside the champion, live
traffic split to it (`ab`) or mirrored to it (`shadow`), and a decision from the answers
that got feedback. `ftops ab start / report / decide / stop` are thin wiring over these
functions, and so are the flows (`gates.promotion: online_ab | shadow`).

start: the version's export (the newest verified export of it under <project>/exports,
else a new one behind the parity gate) is staged as the challenger behind the smoke gate
(ftops.serve.deploy.stage); then the experiment record, `<project>/triton/experiment.json`
(policy, share, challenger, champion, started_at), tells the gateway how to route
(ftops.serve.traffic.LivePolicy re-reads it like routing.json). A running gateway that does
not take the policy up within a few refreshes is restarted with it.

decide: the rows logged since the experiment started, of its two models. Fewer than
`gates.online_min_feedback` rows with feedback on an arm is `wait` (with how many more);
else the online figures (ftops.serve.traffic.ab_report: unpaired for ab, paired for shadow)
are held to config.gates like the offline A/B: the macro-F1 gain must reach min_effect,
and the accuracy test and the macro-F1 CI must both favour the challenger at alpha. A win
is promoted through the serving gates (deploy: smoke + P99) and gets its drift reference;
the decision is written like the offline one (<project>/decisions/<stamp>/decision.json +
.md, the version's decision tag) and the experiment ends, recorded under
<project>/experiments/.

Everything that moves routes or the record holds the promotion lock (ftops.lock).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from ftops import atomic, data, predlog, registry, tracking
from ftops.config import Config
from ftops.errors import FtopsError
from ftops.evaluate import Decision, Rule
from ftops.lock import promotion_lock
from ftops.serve import deploy, traffic
from ftops.serve.deploy import DeployResult, Route
from ftops.serve.repository import Deployable, ServingError

log = logging.getLogger(__name__)

AB, SHADOW = "ab", "shadow"
PROMOTE, REJECT, WAIT, STOPPED = "promote", "reject", "wait", "stopped"
POLICY_OF_PROMOTION = {"online_ab": AB, "shadow": SHADOW}  # gates.promotion -> experiment policy
TAG_EXPERIMENT = "ftops.online_experiment"
GATE_TEXTS = 200  # logged texts the smoke and load gates use when there is no data snapshot
ARM = {AB: "challenger", SHADOW: "shadow"}  # the challenger's arm in the ab_report section
COUNTED = {"champion": "on the champion", "challenger": "on the challenger", "paired": "requests with both answers"}


class OnlineError(FtopsError):
    pass


@dataclass
class Experiment:
    id: str
    version: str
    policy: str  # ab | shadow
    share: float | None  # ab: share of users (or requests) sent to the challenger
    tag: str  # the challenger's deployment tag and Triton ensemble
    challenger: str
    export: str
    champion_tag: str  # what the challenger is compared with: the champion when it started
    champion: str
    champion_version: str | None
    snapshot: str | None  # the data snapshot whose test texts the gates use (None: logged texts)
    started_at: str
    ended_at: str | None = None
    outcome: str | None = None  # promote | reject | stopped, once it ended
    reason: str | None = None

    @property
    def since(self) -> datetime:
        return datetime.fromisoformat(self.started_at)

    def describe(self) -> str:
        how = f"ab, {self.share:.0%} to the challenger" if self.policy == AB else "shadow"
        return (f"v{self.version} ({how}) since {self.started_at[:19]} UTC against the champion "
                f"{self.champion_tag}")


@dataclass
class Started:
    experiment: Experiment
    route: Route
    gateway: str  # how the gateway took the policy up, in words


@dataclass
class OnlineDecision:
    outcome: str  # promote | reject | wait
    summary: str
    experiment: Experiment
    feedback: dict[str, int]  # rows with feedback per arm (feedback_counts)
    needed: dict[str, int]  # more of them per arm before a decision (all 0 once decided)
    figures: dict | None  # the policy's ab_report section: arms and test
    decision: Decision | None = None  # the record, when decided
    deploy: DeployResult | None = None  # the serving gates, when the figures said promote
    folder: Path | None = None  # where the record was written (apply=True)
    unfinished: list[str] = field(default_factory=list)  # bookkeeping MLflow did not take


# ---------------------------------------------------------------- the record


def experiment_file(config: Config) -> Path:
    return traffic.experiment_file(config)


def history_dir(config: Config) -> Path:
    return config.resolved().project.dir / "experiments"


def current(config: Config) -> Experiment | None:
    """The running experiment, or None."""
    record = traffic.read_experiment(experiment_file(config))
    return None if record is None else Experiment(**record)


def _now() -> str:
    return datetime.now(UTC).isoformat()


# ---------------------------------------------------------------- start


def start(config: Config, version: str, policy: str = AB, share: float | None = None,
          snapshot_id: str | None = None, progress: Callable[[str], None] | None = None) -> Started:
    """Stage registry `version` as the challenger (export + smoke gates) and route live
    traffic to it: `ab` sends `share` (default serving.ab_share) of users, `shadow` a copy
    of every request. The export may take minutes; it runs before the lock is taken."""
    version = str(version).removeprefix("v")
    share = _check_share(config, policy, share)
    _refuse_second(config)  # before an export that may take minutes; again under the lock
    registry.get(config, version)  # an unknown version fails here, with the registry's name
    snapshot = _snapshot(config, version, snapshot_id)
    export_dir = export_for(config, version, snapshot, progress)
    texts = gate_texts(config, snapshot)
    with promotion_lock(config, f"ab start v{version}"):
        champion = _check_start_routes(config, version, export_dir)
        started_at = _now()
        route = deploy.stage(config, export_dir, texts, version=version)
        experiment = Experiment(f"v{version}-{datetime.now(UTC):%Y%m%d-%H%M%S}", version, policy, share, route.tag,
                                route.ensemble, str(export_dir), champion.tag, champion.ensemble,
                                champion.version, snapshot.id if snapshot else None, started_at)
        atomic.write_text(experiment_file(config), json.dumps(asdict(experiment), indent=2))
        _tag(config, experiment, f"running: {experiment.describe()}")
        return Started(experiment, route, follow_gateway(config, experiment))


def _check_share(config: Config, policy: str, share: float | None) -> float | None:
    if policy not in (AB, SHADOW):
        raise OnlineError(f"Unknown experiment policy {policy!r}: use {AB} (a share of users to the challenger) "
                          f"or {SHADOW} (the challenger sees a copy of every request).")
    if policy == SHADOW:
        return None
    share = config.serving.ab_share if share is None else float(share)
    if not 0 < share <= 1:
        raise OnlineError(f"--share {share} sends no traffic to the challenger: give a share in (0, 1].")
    return share


def _check_start_routes(config: Config, version: str, export_dir: Path) -> Route:
    """The champion the experiment compares with; refuses a second experiment, the
    champion as its own challenger and a challenger with other labels."""
    _refuse_second(config)
    champion = deploy.routing(config).get("champion")
    if champion is None:
        raise OnlineError("Nothing is deployed: an online experiment needs a champion to compare with. Deploy "
                          "one first: `ftops deploy --export <export folder> --version <version>`.")
    if champion.version == version:
        raise OnlineError(f"v{version} is the champion ({champion.ensemble}); it cannot be its own challenger.")
    labels = Deployable.from_export(export_dir).labels
    served = Path(champion.export) / "labels.json"
    if served.is_file() and json.loads(served.read_text()) != labels:
        raise OnlineError(f"v{version} predicts the labels {labels} but the champion {champion.tag} predicts "
                          f"{json.loads(served.read_text())}: their answers cannot be compared on the same feedback.")
    return champion


def _refuse_second(config: Config) -> None:
    running = current(config)
    if running is not None:
        raise OnlineError(f"An experiment runs already: {running.describe()}. End it first with "
                          "`ftops ab decide` or `ftops ab stop`.")


def _snapshot(config: Config, version: str, snapshot_id: str | None):
    """The given snapshot, else the version's own (its ftops.data_snapshot tag), else the
    latest; None when the project has none."""
    root = data.snapshot_root(config)
    if snapshot_id is not None:
        return data.load_snapshot(root, snapshot_id)
    tagged = registry.get(config, version).tags.get(tracking.TAG_SNAPSHOT)
    for candidate in ([tagged] if tagged else []) + [None]:
        try:
            return data.load_snapshot(root, candidate)
        except FtopsError:
            continue
    return None


def find_export(config: Config, version: str) -> Path | None:
    """The newest export of `version` under <project>/exports whose selected variant passed
    the parity gate and whose served files still match its manifest."""
    root = config.resolved().project.dir / "exports"
    manifests = [p for p in root.glob("*/export.json") if not p.parent.name.startswith(".")]
    for manifest in sorted(manifests, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            record = json.loads(manifest.read_text())
            if str((record.get("source") or {}).get("registry_version")) != version or not record.get("selected"):
                continue
            Deployable.from_export(manifest.parent)
            return manifest.parent
        except (OSError, ValueError, KeyError, ServingError) as exc:
            log.warning("export %s of v%s is not usable: %s", manifest.parent, version, exc)
    return None


def export_for(config: Config, version: str, snapshot=None, progress: Callable[[str], None] | None = None) -> Path:
    """An existing verified export of the version, else a new one (ftops.export), which
    must select a variant (the parity gate)."""
    from ftops import export

    found = find_export(config, version)
    if found is not None:
        return found
    if snapshot is None:
        raise OnlineError(f"No verified export of v{version} under {config.resolved().project.dir / 'exports'}, and "
                          "no data snapshot to export it with: run `ftops data prepare`, or export it first with "
                          f"`ftops export --model {version}`.")
    result = export.export_version(config, version, snapshot, progress=progress)
    if result.selected is None:
        raise OnlineError(f"The export of v{version} ({result.out_dir}) has no variant that passed the parity gate "
                          f"({result.selection_reason}); nothing was staged.")
    return result.out_dir


def gate_texts(config: Config, snapshot=None) -> list[str]:
    """Texts for the smoke and load gates: the snapshot's test split, else recent traffic."""
    if snapshot is not None:
        return list(snapshot.split("test")["text"])
    cfg = config.resolved()
    eng = predlog.engine(cfg.uris.prediction_log, cfg.timeouts.database_s)
    try:
        frame = predlog.read(eng, last=GATE_TEXTS, routes=("champion",), columns=("text",))
    finally:
        eng.dispose()
    texts = [t for t in frame["text"] if isinstance(t, str)] if len(frame) else []
    if not texts:
        raise OnlineError(f"No texts to gate the challenger with: no data snapshot under {data.snapshot_root(cfg)} "
                          "and no logged traffic with text. Run `ftops data prepare`, or pass --snapshot.")
    return texts


# ---------------------------------------------------------------- the gateway


def follow_gateway(config: Config, experiment: Experiment | None) -> str:
    """Make the running gateway route by the experiment (None: by serving.traffic). A gateway
    that re-reads the record takes it up within a refresh; one that does not is restarted
    with the policy in its config (the restart refuses requests for a moment)."""
    from ftops.serve import gateway

    info = gateway.status(config)
    wanted = _policy(config, experiment).describe()
    if info is None:
        return f"the gateway is not running: start it with `{_gateway_up(experiment)}`"
    if _serves(info.url, wanted, max(1.0, 3 * config.serving.route_refresh_s)):
        return f"the gateway routes by it ({wanted})"
    _restart_gateway(config, experiment)
    info = gateway.status(config)
    if info is None or not _serves(info.url, wanted, config.serving.ready_timeout_s):
        raise OnlineError(f"The gateway did not take up the policy '{wanted}' even after a restart; see its log "
                          f"({gateway.state_dir(config) / 'gateway.log'}) and `ftops gateway status`. The "
                          "experiment is recorded and its challenger staged: `ftops ab stop` ends it.")
    return f"the gateway was restarted with the policy {wanted}"


def _gateway_up(experiment: Experiment | None) -> str:
    """The command that starts a gateway routing by the experiment, also one that does not read its record."""
    if experiment is None:
        return "ftops gateway up"
    share = f" --ab-share {experiment.share:g}" if experiment.share is not None else ""
    return f"ftops gateway up --traffic {experiment.policy}{share}"


def _policy(config: Config, experiment: Experiment | None) -> traffic.Policy:
    record = None if experiment is None else asdict(experiment)
    return traffic.experiment_policy(record, config.serving, config.project.name)


def _serves(url: str, wanted: str, within_s: float) -> bool:
    from ftops.serve import gateway

    deadline = time.monotonic() + within_s
    while True:
        answer = gateway.probe(url)
        if answer is not None and answer[1].get("policy") == wanted:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def _restart_gateway(config: Config, experiment: Experiment | None) -> None:
    from ftops import services

    cfg = config.model_copy(deep=True)
    if experiment is not None:
        cfg.serving.traffic = experiment.policy
        if experiment.share is not None:
            cfg.serving.ab_share = experiment.share
    log.warning("the gateway does not follow %s: restarting it with the policy %s", experiment_file(config),
                _policy(config, experiment).describe())
    services.stop_process(cfg, "gateway")
    services.start_one(cfg, "gateway")


# ---------------------------------------------------------------- stop


def stop(config: Config, reason: str = "stopped by hand", outcome: str = STOPPED) -> Experiment | None:
    """End the running experiment: the challenger route goes (traffic returns to the
    champion within a refresh), the gateway goes back to serving.traffic, and the experiment
    is recorded with why. None when none ran."""
    with promotion_lock(config, "ab stop"):
        experiment = current(config)
        if experiment is None:
            return None
        challenger = deploy.routing(config).get("challenger")
        if challenger is not None and challenger.tag == experiment.tag:
            deploy.unstage(config)
        ended = replace(experiment, ended_at=_now(), outcome=outcome, reason=reason)
        atomic.write_text(history_dir(config) / f"{ended.id}.json", json.dumps(asdict(ended), indent=2))
        experiment_file(config).unlink(missing_ok=True)
        _tag(config, ended, f"{outcome}: {reason}")
        _back_to_config(config)
    return ended


def _back_to_config(config: Config) -> None:
    """The configured policy again, so a challenger staged later is not split to by the
    experiment's; without a challenger either one sends everything to the champion, so a
    gateway that does not come back costs nothing now (logged)."""
    try:
        follow_gateway(config, None)
    except Exception as exc:  # noqa: BLE001 - the experiment has ended either way
        log.warning("the gateway did not go back to serving.traffic after the experiment: %s", exc)


def history(config: Config) -> list[Experiment]:
    """Ended experiments, newest first."""
    found = [Experiment(**json.loads(p.read_text())) for p in history_dir(config).glob("*.json")]
    return sorted(found, key=lambda e: e.ended_at or "", reverse=True)


def _tag(config: Config, experiment: Experiment, text: str) -> list[str]:
    """The experiment on its registry version; MLflow down costs the tag (logged), never the step."""
    try:
        registry.client(config).set_model_version_tag(registry.model_name(config), experiment.version,
                                                      TAG_EXPERIMENT, f"{experiment.id} {text}"[:5000])
    except Exception as exc:  # noqa: BLE001 - bookkeeping: the experiment itself is the record file
        message = f"the registry tag {TAG_EXPERIMENT} of v{experiment.version} was not written ({exc})"
        log.warning("%s", message)
        return [message]
    return []


# ---------------------------------------------------------------- figures


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
        return {arm: int((clean["route"] == arm).sum()) for arm in ("champion", "challenger")}
    mirrored = set(frame.loc[frame["route"] == "shadow", "request_id"])  # logged after the label, maybe
    pairs = int(((labelled["route"] == "champion") & labelled["request_id"].isin(mirrored)).sum())
    return {"paired": pairs}


# ---------------------------------------------------------------- decide


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
    champion, challenger = routes.get("champion"), routes.get("challenger")
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
        snapshot = _snapshot(config, experiment.version, experiment.snapshot) if experiment.snapshot else None
        texts = gate_texts(config, snapshot)
    return deploy.deploy(config, Path(experiment.export), texts, version=experiment.version)


def _drift_reference(config: Config, version: str) -> list[str]:
    """The new champion's drift reference, as the lifecycle's deploy step saves it; what
    could not be done, for `ftops reconcile` (it serves either way)."""
    from ftops import monitor

    snapshot_id = registry.get(config, version).tags.get(tracking.TAG_SNAPSHOT)
    if not snapshot_id:
        return [f"v{version} has no {tracking.TAG_SNAPSHOT} tag naming its data: no drift reference was built, "
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
