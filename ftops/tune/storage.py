"""Where studies live: the RDB storage `uris.tuning` (SQLite under the project by default,
PostgreSQL for a team), one study per candidate and data snapshot named
`<project>-<candidate>-<snapshot id>`, created or resumed, and its trial counts.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ftops.config import Config
from ftops.errors import FtopsError


def study_name(config: Config, candidate: str, snapshot) -> str:
    return f"{config.project.name}-{candidate}-{snapshot.id}"


def storage(config: Config):
    """The RDB storage of every study (uris.tuning); connection waits bounded by
    timeouts.database_s."""
    import optuna

    cfg = config.resolved()
    url, seconds = cfg.uris.tuning, cfg.timeouts.database_s
    if url.startswith("sqlite"):
        cfg.project.dir.mkdir(parents=True, exist_ok=True)
        options = {"connect_args": {"timeout": seconds}}  # waits on another process's write lock
    elif url.startswith("postgresql"):
        options = {"connect_args": {"connect_timeout": max(2, round(seconds))}, "pool_pre_ping": True}
    else:
        options = {"pool_pre_ping": True}
    from sqlalchemy.exc import SQLAlchemyError

    from ftops import security

    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=options)
    except SQLAlchemyError:
        pass  # two processes starting on a new storage: the other one created the tables first
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=options)
    except SQLAlchemyError as exc:
        raise FtopsError(f"Cannot open the tuning storage {security.mask_url(url)} (uris.tuning): "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0]}. Check that the database "
                         "is reachable within timeouts.database_s.") from exc


def study_dir(config: Config, name: str) -> Path:
    return config.resolved().project.dir / "tuning" / name


def open_study(config: Config, name: str, rdb, new: bool):
    """The study `name`, created or (load_if_exists) resumed; `new` deletes it first, with
    its trial folders and a settings file it wrote."""
    import optuna

    if new:
        try:
            optuna.delete_study(study_name=name, storage=rdb)
        except KeyError:
            pass  # nothing to restart
        shutil.rmtree(study_dir(config, name), ignore_errors=True)
    study = optuna.create_study(study_name=name, storage=rdb, direction="maximize",
                                pruner=pruner(config), load_if_exists=True)
    # A fixed seed per call would replay the same random start-up trials on every resume.
    seed = config.tuning.sampler_seed
    study.sampler = optuna.samplers.TPESampler(seed=None if seed is None else seed + len(study.trials))
    return study


def pruner(config: Config):
    import optuna

    section = config.tuning.pruner
    if section.kind == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=section.startup_trials, n_warmup_steps=section.warmup_evals)


def counts(study) -> dict[str, int]:
    from optuna.trial import TrialState

    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {"complete": states.count(TrialState.COMPLETE), "pruned": states.count(TrialState.PRUNED),
            "failed": states.count(TrialState.FAIL)}


def best_of(study):
    """The best complete trial, or None while there is none."""
    from optuna.trial import TrialState

    return study.best_trial if any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)) else None
