"""The Triton model repository: each deployed version's model folders (ftops.serve.triton.models),
with an integrity record beside each and a pending mark while a deploy runs.

Integrity: each model folder gets `<name>.sha256.json` beside it: the expected hash of
every file written (the manifest's for copied export files, already held to it by
ftops.serve.deployable), so the repository copy can be checked before any later load
(rollback, a restart) without the export folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

from ftops import atomic
from ftops.artifacts.exported import sha256
from ftops.config import ServingSection
from ftops.serve.deployable import Deployable
from ftops.serve.runtime import ServingError
from ftops.serve.triton.models import BACKENDS, ModelNames, version_files

HASHES = ".sha256.json"   # beside each model folder: the sha256 of every file it should hold
PENDING = ".pending"      # beside a version being deployed: pruning leaves it alone ...
PENDING_MAX_S = 6 * 3600  # ... unless the deploy died long ago (longer than any gate takes)


# ---------------------------------------------------------------- integrity


def _hashes_file(repo: Path, name: str) -> Path:
    return repo / f"{name}{HASHES}"


def _record(repo: Path, name: str, files: dict[str, str]) -> None:
    atomic.write_text(_hashes_file(repo, name), json.dumps(
        {"model": name, "written": datetime.now(UTC).isoformat(timespec="seconds"), "files": files}, indent=2))


def _actual(folder: Path) -> dict[str, str]:
    """sha256 of the files in a model folder; __pycache__ is the python backend's own."""
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and "__pycache__" not in p.relative_to(folder).parts}


def model_problems(repo: Path, name: str) -> list[str]:
    """What in one model folder differs from its record: changed, missing or extra files."""
    record = _hashes_file(repo, name)
    if not record.is_file():
        return [f"{name}: no {record.name} (no record of what was deployed)"]
    expected = json.loads(record.read_text())["files"]
    actual = _actual(repo / name) if (repo / name).is_dir() else {}
    problems = []
    for file in sorted(set(expected) | set(actual)):
        if file not in actual:
            problems.append(f"{name}/{file} is missing")
        elif file not in expected:
            problems.append(f"{name}/{file} was not deployed")
        elif actual[file] != expected[file]:
            problems.append(f"{name}/{file} has sha256 {actual[file][:12]}..., deployed {expected[file][:12]}...")
    return problems


def version_problems(repo: Path, names: ModelNames) -> list[str]:
    """Every difference between a version's models in the repository and what was written."""
    if not (repo / names.ensemble).is_dir():
        return [f"{names.ensemble} is not in the model repository {repo}"]
    problems = model_problems(repo, names.ensemble)
    if problems:
        return problems
    return [p for n in steps(repo, names) for p in model_problems(repo, n)]


def steps(repo: Path, names: ModelNames) -> list[str]:
    """The models a version's ensemble runs, read from its (verified) config: one step or
    three, by runtime and serving.one_hop."""
    config = (repo / names.ensemble / "config.pbtxt").read_text()
    return re.findall(r'model_name: "([^"]+)"', config)


def verify_version(repo: Path, names: ModelNames, hint: str) -> None:
    """Refuse to load a version whose repository copy differs from what was deployed."""
    problems = version_problems(repo, names)
    if problems:
        raise ServingError(f"Triton's copy of {names.ensemble} in {repo} is not what was deployed: "
                           f"{'; '.join(problems)}. {hint}")


# ---------------------------------------------------------------- writing


def write_version(repo: Path, project: str, tag: str, model: Deployable, cfg: ServingSection) -> ModelNames:
    """Write the models of one version with their sha256 records, then check the copies
    against them; a half-written or mismatching version is removed, never served."""
    backend = BACKENDS[cfg.runtime]
    names = ModelNames.for_tag(project, tag)
    written: list[Path] = []
    models = version_files(names, model, cfg, backend)
    for name in set(names.all()) - set(models):  # a step of an earlier shape of this tag (serving.one_hop)
        shutil.rmtree(repo / name, ignore_errors=True)
        _hashes_file(repo, name).unlink(missing_ok=True)
    try:
        for name, files in models.items():
            folder = _model_dir(repo, name, written)
            _record(repo, name, {rel: _put(folder / rel, source) for rel, source in files.items()})
        verify_version(repo, names, "It was removed, nothing was loaded; the champion keeps serving. Deploy "
                       f"again; if it repeats, check the disk of {repo}.")
    except BaseException:
        for folder in written:
            shutil.rmtree(folder, ignore_errors=True)
            _hashes_file(repo, folder.name).unlink(missing_ok=True)
        raise
    return names


def _put(target: Path, source: bytes | tuple[Path, str]) -> str:
    """Write or copy one file; the sha256 it must have in the repository."""
    if isinstance(source, bytes):
        target.write_bytes(source)
        return hashlib.sha256(source).hexdigest()
    path, expected = source
    shutil.copyfile(path, target)
    return expected


def _model_dir(repo: Path, name: str, written: list[Path]) -> Path:
    folder = repo / name
    if folder.exists():
        shutil.rmtree(folder)  # a redeploy of the same tag replaces it whole
    (folder / "1").mkdir(parents=True)
    written.append(folder)
    return folder


def remove_version(repo: Path, names: ModelNames) -> None:
    for name in names.all():
        shutil.rmtree(repo / name, ignore_errors=True)
        _hashes_file(repo, name).unlink(missing_ok=True)
    clear_pending(repo, names)


# ---------------------------------------------------------------- what the repository holds


def versions(repo: Path, project: str) -> dict[str, ModelNames]:
    """This project's versions in a (possibly shared) repository, by tag (`v3`, `x1a2b3c4d`):
    folders and records named `<project>-<tag>[-step]`; other projects' are not matched."""
    pattern = re.compile(rf"^{re.escape(project)}-(v[0-9A-Za-z_]+|x[0-9a-f]{{8}})"
                         rf"(?:-tokenizer|-classifier|-postprocess)?(?:{re.escape(HASHES)}|{re.escape(PENDING)})?$")
    found = {}
    for entry in repo.iterdir() if repo.is_dir() else ():
        match = pattern.match(entry.name)
        if match:
            found[match.group(1)] = ModelNames.for_tag(project, match.group(1))
    return found


def mark_pending(repo: Path, names: ModelNames) -> None:
    atomic.write_text(repo / f"{names.ensemble}{PENDING}", f"{os.getpid()}\n")


def clear_pending(repo: Path, names: ModelNames) -> None:
    (repo / f"{names.ensemble}{PENDING}").unlink(missing_ok=True)


def pending(repo: Path, names: ModelNames) -> bool:
    """A deploy of this version is under way (or died less than PENDING_MAX_S ago)."""
    try:
        return time.time() - (repo / f"{names.ensemble}{PENDING}").stat().st_mtime < PENDING_MAX_S
    except FileNotFoundError:
        return False
