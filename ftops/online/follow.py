"""The gateway follows the running experiment: one that re-reads the record takes the
policy up within a refresh; one that does not is restarted with the policy in its config.
"""

from __future__ import annotations

import time
from dataclasses import asdict

from ftops.config import Config
from ftops.online.experiment import Experiment, OnlineError, experiment_file, log
from ftops.serve import traffic


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
