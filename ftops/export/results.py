"""What an export finds out: each variant's status, figures and rules, and the export as a
whole (these are also the manifest's variant records)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ftops.errors import FtopsError

# A variant's status: `pass` (batch-invariant: serve it with any batching), `unbatched_only`
# (parity holds one text per call, but its answers change with the batch it is in), `fail`
# (not offered; the reason says which rule), `error` (it did not build) or `skipped` (the
# host cannot run it).
PASS, UNBATCHED, FAIL, ERROR, SKIPPED = "pass", "unbatched_only", "fail", "error", "skipped"
UNSUPPORTED = "not supported by this host's execution provider"


class ExportError(FtopsError):
    pass


class Unsupported(Exception):
    """A variant this host cannot run: recorded as skipped, never faked."""


@dataclass
class Rule:
    name: str
    value: float
    threshold: float
    passed: bool
    setting: str = ""    # the gates.* key holding the threshold
    batch: bool = False  # a batch-invariance rule: failing only these gives unbatched_only


@dataclass
class VariantReport:
    name: str
    status: str
    reason: str = ""
    file: str | None = None  # relative to the export folder
    exact: bool = True       # held to parity_atol; else to label agreement + F1 loss
    figures: dict[str, float] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def batch_invariant(self) -> bool | None:
        batch = [r for r in self.rules if r.batch]
        return all(r.passed for r in batch) if batch else None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "batch_invariant": self.batch_invariant}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VariantReport:
        data = {k: v for k, v in data.items() if k != "batch_invariant"}
        return cls(**{**data, "rules": [Rule(**r) for r in data.get("rules", [])]})


@dataclass
class ExportResult:
    out_dir: Path
    labels: list[str]
    max_length: int
    variants: dict[str, VariantReport]
    selected: str | None
    selection_reason: str
    reference: dict[str, float]  # the PyTorch model's figures on the parity texts
    source: dict[str, Any]

    def model_path(self, variant: str | None = None) -> Path:
        """model.onnx of `variant` (default: the selected one)."""
        name = variant or self.selected
        report = self.variants.get(name) if name else None
        if report is None or report.file is None:
            raise ExportError(f"Export {self.out_dir} has no built variant '{name}'. Built: "
                              f"{', '.join(v.name for v in self.variants.values() if v.file) or 'none'}.")
        return self.out_dir / report.file
