"""The MLflow model registry: versions, the aliases champion / challenger / previous, and
rollback as one call.

One registered model per project. A version's source is the candidate's `model/` artifact
folder (full weights, or the adapter + base model name); lineage tags are copied from its
training run, and the decision that judged it is attached as tags + artifact.

The aliases follow what serves: routing.json (ftops.serve.deploy) is the truth, deploy and
rollback move the aliases after the route, and `align` (used by them and by
ftops.reconcile) brings them back in line after a move that MLflow interrupted. Every
move made through ftops holds the project's promotion lock (ftops.lock).

Downloads go to `<project dir>/downloads/v<N>/model` (where retention finds them): into a
temp folder beside it first, renamed into place only once complete, with the sha256 of
every file recorded beside it; an existing folder is reused only if it still matches.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ftops import atomic, tracking
from ftops.config import Config
from ftops.errors import FtopsError
from ftops.lock import promotion_lock
from ftops.names import CHAMPION, CHALLENGER, PREVIOUS  # noqa: F401
from ftops.names import ROLES as ALIASES
from ftops.names import TAG_DECISION, TAG_DECISION_SUMMARY, TAG_PREFIX, TAG_ROLLED_BACK  # noqa: F401

DOWNLOADED = "model.sha256.json"  # beside a complete download: its version and file hashes
PARTIAL = ".model.partial-"       # a download under way (or one that died)


class RegistryError(FtopsError):
    pass


@dataclass
class Version:
    name: str
    version: str
    run_id: str
    source: str
    aliases: list[str]
    tags: dict[str, str]
    created: int

    @property
    def ref(self) -> str:
        return f"models:/{self.name}/{self.version}"


def client(config: Config):
    from mlflow import MlflowClient

    tracking.use_project(config)
    return MlflowClient()


def model_name(config: Config) -> str:
    return config.project.name


def _version(mv) -> Version:
    return Version(mv.name, str(mv.version), mv.run_id, mv.source, list(mv.aliases or []),
                   dict(mv.tags or {}), int(mv.creation_timestamp or 0))


def register(config: Config, run_id: str, extra_tags: dict[str, str] | None = None) -> Version:
    """A new version from a candidate run's `model/` artifacts, with the run's lineage tags."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(config)
    name = model_name(config)
    try:
        mlflow_client.get_registered_model(name)
    except MlflowException:
        mlflow_client.create_registered_model(name, description=f"ftops project {name}")
    run = mlflow_client.get_run(run_id)
    tags = {k: v for k, v in run.data.tags.items() if k.startswith(TAG_PREFIX)}
    tags.update(extra_tags or {})
    mv = mlflow_client.create_model_version(name, source=f"{run.info.artifact_uri}/model",
                                            run_id=run_id, tags=tags)
    return _version(mlflow_client.get_model_version(name, mv.version))


