"""The online experiment's record: `<project>/triton/experiment.json` while it runs (policy,
share, challenger, champion, started_at; the gateway routes by it, ftops.serve.traffic.
LivePolicy), `<project>/experiments/<id>.json` once it ended, and a tag on its registry
version. What starting, deciding and stopping share.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ftops import names, registry
from ftops.config import Config
from ftops.errors import FtopsError
from ftops.evaluate.record import Decision
from ftops.serve import traffic
from ftops.serve.deploy import DeployResult, Route

log = logging.getLogger("ftops.online")

AB, SHADOW = "ab", "shadow"
PROMOTE, REJECT, WAIT, STOPPED = "promote", "reject", "wait", "stopped"
POLICY_OF_PROMOTION = {"online_ab": AB, "shadow": SHADOW}  # gates.promotion -> experiment policy
TAG_EXPERIMENT = names.TAG_ONLINE_EXPERIMENT
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


def experiment_file(config: Config) -> Path:
    return traffic.experiment_file(config)


def history_dir(config: Config) -> Path:
    return config.resolved().project.dir / "experiments"


def current(config: Config) -> Experiment | None:
    """The running experiment, or None."""
    record = traffic.read_experiment(experiment_file(config))
    return None if record is None else Experiment(**record)


def now() -> str:
    return datetime.now(UTC).isoformat()


def history(config: Config) -> list[Experiment]:
    """Ended experiments, newest first."""
    found = [Experiment(**json.loads(p.read_text())) for p in history_dir(config).glob("*.json")]
    return sorted(found, key=lambda e: e.ended_at or "", reverse=True)


def tag_version(config: Config, experiment: Experiment, text: str) -> list[str]:
    """The experiment on its registry version; MLflow down costs the tag (logged), never the step."""
    try:
        registry.client(config).set_model_version_tag(registry.model_name(config), experiment.version,
                                                      TAG_EXPERIMENT, f"{experiment.id} {text}"[:5000])
    except Exception as exc:  # noqa: BLE001 - bookkeeping: the experiment itself is the record file
        message = f"the registry tag {TAG_EXPERIMENT} of v{experiment.version} was not written ({exc})"
        log.warning("%s", message)
        return [message]
    return []
