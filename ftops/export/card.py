"""What an export says about itself: the manifest content (what serving reads), its
inverse (an export folder as an ExportResult), and the model card for people."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ftops.artifacts import exported
from ftops.config import GatesSection
from ftops.export.results import ExportError, ExportResult, VariantReport
from ftops.export.runtime import BATCH_SIZE, PROVIDERS
from ftops.export.select import OBJECTIVE
from ftops.names import CARD_FILE, MANIFEST_FILE, TOKENIZER_FILE


def write_manifest(result: ExportResult, gates: GatesSection, threads: int) -> dict[str, Any]:
    import onnx
    import onnxruntime
    import torch

    from ftops.train import cpu_flags

    return exported.write_manifest(result.out_dir, {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": result.source,
        **exported.interface(result.out_dir, result.labels, result.max_length),
        "selected": result.selected,
        "selected_file": result.variants[result.selected].file if result.selected else None,
        "selection": {"objective": OBJECTIVE, "reason": result.selection_reason},
        "reference": result.reference,
        "gates": {k: getattr(gates, k) for k in ("parity_atol", "parity_min_agreement", "max_f1_loss",
                                                 "batch_label_agreement", "batch_prob_atol")},
        "variants": {name: report.to_json() for name, report in result.variants.items()},
        "measured": {"threads": threads, "providers": PROVIDERS, "batch_size": BATCH_SIZE,
                     "cpu_flags": sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx", "avx2")))},
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
    })


def load_export(out_dir: Path) -> ExportResult:
    """An export folder's manifest as an ExportResult (the inverse of write_manifest)."""
    if not (Path(out_dir) / MANIFEST_FILE).is_file():
        raise ExportError(f"{out_dir} is not an export folder: it has no {MANIFEST_FILE}. Run `ftops export` first.")
    data = exported.read_manifest(out_dir)
    variants = {n: VariantReport.from_json(v) for n, v in data["variants"].items()}
    return ExportResult(Path(out_dir), data["labels"], data["max_length"], variants, data["selected"],
                        data["selection"]["reason"], data["reference"], data["source"])


def figure_text(report: VariantReport) -> dict[str, str]:
    """The figures as short strings, shared by the model card and the CLI table."""
    f = report.figures

    def fmt(key: str, spec: str) -> str:
        return format(f[key], spec) if key in f else "-"

    return {"size_mb": fmt("size_mb", ".1f"), "p50_ms": fmt("p50_ms", ".2f"), "p99_ms": fmt("p99_ms", ".2f"),
            "samples_per_s": fmt("samples_per_s", ".0f"), "max_abs_diff": fmt("max_abs_diff", ".2e"),
            "agreement": fmt("agreement", ".4f"), "delta_macro_f1": fmt("delta_macro_f1", "+.4f"),
            "batch_label_agreement": fmt("batch_label_agreement", ".3f")}


def inputs_text(result: ExportResult) -> str:
    outputs = f"logits (float32, [batch, {len(result.labels)}])"
    if not (result.out_dir / TOKENIZER_FILE).is_file():
        return (f"text (string, [batch, 1]) -> {outputs}: the log of the TF-IDF baseline's probabilities "
                "(softmax gives them back). The graph tokenises the text itself.")
    return (f"input_ids, attention_mask, token_type_ids (int64, [batch, sequence]) -> {outputs}. Tokenize with "
            f"tokenizer.json (truncation at {result.max_length} tokens, padding to the longest text of the batch).")


def write_model_card(result: ExportResult) -> None:
    source = "\n".join(f"- {k}: {v}" for k, v in result.source.items()) or "- (not given)"
    rows = []
    for report in result.variants.values():
        t = figure_text(report)
        mark = " (selected)" if report.name == result.selected else ""
        rows.append(f"| {report.name}{mark} | {t['size_mb']} | {t['p50_ms']} | {t['p99_ms']} | {t['samples_per_s']} "
                    f"| {t['max_abs_diff']} | {t['agreement']} | {t['delta_macro_f1']} | {report.status} "
                    f"| {report.reason.replace('|', '/')} |")
    notes = "\n".join(f"- {r.name}: {'; '.join(r.notes)}" for r in result.variants.values() if r.notes)
    reference = "scikit-learn" if result.source.get("kind") == "baseline" else "PyTorch fp32"
    text = f"""# Exported classifier

## Source
{source}

## Labels (id order)
{", ".join(f"{i}: {label}" for i, label in enumerate(result.labels))}

## Inputs and outputs
{inputs_text(result)}

## Variants
{reference} reference: macro-F1 {result.reference.get('macro_f1', float('nan')):.4f} on
{result.reference.get('n_texts')} held-out texts. Latency is batch 1 (ms); throughput batch 32.

| variant | MB | p50 ms | p99 ms | samples/s | max diff | agreement | delta F1 | status | reason |
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

{notes}

Selected: **{result.selected or 'none'}**: {result.selection_reason}.
`unbatched_only` variants answer differently depending on the batch they are in: serve
them one text per inference call, or not at all.
"""
    (result.out_dir / CARD_FILE).write_text(text)
