"""The cleaning report: what the stage did to the rows (dropped and why, truncated,
subsampled, feedback per sender), saved in every snapshot's manifest."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pandas as pd


@dataclass
class CleaningReport:
    rows_in: int = 0
    rows_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[int]] = field(default_factory=dict)
    truncated: int = 0
    subsampled: int = 0
    senders: dict[str, dict[str, int]] = field(default_factory=dict)  # feedback offered / kept per sender
    kept_in_train: dict[str, int] = field(default_factory=dict)  # rows per label too few to split or hold out

    def drop(self, reason: str, rows: pd.Series) -> None:
        if len(rows):
            self.dropped[reason] = self.dropped.get(reason, 0) + len(rows)
            self.examples.setdefault(reason, []).extend(int(r) for r in rows[:3])


def drop_summary(report: CleaningReport) -> list[tuple[str, int]]:
    return Counter(report.dropped).most_common()
