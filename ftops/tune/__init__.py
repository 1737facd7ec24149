"""Tuning: an Optuna study per candidate searches its settings on the validation split and
writes the best ones back for training.

space: what a candidate's study searches and holds, checked before any trial.
storage: the RDB storage (uris.tuning) and the studies in it.
objective: one trial, which trains the candidate and reports to the pruner.
plots: the study's figures.
study: the stage, `tune`, and the settings file it writes.
tuned: the settings file as training reads it.

Training reads `tuned` and the search trains, so importing this package, or `tuned`,
must not import training: only `tuned` is imported here, the rest on first use.
"""

from __future__ import annotations

from importlib import import_module

from ftops.tune.tuned import tuned_candidates, tuned_config, tuned_path

_LAZY = {"tune": "study", "TuneResult": "study", "StudyProgress": "study",
         "check_tuning": "space", "CANDIDATE_SPACE": "space"}

__all__ = ["tuned_candidates", "tuned_config", "tuned_path", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
