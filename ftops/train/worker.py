"""One torchrun worker (`python -m ftops.train.worker JOB_FILE`): rebuilds the job that
ftops.train.distributed.launch wrote and trains the candidate; rank 0 logs into the caller's
MLflow run."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ftops import security
from ftops.train.candidate import train_candidate
from ftops.train.distributed import rank, report_progress
from ftops.train.results import RetrainSources


def main(job_file: str) -> None:
    """One torchrun worker: rebuild the job and train; rank 0 logs into the caller's run."""
    import contextlib

    import mlflow
    import pandas as pd

    from ftops import data
    from ftops.config import CandidateSection

    job = json.loads(Path(job_file).read_text())
    config = security.unseal(json.dumps(job["config"]))
    candidate = CandidateSection.model_validate(job["candidate"])
    snapshot = data.load_snapshot(Path(job["snapshot_root"]), job["snapshot"])
    retrain = RetrainSources(
        teacher_dir=Path(job["teacher_dir"]) if job["teacher_dir"] else None,
        old_train=pd.read_parquet(job["old_train"]) if job["old_train"] else None)
    tracked = contextlib.nullcontext()
    if rank() == 0 and job["mlflow_run_id"]:
        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or job["tracking_uri"])
        tracked = mlflow.start_run(run_id=job["mlflow_run_id"])
    with tracked:
        train_candidate(config, candidate, snapshot, Path(job["out_dir"]), retrain,
                              report_progress if rank() == 0 else None)


if __name__ == "__main__":
    main(sys.argv[1])
