"""The selection rule: which gated variant is offered for serving, and why."""

from __future__ import annotations

from ftops.config import GatesSection
from ftops.export.results import PASS, UNBATCHED, VariantReport

OBJECTIVE = "fastest batch-1 p50 with macro-F1 loss <= gates.max_f1_loss, batch-invariant unless gates.unbatched_ok"


def select(reports: dict[str, VariantReport], gates: GatesSection) -> tuple[str | None, str]:
    """Default objective: the fastest batch-1 p50 among batch-invariant passing variants
    whose macro-F1 loss is within gates.max_f1_loss; with gates.unbatched_ok, variants that
    passed everything but batch invariance (served one text per call) compete too."""
    statuses = (PASS, UNBATCHED) if gates.unbatched_ok else (PASS,)
    eligible = [r for r in reports.values()
                if r.status in statuses and r.figures.get("delta_macro_f1", -1.0) >= -gates.max_f1_loss]
    if not eligible:
        invariance = "" if gates.unbatched_ok else " with batch invariance"
        return None, f"no variant passed the parity gate{invariance}: nothing is offered for serving"
    best = min(eligible, key=lambda r: r.figures.get("p50_ms", float("inf")))
    why = (f"fastest batch-1 p50 ({best.figures['p50_ms']:.2f} ms) among passing variants "
           f"({', '.join(r.name for r in eligible)}) with macro-F1 loss <= {gates.max_f1_loss}")
    if best.status == UNBATCHED:
        why += "; unbatched_only (gates.unbatched_ok): served one text per call"
    faster = [r for r in reports.values() if r.status == UNBATCHED and r not in eligible
              and r.figures.get("p50_ms", float("inf")) < best.figures["p50_ms"]]
    if faster:
        why += "; faster but unbatched_only (gates.unbatched_ok allows them): " + ", ".join(
            f"{r.name} ({r.figures['p50_ms']:.2f} ms)" for r in faster)
    return best.name, why