def get(config: Config, ref: str) -> Version:
    """A version by alias (champion, challenger, previous) or number (3 or v3)."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(config)
    name = model_name(config)
    try:
        if ref in ALIASES:
            return _version(mlflow_client.get_model_version_by_alias(name, ref))
        return _version(mlflow_client.get_model_version(name, ref.removeprefix("v")))
    except MlflowException:
        raise RegistryError(f"No model version '{ref}' in the registry of '{name}' "
                            f"({config.resolved().uris.mlflow_tracking}). See `ftops registry ls`.") from None


def lookup(config: Config, version: str) -> Version | None:
    """A version by number, None only when the registry answers that it has none (a store
    that does not answer raises, unlike `get`)."""
    from mlflow.exceptions import MlflowException

    try:
        return _version(client(config).get_model_version(model_name(config), str(version).removeprefix("v")))
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def find(config: Config, alias: str) -> Version | None:
    try:
        return get(config, alias)
    except RegistryError:
        return None


def versions(config: Config) -> list[Version]:
    from mlflow.exceptions import MlflowException

    mlflow_client = client(config)
    try:
        found = mlflow_client.search_model_versions(f"name = '{model_name(config)}'")
    except MlflowException:
        return []
    return sorted((_version(v) for v in found), key=lambda v: int(v.version), reverse=True)


def set_alias(config: Config, alias: str, version: str) -> None:
    client(config).set_registered_model_alias(model_name(config), alias, version)


def promote(config: Config, version: str) -> Version:
    """champion -> version; the former champion becomes `previous` (one-call rollback).
    A registry-only move: where a champion route serves, `ftops reconcile` moves the alias
    back to what serves; `ftops deploy` promotes through the serving gates instead."""
    with promotion_lock(config, f"registry promote {version}"):
        mlflow_client = client(config)
        name = model_name(config)
        target = get(config, version)
        current = find(config, CHAMPION)
        if current is not None and current.version == target.version:
            return target
        if current is not None:
            mlflow_client.set_registered_model_alias(name, PREVIOUS, current.version)
        mlflow_client.set_registered_model_alias(name, CHAMPION, target.version)
        if CHALLENGER in target.aliases:
            mlflow_client.delete_registered_model_alias(name, CHALLENGER)
        return get(config, CHAMPION)


def rollback(config: Config) -> Version:
    """Swap champion and previous: the previous champion serves again, and a second
    rollback undoes the first."""
    with promotion_lock(config, "registry rollback"):
        mlflow_client = client(config)
        name = model_name(config)
        current, previous = find(config, CHAMPION), find(config, PREVIOUS)
        if previous is None:
            raise RegistryError(f"Nothing to roll back to: '{name}' has no '{PREVIOUS}' version. "
                                "A rollback needs an earlier promotion.")
        mlflow_client.set_registered_model_alias(name, CHAMPION, previous.version)
        if current is not None:
            mlflow_client.set_registered_model_alias(name, PREVIOUS, current.version)
            mark_rolled_back(config, current.version)
        return get(config, CHAMPION)


def mark_rolled_back(config: Config, version: str) -> None:
    client(config).set_model_version_tag(model_name(config), version, TAG_ROLLED_BACK, "true")


def aliases(config: Config) -> dict[str, str]:
    """ftops's aliases (champion, challenger, previous) -> version, in one call; {} when the
    project has no registered model yet. MLflow not answering raises (MlflowException)."""
    from mlflow.exceptions import MlflowException

    try:
        model = client(config).get_registered_model(model_name(config))
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    return {alias: str(version) for alias, version in (model.aliases or {}).items() if alias in ALIASES}


def plan(current: dict[str, str], wanted: dict[str, str]) -> list[tuple[str, str | None]]:
    """The moves (alias, version; None = remove) that make `current` agree with `wanted`: each
    wanted alias on its version, and no alias that is not wanted left on a version that is
    (e.g. `previous` on the champion's version after an unversioned export was deployed)."""
    moves: list[tuple[str, str | None]] = [(a, v) for a, v in wanted.items() if current.get(a) != v]
    taken = set(wanted.values())
    moves += [(a, None) for a, v in current.items() if a not in wanted and v in taken]
    return sorted(moves, key=lambda move: ALIASES.index(move[0]))


def describe(move: tuple[str, str | None], current: dict[str, str]) -> str:
    alias, version = move
    before = f"v{current[alias]}" if alias in current else "none"
    return f"registry alias {alias}: {before} -> {f'v{version}' if version else 'removed'}"


def align(config: Config, wanted: dict[str, str], dry_run: bool = False) -> list[str]:
    """Move the aliases so that each in `wanted` names its version; what was (or, dry_run,
    would be) moved. Each move is idempotent: one that MLflow interrupts is finished by the
    next call."""
    current = aliases(config)
    moves = plan(current, wanted)
    if not dry_run and moves:
        mlflow_client, name = client(config), model_name(config)
        for alias, version in moves:
            if version is None:
                mlflow_client.delete_registered_model_alias(name, alias)
            else:
                mlflow_client.set_registered_model_alias(name, alias, version)
    return [describe(move, current) for move in moves]


def tag_decision(config: Config, version: str, outcome: str, summary: str) -> None:
    mlflow_client = client(config)
    mlflow_client.set_model_version_tag(model_name(config), version, TAG_DECISION, outcome)
    mlflow_client.set_model_version_tag(model_name(config), version, TAG_DECISION_SUMMARY, summary[:5000])


def downloads_dir(config: Config) -> Path:
    return config.resolved().project.dir / "downloads"


def download(config: Config, ref: str, dest: Path | None = None) -> Path:
    """A local candidate folder (`<dest>/model/...`) for a version, loadable by
    ftops.train.load_trained; default dest: <project dir>/downloads/v<N>."""
    version = get(config, ref)
    dest = Path(dest or downloads_dir(config) / f"v{version.version}")
    dest.mkdir(parents=True, exist_ok=True)
    with _locked(dest):
        if not complete(dest, version.version):
            _fetch(config, version, dest)
    os.utime(dest)  # last used: retention keeps the most recently used downloads
    return dest


@contextmanager
def _locked(dest: Path):
    """One download per folder at a time (two flows may want the same version at once)."""
    with open(dest / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def complete(dest: Path, version: str) -> bool:
    """`dest/model` holds exactly the files recorded when this version's download completed."""
    from ftops.artifacts.exported import file_hashes

    record = dest / DOWNLOADED
    if not record.is_file() or not (dest / "model").is_dir():
        return False
    saved = json.loads(record.read_text())
    return saved.get("version") == version and saved.get("files") == file_hashes(dest / "model")


def _fetch(config: Config, version: Version, dest: Path) -> None:
    """Download into a temp folder beside `dest/model`, check every listed file arrived at
    its listed size, then record the hashes and rename it into place."""
    import mlflow

    from ftops.artifacts.exported import file_hashes

    tracking.use_project(config)
    partial = Path(tempfile.mkdtemp(prefix=PARTIAL, dir=dest))
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=version.ref, dst_path=str(partial))
        _check_sizes(partial, _listing(version.ref), version)
        (dest / DOWNLOADED).unlink(missing_ok=True)
        shutil.rmtree(dest / "model", ignore_errors=True)  # an incomplete or damaged earlier one
        os.rename(partial, dest / "model")
        atomic.write_text(dest / DOWNLOADED, json.dumps({"version": version.version, "source": version.source,
                                                         "files": file_hashes(dest / "model")}, indent=2))
        # written last: its presence means complete
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _listing(uri: str, path: str | None = None) -> dict[str, int | None]:
    """Every file under an artifact URI with the size the store reports."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repo = get_artifact_repository(uri)
    out: dict[str, int | None] = {}
    pending = [path]
    while pending:
        for info in repo.list_artifacts(pending.pop()):
            if info.is_dir:
                pending.append(info.path)
            else:
                out[info.path] = info.file_size
    return out


def _check_sizes(folder: Path, listed: dict[str, int | None], version: Version) -> None:
    if not listed:
        raise RegistryError(f"Version {version.version} of '{version.name}' lists no artifacts at {version.source}; "
                            "register it again from a finished candidate run.")
    wrong = [name for name, size in listed.items()
             if not (folder / name).is_file() or (size is not None and (folder / name).stat().st_size != size)]
    if wrong:
        raise RegistryError(f"The download of version {version.version} is incomplete ({', '.join(sorted(wrong)[:5])} "
                            "missing or truncated); nothing was kept. Try again; if it repeats, check the "
                            f"artifact store behind {version.source}.")
