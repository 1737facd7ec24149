"""The export stage: merge adapters, export to ONNX, build optimised / quantised variants,
hold every variant to a parity gate against the PyTorch model, select one, and write the
export folder serving reads (its format: ftops.artifacts.exported).

    stage.py     export_model: the stage end to end
    versions.py  export_ref / export_version: a resolved model or registry version + a snapshot
    source.py    the trained model loaded as trained, merged for ONNX, exported to fp32
    baseline.py  the TF-IDF baseline: skl2onnx, a graph that takes text, gated against scikit-learn
    variants.py  the registry of variant builders (optimized, int8, fp16, bf16) and building them
    runtime.py   tokenizer.json encoding and onnxruntime sessions, as serving runs a variant
    parity.py    the PyTorch reference, the parity and batch-invariance rules, the verdict
    select.py    the selection rule
    card.py      the manifest content, reading it back, the model card
    publish.py   MLflow logging
    staging.py   the partial folder renamed into place, full-disk handling
    results.py   statuses, VariantReport, ExportResult, ExportError
"""

from ftops.artifacts.exported import verify_files
from ftops.export.card import figure_text, write_manifest
from ftops.export.results import ERROR, PASS, UNBATCHED, ExportError, ExportResult
from ftops.export.stage import export_model
from ftops.export.staging import PARTIAL, remove_abandoned
from ftops.export.versions import export_ref, export_version
from ftops.names import ONNX_FILE as MODEL_FILE  # the name the disk-full tests use

__all__ = ["ERROR", "MODEL_FILE", "PARTIAL", "PASS", "UNBATCHED", "ExportError", "ExportResult", "export_model",
           "export_ref", "export_version", "figure_text", "remove_abandoned", "verify_files", "write_manifest"]
