"""The decision record: every rule with its value and threshold, the metrics, the slice
deltas and the tests behind them, written as decision.json (what code reads) and
decision.md (what a person reads), so a rejection explains itself.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ftops.evaluate.stats import BootstrapResult, McNemarResult


@dataclass
class Rule:
    name: str
    passed: bool
    value: float | None
    threshold: float | None
    detail: str


@dataclass
class Decision:
    outcome: str  # "promote" | "reject"
    mode: str  # "champion" | "no-champion-yet" | "baseline-serves"
    summary: str
    rules: list[Rule]
    metrics: dict[str, dict | None]  # challenger, champion, baseline
    slices: dict[str, dict]  # "column=value" -> n, challenger, reference, delta (or skipped)
    reference: str | None  # what bootstrap, mcnemar and slices compare against
    bootstrap: BootstrapResult | None
    mcnemar: McNemarResult | None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    context: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=_json_default)

    def to_markdown(self) -> str:
        lines = [f"# Decision: {self.outcome}", "", self.summary, "",
                 "| rule | value | threshold | pass | detail |", "|---|---:|---:|:-:|---|"]
        lines += [f"| {r.name} | {_fmt(r.value)} | {_fmt(r.threshold)} | "
                  f"{'yes' if r.passed else 'NO'} | {_cell(r.detail)} |" for r in self.rules]
        if self.slices:
            lines += ["", f"## Slices (macro-F1, challenger vs {self.reference})", "",
                      f"| slice | n | challenger | {self.reference} | delta |", "|---|---:|---:|---:|---:|"]
            for key, s in self.slices.items():
                numbers = ["skipped", "", ""] if "skipped" in s else [
                    f"{s['challenger']:.4f}", f"{s['reference']:.4f}", f"{s['delta']:+.4f}"]
                lines.append(f"| {_cell(key)} | {s['n']} | " + " | ".join(numbers) + " |")
        if self.context:
            lines += ["", "## Context", ""] + [f"- {k}: {v}" for k, v in self.context.items()]
        return "\n".join(lines) + "\n"

    def write(self, folder: Path) -> tuple[Path, Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = folder / "decision.json", folder / "decision.md"
        paths[0].write_text(self.to_json() + "\n", encoding="utf-8")
        paths[1].write_text(self.to_markdown(), encoding="utf-8")
        return paths


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays (e.g. in `context`) as Python numbers and lists."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return str(value)


def _fmt(value: Any) -> str:
    return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")
