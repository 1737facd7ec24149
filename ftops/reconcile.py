"""Bring the registry and the drift reference back in line with what serves.

Routing (routing.json: what Triton serves) is the truth. A promotion switches the route
first and moves the registry aliases after it; the monitor's reference of the new champion
is built last (the lifecycle's export-and-deploy step). MLflow failing in between leaves
the aliases or the reference behind the route, never the route behind them, and this
finishes the job:

- the registry aliases champion / previous / challenger are moved to the versions the
  champion / previous / challenger routes serve (a route of an export deployed without a
  version names none and leaves its alias alone; with no challenger route the challenger
  alias is left alone, since the A/B decision names a candidate challenger before it is
  ever staged); no other ftops alias stays on a version that holds one of those roles;
- the champion version's training run gets its monitor reference if it lacks one, built
  from the snapshot its `ftops.data_snapshot` tag names;
- routing.json missing while the registry names a champion whose copy in the Triton
  repository still matches its sha256 record: the champion (and previous) routes are
  rebuilt from it, so serving comes back without a redeploy; a copy that is missing or
  differs is reported, never served.

Cheap when everything agrees: a health probe, one registry read, one read per routed
version and one artifact listing; nothing is downloaded. MLflow not answering is reported
and nothing is changed; every step is idempotent, so one interrupted half-way is finished
by the next call. It holds the promotion lock, but waits for it only briefly: a promotion
under way moves the registry itself.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from ftops import registry, tracking
from ftops.config import Config
from ftops.lock import LockError, promotion_lock
from ftops.serve import deploy
from ftops.serve.triton import repository, server
from ftops.serve.deploy import Route
from ftops.serve.triton.models import ModelNames

log = logging.getLogger(__name__)

LOCK_WAIT_S = 5.0


@dataclass
class Reconciled:
    changes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def agreed(self) -> bool:
        return not self.changes and not self.problems

    def as_dict(self) -> dict:
        return {"changes": self.changes, "problems": self.problems, "dry_run": self.dry_run}

    def lines(self) -> list[str]:
        if self.agreed:
            return ["serving, registry and drift reference agree; nothing to do"]
        verb = "would change" if self.dry_run else "changed"
        return [f"{verb}: {c}" for c in self.changes] + [f"problem: {p}" for p in self.problems]


def reconcile(config: Config, dry_run: bool = False, wait_s: float = LOCK_WAIT_S) -> Reconciled:
    """Make the registry aliases and the champion's drift reference follow routing.json;
    dry_run only says what it would change."""
    out = Reconciled(dry_run=dry_run)
    down = tracking.unreachable(config)
    if down:
        out.problems.append(f"MLflow does not answer ({down}); nothing was changed. Run `ftops reconcile` "
                            "once it is back.")
        return out
    if dry_run:
        _reconcile(config, out)
        return out
    try:
        with promotion_lock(config, "reconcile", wait_s=wait_s):
            _reconcile(config, out)
    except LockError as exc:
        out.problems.append(f"not reconciled now: {exc}")
    for line in out.lines():
        log.info("reconcile %s: %s", config.project.name, line)
    return out


def _reconcile(config: Config, out: Reconciled) -> None:
    try:
        routes = deploy.routing(config)
    except (OSError, ValueError, TypeError) as exc:
        out.problems.append(f"{deploy.routing_file(config)} cannot be read ({exc}); nothing was changed. "
                            "Fix or remove it, then deploy again.")
        return
    try:
        current = registry.aliases(config)
        rebuilt = {} if routes else _rebuild(config, current, out)
        routes = routes or rebuilt
        if not routes:
            return
        _unversioned_champion(routes, current, out)
        wanted, champion = _wanted(config, routes, out)
    except Exception as exc:  # noqa: BLE001 - MLflow failing while read: nothing was written yet
        out.problems.append(f"reading the registry failed ({type(exc).__name__}: {_first_line(exc)}); nothing was "
                            "changed. Run `ftops reconcile` once MLflow answers.")
        return
    _apply(config, rebuilt, wanted, champion, out)


def _apply(config: Config, rebuilt: dict[str, Route], wanted: dict[str, str], champion, out: Reconciled) -> None:
    """The writes: a rebuilt route first (it is what the aliases follow), then the aliases,
    then the reference; a failure stops there, and the next call finishes it."""
    try:
        if rebuilt and not out.dry_run:
            deploy.save_routing(config, rebuilt)
            _load(config, out)
        out.changes += registry.align(config, wanted, dry_run=out.dry_run)
    except Exception as exc:  # noqa: BLE001 - the step and what failed, for the next run
        out.problems.append(f"stopped half-way ({type(exc).__name__}: {_first_line(exc)}); what is listed as "
                            "changed was done. Run `ftops reconcile` again to finish.")
        return
    if champion is not None:
        _reference(config, champion, out)


def _unversioned_champion(routes: dict[str, Route], current: dict[str, str], out: Reconciled) -> None:
    champion = routes.get("champion")
    if champion is not None and champion.version is None and registry.CHAMPION in current:
        out.problems.append(f"the champion route serves {champion.ensemble}, an export deployed without a registry "
                            f"version, while the registry's champion is v{current[registry.CHAMPION]}; deploy with "
                            "--version to bring them together")


def _wanted(config: Config, routes: dict[str, Route], out: Reconciled):
    """The aliases the routes call for, of versions the registry has; and the champion's."""
    wanted, champion = {}, None
    for role, version in deploy.wanted_aliases(routes).items():
        found = registry.lookup(config, version)
        if found is None:
            out.problems.append(f"the {role} route serves v{version}, which the registry of "
                                f"'{registry.model_name(config)}' does not have; its alias is left as it is")
            continue
        wanted[role] = version
        champion = found if role == registry.CHAMPION else champion
    return wanted, champion


