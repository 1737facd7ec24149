"""The study's figures: optimization history, and parameter importances once two trials
completed (else a note, also a tag on the run, says why they are missing).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from ftops.names import TAG_IMPORTANCES


def plot_study(study, folder: Path, complete: int, notes: list[str]) -> list[Path]:
    """Optimization history, and parameter importances once 2 trials completed (else a note,
    also a tag on the run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    import optuna
    from optuna.visualization import matplotlib as plots

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    drawings = [("optimization_history.png", plots.plot_optimization_history)]
    if complete >= 2:
        drawings.append(("param_importances.png", plots.plot_param_importances))
    else:
        note = f"parameter importances need 2 complete trials; the study has {complete}"
        notes.append(note)
        mlflow.set_tag(TAG_IMPORTANCES, note)
    for file_name, draw in drawings:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                axes = draw(study)
            except (ValueError, RuntimeError) as exc:  # e.g. importances with no varying parameter
                note = f"{file_name} not drawn: {exc}"
                notes.append(note)
                mlflow.set_tag(TAG_IMPORTANCES, note)
                continue
        figure = axes.figure
        figure.set_size_inches(7, 4)
        figure.tight_layout()
        figure.savefig(folder / file_name, dpi=100)
        plt.close(figure)
        written.append(folder / file_name)
    return written
