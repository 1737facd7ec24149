"""What a training run leaves: the result of one candidate, and what a retraining round brings."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


RESULT_FILE = "result.json"   # written last: a candidate folder with it is finished


@dataclass
class TrainResult:
    candidate: str
    strategy: str
    out_dir: Path
    trainable: int
    total: int
    val_macro_f1: float
    test_macro_f1: float | None  # None: trained without looking at the test split (tuning trials)
    test_accuracy: float | None
    samples_per_second: float
    wall_seconds: float
    peak_rss_mb: float
    global_step: int
    resumed_from: str | None = None
    world_size: int = 1
    extras: str = ""            # domain adaptation / auxiliary tasks, as the CLI table shows them
    target_rows: int = 0        # unlabelled target-domain texts trained on (domain adaptation)
    task_metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # auxiliary heads, test split
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def trainable_share(self) -> float:
        return self.trainable / self.total


@dataclass
class RetrainSources:
    """What a retraining round brings from the champion."""

    teacher_dir: Path | None = None     # a trained candidate folder (the champion)
    old_train: pd.DataFrame | None = None  # the champion's training rows
    target_texts: list[str] | None = None  # unlabelled target-domain texts (else adaptation.target)


def load_result(out_dir: Path) -> TrainResult:
    """The TrainResult a finished candidate folder holds (written by rank 0 under DDP)."""
    raw = json.loads((Path(out_dir) / RESULT_FILE).read_text())
    return TrainResult(**{**raw, "out_dir": Path(raw["out_dir"])})