# ---------------------------------------------------------------- routing.json lost


def _rebuild(config: Config, current: dict[str, str], out: Reconciled) -> dict[str, Route]:
    """Routes for the registry's champion (and previous) from their verified repository
    copies; {} when there is no champion, or its copy is missing or differs (reported)."""
    if registry.CHAMPION not in current:
        return {}  # nothing promoted yet: nothing to follow
    repo = _repository(config)
    routes = {}
    for role in (registry.CHAMPION, registry.PREVIOUS):
        version = current.get(role)
        if version is None:
            continue
        names = ModelNames.for_tag(config.project.name, f"v{version}")
        problems = repository.version_problems(repo, names)
        if problems:
            if role == registry.CHAMPION:
                out.problems.append(
                    f"routing.json is missing and the registry champion v{version} cannot be served from the model "
                    f"repository ({'; '.join(problems)}); nothing was routed. Deploy it again: `ftops deploy --export "
                    f"<its export folder> --version {version}`.")
                return {}
            continue
        routes[role] = Route(f"v{version}", names.ensemble, version, _export_of(config, version),
                             _variant(repo, names))
        out.changes.append(f"route {role}: rebuilt as {names.ensemble} (registry {role} v{version}, its repository "
                           "copy matches its record)")
    return routes


def _repository(config: Config) -> Path:
    info = server.status(config)
    return Path(info.repository) if info is not None else server.repository_dir(config)


def _export_of(config: Config, version: str) -> str:
    """The newest export folder of a version (`<project>/exports/v<N>-<stamp>`), or ""."""
    root = config.resolved().project.dir / "exports"
    found = sorted(root.glob(f"v{version}-*/export.json")) if root.is_dir() else []
    return str(found[-1].parent) if found else ""


def _variant(repo: Path, names: ModelNames) -> str:
    try:
        text = (repo / names.classifier / "config.pbtxt").read_text()
    except OSError:
        return "unknown"
    match = re.search(r'key: "variant" value: \{ string_value: "([^"]+)"', text)
    return match.group(1) if match else "unknown"


def _load(config: Config, out: Reconciled) -> None:
    """Serve the rebuilt routes now if Triton runs (else `ftops serve up` loads them)."""
    if server.status(config) is None:
        return
    try:
        deploy.reload_routes(config)
    except Exception as exc:  # noqa: BLE001 - reported; the route file is right either way
        out.problems.append(f"the rebuilt routes did not load ({_first_line(exc)}); see `ftops serve status`")


# ---------------------------------------------------------------- the drift reference


def _reference(config: Config, champion: registry.Version, out: Reconciled) -> None:
    """The champion's monitor reference on its training run, built if absent."""
    from ftops import data, monitor

    try:
        if _has_reference(config, champion.run_id):
            return
        snapshot_id = champion.tags.get(tracking.TAG_SNAPSHOT)
        if not snapshot_id:
            out.problems.append(f"the champion v{champion.version} has no drift reference and no "
                                f"{tracking.TAG_SNAPSHOT} tag naming the data to build one from; drift checks have "
                                "nothing to compare with. Log one with ftops.monitor.save_champion_reference.")
            return
        if not out.dry_run:
            monitor.save_champion_reference(config, champion.version,
                                            data.load_snapshot(data.snapshot_root(config), snapshot_id))
    except Exception as exc:  # noqa: BLE001 - reported; the next call tries again
        out.problems.append(f"the drift reference of the champion v{champion.version} is missing and could not be "
                            f"built ({type(exc).__name__}: {_first_line(exc)}). Run `ftops reconcile` again once "
                            "that is fixed.")
        return
    out.changes.append(f"drift reference of v{champion.version}: built from snapshot {snapshot_id}")


def _has_reference(config: Config, run_id: str) -> bool:
    from ftops import monitor

    listed = registry.client(config).list_artifacts(run_id, monitor.REFERENCE_DIR)
    return any(Path(item.path).name == monitor.REFERENCE_FILE for item in listed)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]
