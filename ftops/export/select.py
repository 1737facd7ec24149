"""The selection rule: which gated variant is offered for serving, and why."""

from __future__ import annotations

from ftops.config import GatesSection
from ftops.export.results import PASS, UNBATCHED, VariantReport

OBJECTIVE = "fastest batch-1 p50 with macro-F1 loss <= gates.max_f1_loss, batch-invariant"


def select(reports: dict[str, VariantReport], gates: GatesSection) -> tuple[str | None, str]:
    """Default objective: the fastest batch-1 p50 among batch-invariant passing variants
    whose macro-F1 loss is within gates.max_f1_loss."""
    eligible = [r for r in reports.values()
                if r.status == PASS and r.figures.get("delta_macro_f1", -1.0) >= -gates.max_f1_loss]
    if not eligible:
        return None, "no variant passed the parity gate with batch invariance: nothing is offered for serving"
    best = min(eligible, key=lambda r: r.figures.get("p50_ms", float("inf")))
    why = (f"fastest batch-1 p50 ({best.figures['p50_ms']:.2f} ms) among passing variants "
           f"({', '.join(r.name for r in eligible)}) with macro-F1 loss <= {gates.max_f1_loss}")
    faster = [r for r in reports.values() if r.status == UNBATCHED
              and r.figures.get("p50_ms", float("inf")) < best.figures["p50_ms"]]
    if faster:
        why += "; faster but unbatched_only: " + ", ".join(f"{r.name} ({r.figures['p50_ms']:.2f} ms)" for r in faster)
    return best.name, why
