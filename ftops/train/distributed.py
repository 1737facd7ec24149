"""Data-parallel training (DDP) on the engines users already run: torchrun starts one
process per device, each runs the same `train_candidate`, and the HF Trainer (through
accelerate) wraps the model in DistributedDataParallel (gloo on CPU, nccl on GPUs).

The results contract is the one-process one: the calling process owns the MLflow run and
gets the same TrainResult back; rank 0 alone logs to that run and writes the candidate
folder (model, result.json, plots); checkpoints resume the same way. Each worker runs
ftops.train.worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path

from ftops import security
from ftops.errors import FtopsError
from ftops.train.results import load_result

JOB_FILE = "ddp-job.json"
OLD_TRAIN_FILE = "ddp-old-train.parquet"
PROGRESS_PREFIX = "FTOPS_PROGRESS "


class TrainingError(FtopsError):
    pass


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_worker() -> bool:
    """True inside a process torchrun started (then training must not launch again)."""
    return world_size() > 1


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def backend(choice: str) -> str:
    import torch

    if choice != "auto":
        return choice
    return "nccl" if torch.cuda.is_available() else "gloo"


def nproc_limit(requested: int) -> int:
    """Processes the host can give a device each: GPUs if any, else CPU cores."""
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else (os.cpu_count() or 1)
    if requested > available:
        kind = "GPUs" if torch.cuda.is_available() else "CPU cores"
        raise TrainingError(f"training.nproc = {requested} but this host has {available} {kind}; "
                            f"use --nproc {available} or fewer.")
    return requested


def launch(config, candidate, snapshot, out_dir: Path, retrain,
           progress: Callable[[int, int, dict], None] | None = None):
    """Run one candidate under torchrun and return rank 0's TrainResult."""
    import mlflow

    nproc = nproc_limit(config.training.nproc)
    out_dir.mkdir(parents=True, exist_ok=True)
    sealed, secrets = security.seal(config)  # the job file holds no password; the environment does
    job = {
        "config": json.loads(sealed),
        "candidate": candidate.model_dump(mode="json"),
        "snapshot_root": str(snapshot.path.parent), "snapshot": snapshot.id,
        "out_dir": str(out_dir),
        "teacher_dir": str(retrain.teacher_dir) if retrain and retrain.teacher_dir else None,
        "old_train": None,
        "mlflow_run_id": mlflow.active_run().info.run_id if mlflow.active_run() else None,
        "tracking_uri": security.mask_url(mlflow.get_tracking_uri()),
    }
    if retrain is not None and retrain.old_train is not None:
        retrain.old_train.to_parquet(out_dir / OLD_TRAIN_FILE)
        job["old_train"] = str(out_dir / OLD_TRAIN_FILE)
    (out_dir / JOB_FILE).write_text(json.dumps(job, indent=2))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "ftops.train.worker", str(out_dir / JOB_FILE)]
    env = {**os.environ, **secrets, "FTOPS_DDP_BACKEND": backend(config.training.backend),
           "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    # torchrun would default every process to 1 thread; give each its share of the cores.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    run(command, env, out_dir / "ddp.log", progress)
    return load_result(out_dir)


def run(command: list[str], env: dict[str, str], log: Path,
        progress: Callable[[int, int, dict], None] | None) -> None:
    """Stream the workers' output to `log`, their progress lines to `progress`."""
    tail: deque[str] = deque(maxlen=40)
    with open(log, "w") as handle:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        try:
            for line in proc.stdout:
                if line.startswith(PROGRESS_PREFIX):
                    if progress is not None:
                        event = json.loads(line[len(PROGRESS_PREFIX):])
                        progress(event["step"], event["total"], event["metrics"])
                    continue
                handle.write(line)
                tail.append(line.rstrip())
            code = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if code != 0:
        raise TrainingError(f"Distributed training failed (torchrun exit {code}); full log: {log}. "
                            "Last lines:\n" + "\n".join(tail))


def report_progress(step: int, total: int, metrics: dict) -> None:
    numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    print(PROGRESS_PREFIX + json.dumps({"step": step, "total": total, "metrics": numbers}), flush=True)
