"""The deployments users see in the Prefect UI, served by one long-running process:

- `lifecycle/lifecycle`: the quarterly cron AND a trigger on `ftops.drift.detected` for
  this project's model; one run at a time.
- `monitor_drift/monitor`: a drift check every few minutes.

Run with `python -m flows.deployments --config <yaml>` (what `ftops up` starts). In the team
set-up (infra/) the same deployments are registered on a work pool instead, and a Prefect
worker runs them: `python -m flows.deployments --config <yaml> --work-pool <pool> [--image
<ftops image>]` (process pool: no image; Kubernetes pool: the image its jobs run).
"""

from __future__ import annotations

import argparse
from datetime import timedelta

from prefect import deploy, serve
from prefect.deployments.runner import EntrypointType
from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron, Interval

from flows.lifecycle import config_path_of, lifecycle, monitor_drift
from ftops import names
from ftops.config import Config, load_config

DRIFT_EVENT = names.EVENT_DRIFT


def resource_id(config: Config) -> str:
    return names.model_resource(config.project.name)


def drift_trigger(config: Config, config_path: str | None) -> DeploymentEventTrigger:
    return DeploymentEventTrigger(
        name=f"retrain {config.project.name} on drift",
        expect={DRIFT_EVENT},
        match={"prefect.resource.id": resource_id(config)},
        parameters={"config_path": config_path, "reason": "drift"},
    )


def build(config_path: str | None, entrypoint_type: EntrypointType = EntrypointType.FILE_PATH) -> list:
    config = load_config(config_path)
    schedules = config.schedules
    lifecycle_deployment = lifecycle.to_deployment(
        name="lifecycle",
        schedules=[Cron(schedules.retrain_cron, timezone=schedules.timezone,
                        parameters={"config_path": config_path, "reason": "schedule"})],
        triggers=[drift_trigger(config, config_path)],
        parameters={"config_path": config_path, "reason": "manual"},
        concurrency_limit=1,
        description="Fine-tune, A/B, export and deploy; quarterly and on drift.",
        tags=["ftops", config.project.name],
        entrypoint_type=entrypoint_type,
    )
    monitor_deployment = monitor_drift.to_deployment(
        name="monitor",
        schedules=[Interval(timedelta(minutes=schedules.monitor_interval_minutes),
                            parameters={"config_path": config_path})],
        parameters={"config_path": config_path},
        concurrency_limit=1,
        description="Evidently drift check of recent traffic; emits ftops.drift.detected.",
        tags=["ftops", config.project.name],
        entrypoint_type=entrypoint_type,
    )
    return [lifecycle_deployment, monitor_deployment]


def register(config_path: str | None, work_pool: str, image: str | None = None) -> list:
    """The same deployments on a work pool (team set-up): a worker of that pool runs them.

    Entrypoints are module paths (`flows.lifecycle.lifecycle`), importable wherever the
    ftops package is installed: the worker's own process, or the image of a container pool.
    """
    return deploy(*build(config_path, EntrypointType.MODULE_PATH), work_pool_name=work_pool, image=image,
                  build=False, push=False, print_next_steps_message=False, ignore_warnings=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the ftops deployments (schedules + drift trigger).")
    parser.add_argument("--config", default=None, help="project YAML")
    parser.add_argument("--work-pool", default=None,
                        help="register the deployments on this work pool and exit (a worker runs them)")
    parser.add_argument("--image", default=None, help="image the work pool's jobs run (container pools)")
    args = parser.parse_args()
    if args.work_pool:
        ids = register(config_path_of(args.config), args.work_pool, args.image)
        print(f"registered {len(ids)} deployments on work pool {args.work_pool!r}")
        return
    serve(*build(config_path_of(args.config)), print_starting_message=True)


if __name__ == "__main__":
    main()
