"""Starting and stopping an online experiment. start: the version's export (the newest
verified export of it under <project>/exports, else a new one behind the parity gate) is
staged as the challenger behind the smoke gate (ftops.serve.deploy.stage); then the record
tells the gateway how to route. stop: the challenger route goes, the gateway goes back to
serving.traffic and the experiment is recorded with why. Both hold the promotion lock.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

from ftops import atomic, data, names, predlog, registry
from ftops.config import Config
from ftops.errors import FtopsError
from ftops.lock import promotion_lock
from ftops.online.experiment import (AB, GATE_TEXTS, SHADOW, STOPPED, Experiment, OnlineError, Started, current,
                                     experiment_file, history_dir, log, now, tag_version)
from ftops.online.follow import follow_gateway
from ftops.serve import deploy
from ftops.serve.deploy import Route
from ftops.serve.deployable import Deployable
from ftops.serve.runtime import ServingError


def start(config: Config, version: str, policy: str = AB, share: float | None = None,
          snapshot_id: str | None = None, progress: Callable[[str], None] | None = None) -> Started:
    """Stage registry `version` as the challenger (export + smoke gates) and route live
    traffic to it: `ab` sends `share` (default serving.ab_share) of users, `shadow` a copy
    of every request. The export may take minutes; it runs before the lock is taken."""
    version = str(version).removeprefix("v")
    share = _check_share(config, policy, share)
    refuse_second(config)  # before an export that may take minutes; again under the lock
    registry.get(config, version)  # an unknown version fails here, with the registry's name
    snapshot = snapshot_for(config, version, snapshot_id)
    export_dir = export_for(config, version, snapshot, progress)
    texts = gate_texts(config, snapshot)
    with promotion_lock(config, f"ab start v{version}"):
        champion = _check_start_routes(config, version, export_dir)
        started_at = now()
        route = deploy.stage(config, export_dir, texts, version=version)
        experiment = Experiment(f"v{version}-{datetime.now(UTC):%Y%m%d-%H%M%S}", version, policy, share, route.tag,
                                route.ensemble, str(export_dir), champion.tag, champion.ensemble,
                                champion.version, snapshot.id if snapshot else None, started_at)
        atomic.write_text(experiment_file(config), json.dumps(asdict(experiment), indent=2))
        tag_version(config, experiment, f"running: {experiment.describe()}")
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
    refuse_second(config)
    champion = deploy.routing(config).get(names.CHAMPION)
    if champion is None:
        raise OnlineError("Nothing is deployed: an online experiment needs a champion to compare with. Deploy "
                          "one first: `ftops deploy --export <export folder> --version <version>`.")
    if champion.version == version:
        raise OnlineError(f"v{version} is the champion ({champion.ensemble}); it cannot be its own challenger.")
    labels = Deployable.from_export(export_dir).labels
    served = Path(champion.export) / names.LABELS_FILE
    if served.is_file() and json.loads(served.read_text()) != labels:
        raise OnlineError(f"v{version} predicts the labels {labels} but the champion {champion.tag} predicts "
                          f"{json.loads(served.read_text())}: their answers cannot be compared on the same feedback.")
    return champion


def refuse_second(config: Config) -> None:
    running = current(config)
    if running is not None:
        raise OnlineError(f"An experiment runs already: {running.describe()}. End it first with "
                          "`ftops ab decide` or `ftops ab stop`.")


def snapshot_for(config: Config, version: str, snapshot_id: str | None):
    """The given snapshot, else the version's own (its ftops.data_snapshot tag), else the
    latest; None when the project has none."""
    root = data.snapshot_root(config)
    if snapshot_id is not None:
        return data.load_snapshot(root, snapshot_id)
    tagged = registry.get(config, version).tags.get(names.TAG_SNAPSHOT)
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
    manifests = [p for p in root.glob(f"*/{names.MANIFEST_FILE}") if not p.parent.name.startswith(".")]
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
        frame = predlog.read(eng, last=GATE_TEXTS, routes=(names.CHAMPION,), columns=("text",))
    finally:
        eng.dispose()
    texts = [t for t in frame["text"] if isinstance(t, str)] if len(frame) else []
    if not texts:
        raise OnlineError(f"No texts to gate the challenger with: no data snapshot under {data.snapshot_root(cfg)} "
                          "and no logged traffic with text. Run `ftops data prepare`, or pass --snapshot.")
    return texts


def stop(config: Config, reason: str = "stopped by hand", outcome: str = STOPPED) -> Experiment | None:
    """End the running experiment: the challenger route goes (traffic returns to the
    champion within a refresh), the gateway goes back to serving.traffic, and the experiment
    is recorded with why. None when none ran."""
    with promotion_lock(config, "ab stop"):
        experiment = current(config)
        if experiment is None:
            return None
        challenger = deploy.routing(config).get(names.CHALLENGER)
        if challenger is not None and challenger.tag == experiment.tag:
            deploy.unstage(config)
        ended = replace(experiment, ended_at=now(), outcome=outcome, reason=reason)
        atomic.write_text(history_dir(config) / f"{ended.id}.json", json.dumps(asdict(ended), indent=2))
        experiment_file(config).unlink(missing_ok=True)
        tag_version(config, ended, f"{outcome}: {reason}")
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
