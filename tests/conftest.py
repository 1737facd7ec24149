from __future__ import annotations

from pathlib import Path

import pytest

from ftops.config import Config


@pytest.fixture
def project(tmp_path: Path):
    """Build a Config whose project dir is a fresh temp folder; data keys as keywords."""

    def make(**data) -> Config:
        return Config.model_validate({"project": {"dir": str(tmp_path / "proj")}, "data": data})

    return make


def write_csv(path: Path, rows: list[tuple], header=("text", "label")) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def sentiment_rows(n_per_class: int = 20, labels=("neg", "pos")) -> list[tuple[str, str]]:
    return [(f"sample text number {i} about {label} things", label)
            for label in labels for i in range(n_per_class)]
