"""Exporting a resolved model or a registry version with a data snapshot's texts: what the
CLI, the lifecycle flow and online A/B call."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from ftops.export.results import ExportError, ExportResult
from ftops.export.stage import export_model
from ftops.names import BASELINE_FILE, META_FILE, MODEL_DIR


def export_ref(config, ref, snapshot, out_dir: Path | None = None,
               progress: Callable[[str], None] | None = None) -> ExportResult:
    """Export a resolved model (ftops.decide.ModelRef) with the snapshot's texts:
    calibration from its train split, the parity gate on its validation + test rows."""
    from ftops import registry
    from ftops.train.baseline import is_baseline

    baseline = is_baseline(ref.folder)
    meta = ref.folder / MODEL_DIR / (BASELINE_FILE if baseline else META_FILE)
    labels = json.loads(meta.read_text())["labels"]
    if labels != snapshot.labels:
        raise ExportError(f"Model '{ref.label}' predicts labels {labels} but snapshot {snapshot.id} has "
                          f"{snapshot.labels}: the parity gate needs the model's own label set. "
                          "Use a snapshot with the same labels.")
    run_id = registry.get(config, ref.version).run_id if ref.version else None
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    name = f"v{ref.version}" if ref.version else Path(ref.folder).name
    target = out_dir or config.resolved().project.dir / "exports" / f"{name}-{stamp}"
    # Parity runs on every held-out labelled row (validation + test): the variant is judged
    # against its own PyTorch model on the same rows, so more rows only tighten the paired CI.
    train_texts = snapshot.split("train")["text"]
    held_out = pd.concat([snapshot.split("validation"), snapshot.split("test")], ignore_index=True)
    label2id = {label: i for i, label in enumerate(labels)}
    result_file = Path(ref.folder) / "result.json"
    metrics = {}
    if result_file.is_file():
        saved = json.loads(result_file.read_text())
        metrics = {k: saved[k] for k in ("val_macro_f1", "test_macro_f1", "test_accuracy") if k in saved}
    manifest = json.loads((snapshot.path / "manifest.json").read_text())
    source = {"model": ref.label, "folder": str(ref.folder), "registry_version": ref.version, "run_id": run_id,
              "snapshot": snapshot.id, "data_sha256": manifest.get("sha256"), "metrics": metrics}
    parity_texts, parity_labels = list(held_out["text"]), [label2id[l] for l in held_out["label"]]
    if baseline:
        from ftops.export.baseline import export_baseline

        return export_baseline(ref.folder, target, parity_texts=parity_texts, parity_labels=parity_labels,
                               gates=config.gates, source=source, run_id=run_id, progress=progress)
    calibration = list(train_texts.sample(n=min(200, len(train_texts)), random_state=config.data.seed))
    return export_model(ref.folder, target, calibration, config.model.max_length,
                        parity_texts=parity_texts, parity_labels=parity_labels,
                        gates=config.gates, source=source, run_id=run_id, progress=progress)


def export_version(config, version: str, snapshot, run_id: str | None = None,
                   progress: Callable[[str], None] | None = None) -> ExportResult:
    """Export a registry version (what the lifecycle flow calls after an A/B win)."""
    from ftops import decide, registry

    ref = decide.ModelRef(f"v{version}", registry.download(config, version), version)
    return export_ref(config, ref, snapshot, progress=progress)
