"""What serves: `<project>/triton/routing.json` names the ensemble of each role (champion,
previous, challenger); the gateway and `ftops predict` read it. It is the truth: the
registry aliases follow it (moved after the route switch; a move MLflow interrupts is
finished by `ftops reconcile`, ftops.reconcile).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ftops import atomic, registry
from ftops.config import Config
from ftops.names import CHALLENGER, CHAMPION, PREVIOUS, ROLES
from ftops.serve import runtime
from ftops.serve.runtime import ServingError

log = logging.getLogger("ftops.serve.deploy")


@dataclass
class Route:
    tag: str
    ensemble: str
    version: str | None
    export: str
    variant: str
    deployed_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


def routing_file(config: Config) -> Path:
    return runtime.get(config).state_dir() / "routing.json"


def routing(config: Config) -> dict[str, Route]:
    path = routing_file(config)
    if not path.is_file():
        return {}
    return {k: Route(**v) for k, v in json.loads(path.read_text()).items()}


def save_routing(config: Config, routes: dict[str, Route]) -> None:
    """Readers never see a half-written file; call it under the promotion lock."""
    atomic.write_text(routing_file(config), json.dumps({k: asdict(v) for k, v in routes.items()}, indent=2))


def wanted_aliases(routes: dict[str, Route]) -> dict[str, str]:
    """The registry aliases the routes call for: each routed role that serves a registry
    version (an export deployed without --version names none)."""
    return {role: str(route.version) for role, route in routes.items()
            if role in ROLES and route.version is not None}


def champion_model(config: Config) -> str:
    route = routing(config).get(CHAMPION)
    if route is None:
        raise ServingError("Nothing is deployed yet: no champion route. Run "
                           "`ftops deploy --export <export folder>` (from `ftops export`).")
    return route.ensemble


def switch(config: Config, route: Route) -> dict[str, Route]:
    """Route the champion to `route`: the former champion becomes previous, and a challenger
    of the same tag stops being one. The one write that decides what serves."""
    routes = routing(config)
    champion = routes.get(CHAMPION)
    if champion is not None and champion.tag != route.tag:
        routes[PREVIOUS] = champion
    routes[CHAMPION] = route
    if routes.get(CHALLENGER) is not None and routes[CHALLENGER].tag == route.tag:
        del routes[CHALLENGER]
    save_routing(config, routes)
    return routes


def follow(config: Config) -> list[str]:
    """Move the registry aliases to what the routes serve; what could not be done (MLflow
    down, a version it does not know), for `ftops reconcile` to finish. Never raises: the
    route has switched already, and serving is the truth."""
    wanted = wanted_aliases(routing(config))
    if not wanted:
        return []
    try:
        moved = registry.align(config, wanted)
    except Exception as exc:  # noqa: BLE001 - any store failure leaves the same thing to finish
        message = (f"the registry aliases did not follow the route ({type(exc).__name__}: {first_line(exc)}); "
                   "run `ftops reconcile` once MLflow answers")
        log.warning("%s: %s", config.project.name, message)
        return [message]
    for line in moved:
        log.info("%s: %s", config.project.name, line)
    return []


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def best_effort(call, config: Config, *args) -> None:
    try:
        call(config, *args)
    except Exception as exc:  # noqa: BLE001 - bookkeeping in MLflow: never fails a promotion
        log.warning("%s: %s failed (%s: %s)", config.project.name, call.__name__.strip("_").replace("_", " "),
                    type(exc).__name__, first_line(exc))


def redeploy_hint(route: Route) -> str:
    version = f" --version {route.version}" if route.version else ""
    return (f"Deploy that version again: `ftops deploy --export {route.export}{version}` "
            "(re-export it first if its export fails the check too).")
