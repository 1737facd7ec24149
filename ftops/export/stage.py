"""The export stage end to end: load the trained model, write the tokenizer and labels,
take the PyTorch reference, build the variants, gate and time them, select one, write the
card and the manifest (last), all in a staged folder published by one rename.

Determinism: re-exporting the same model gives a byte-identical fp32 file (the legacy
exporter names nodes and initializers deterministically, and merged LoRA weights are a
deterministic sum); tests check it. Quantised files also depend on the calibration texts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ftops.artifacts import exported
from ftops.artifacts.timing import measure_speed
from ftops.config import GatesSection
from ftops.export.card import write_manifest, write_model_card
from ftops.export.parity import Reference, gate_variant, make_reference
from ftops.export.publish import log_to_mlflow
from ftops.export.results import ERROR, ExportError, ExportResult, VariantReport
from ftops.export.runtime import encode_each, ort_runner
from ftops.export.select import select
from ftops.export.source import load_source, prepare_for_onnx
from ftops.export.staging import staged
from ftops.export.variants import VARIANTS, build_variants
from ftops.names import MANIFEST_FILE, TOKENIZER_FILE


def export_model(source_folder: Path, out_dir: Path, calibration_texts: list[str], max_length: int, *,
                 parity_texts: list[str], parity_labels: Sequence[int], gates: GatesSection | None = None,
                 source: dict[str, Any] | None = None, variants: Sequence[str] | None = None,
                 run_id: str | None = None, threads: int | None = None,
                 progress: Callable[[str], None] | None = None) -> ExportResult:
    """Export a trained candidate folder to ONNX variants, gate each against the PyTorch model
    on `parity_texts` (true label ids `parity_labels`), time them, select one, write the
    manifest, and log to MLflow when a run is active or `run_id` is given."""
    gates = gates or GatesSection()
    names = list(variants or VARIANTS)
    out_dir = Path(out_dir)
    check_request(names, parity_texts, parity_labels, out_dir)
    with staged(out_dir) as work:
        result = build_export(Path(source_folder), work, calibration_texts, max_length, parity_texts, parity_labels,
                              gates, dict(source or {}), names, threads or os.cpu_count() or 1,
                              progress or (lambda line: None))
    result.out_dir = out_dir
    log_to_mlflow(result, run_id)
    return result


def build_export(source_folder: Path, work: Path, calibration_texts: list[str], max_length: int,
                 parity_texts: list[str], parity_labels: Sequence[int], gates: GatesSection, source: dict[str, Any],
                 names: list[str], threads: int, say: Callable[[str], None]) -> ExportResult:
    """Everything of an export written into `work`, the manifest last."""
    model, tokenizer, labels = load_source(source_folder)
    exported.write_tokenizer(tokenizer, source_folder, work, max_length)
    exported.write_labels(work, labels)
    # The reference is the model as trained (adapters unmerged), so the gate covers the merge too.
    reference = make_reference(model, tokenizer, work / TOKENIZER_FILE, parity_texts,
                               parity_labels, len(labels), max_length)
    calibration = encode_each(work / TOKENIZER_FILE, calibration_texts)
    reports = build_variants(prepare_for_onnx(model), tokenizer, work, names, calibration, say)
    del model  # the reference logits are all the gate needs from here on

    gate_and_time(reports, work, reference, gates, threads, say)
    selected, why = select(reports, gates)
    say(f"selected: {selected or 'none'} ({why})")
    result = ExportResult(work, labels, max_length, reports, selected, why,
                          {"macro_f1": reference.macro_f1, "n_texts": len(parity_texts)}, source)
    write_model_card(result)
    write_manifest(result, gates, threads)
    return result


def check_request(names: list[str], parity_texts: list[str], parity_labels: Sequence[int], out_dir: Path) -> None:
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or "fp32" not in names:
        raise ExportError(f"Unknown or missing export variants {unknown or ['fp32 (required)']}; "
                          f"known: {', '.join(VARIANTS)}, and fp32 is always built (the others derive from it).")
    if len(parity_texts) != len(parity_labels) or not parity_texts:
        raise ExportError(f"The parity gate needs texts with their true label ids: got {len(parity_texts)} "
                          f"texts and {len(parity_labels)} labels. Pass held-out labelled rows (the validation and test splits).")
    if (out_dir / MANIFEST_FILE).exists():
        raise ExportError(f"{out_dir} already holds an export ({MANIFEST_FILE}). Choose a new folder "
                          "(exports are immutable once written) or delete that one first.")


def gate_and_time(reports: dict[str, VariantReport], out_dir: Path, reference: Reference, gates: GatesSection,
                  threads: int, say: Callable[[str], None]) -> None:
    """The parity gate for every built variant, then their speed, measured interleaved."""
    for report in reports.values():
        if report.file:
            gate_variant(report, out_dir / report.file, reference, gates, threads)
            say(f"{report.name}: {report.status}" + (f" ({report.reason})" if report.reason else ""))
    runnable = {n: r for n, r in reports.items() if r.file and r.status != ERROR}
    speed = measure_speed({n: ort_runner(out_dir / r.file, threads) for n, r in runnable.items()},
                          reference.speed_singles, reference.speed_batches)
    for name, figures in speed.items():
        reports[name].figures.update(figures)
