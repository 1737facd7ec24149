"""An export in MLflow: every built variant as an onnx model, the figures as metrics, the
manifest and model card as artifacts. Only when a run is active or named: export works with
no MLflow at all."""

from __future__ import annotations

import sys
from contextlib import nullcontext

from ftops.export.results import PASS, ExportResult
from ftops.export.runtime import PROVIDERS
from ftops.names import CARD_FILE, MANIFEST_FILE, TAG_EXPORT_SELECTED


def log_to_mlflow(result: ExportResult, run_id: str | None = None) -> bool:
    """Every built variant as an MLflow onnx model, its figures as `export.<variant>.*`
    metrics, and export.json as an artifact, into the active run or `run_id`. Without
    either nothing is imported: export works with no MLflow at all."""
    mlflow = sys.modules.get("mlflow")  # no active run is possible when mlflow was never imported
    active = mlflow.active_run() if mlflow is not None else None
    if active is None and run_id is None:
        return False
    import mlflow
    import onnx
    import onnxruntime

    same = active is not None and (run_id is None or active.info.run_id == run_id)
    with nullcontext() if same else mlflow.start_run(run_id=run_id, nested=active is not None):
        for name, report in result.variants.items():
            metrics = {f"export.{name}.{k}": float(v) for k, v in report.figures.items()}
            metrics[f"export.{name}.passed"] = float(report.status == PASS)
            mlflow.log_metrics(metrics)
            if report.file:
                mlflow.onnx.log_model(onnx.load(str(result.out_dir / report.file)), name=name,
                                      onnx_execution_providers=PROVIDERS,
                                      pip_requirements=[f"onnxruntime=={onnxruntime.__version__}",
                                                        f"onnx=={onnx.__version__}"])
        mlflow.set_tag(TAG_EXPORT_SELECTED, result.selected or "none")
        mlflow.log_artifact(str(result.out_dir / MANIFEST_FILE), artifact_path="export")
        mlflow.log_artifact(str(result.out_dir / CARD_FILE), artifact_path="export")
    return True
