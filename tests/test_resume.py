"""Resumable training rounds: `ftops train` killed mid-epoch, then `ftops train --resume RUN_ID`
continues the same MLflow round from the candidate's last checkpoint; a retried flow run does
the same by itself. The real CLI (a subprocess killed with SIGKILL), real MLflow (sqlite), the
tiny random BERT."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from ftops import retention, train
from ftops.config import load_config

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
# 279 training rows, batch 4: 70 steps in one epoch, a checkpoint every 8 steps
FULL = {"name": "full", "strategy": "full", "batch_size": 4, "epochs": 1, "evals_per_epoch": 8,
        "early_stopping_patience": 0}
QUICK = {**FULL, "name": "quick", "max_steps": 6}


def make_project(root: Path, tiny_model: Path, snapshot, candidates: list[dict]) -> Path:
    """A project folder with the session's airline snapshot copied in; returns its YAML."""
    shutil.copytree(snapshot.path, root / "proj" / "data" / snapshot.id)
    path = root / "ftops.yaml"
    path.write_text(yaml.safe_dump({
        "project": {"dir": str(root / "proj"), "name": "resume"},
        "model": {"name": str(tiny_model), "max_length": 32}, "candidates": candidates}))
    return path


def ftops(*args: str, **kwargs):
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return [str(PYTHON), "-m", "ftops", *args], {"cwd": ROOT, "env": env, **kwargs}


def kill_once_checkpointed(path: Path, snapshot_id: str, runs: Path) -> subprocess.CompletedProcess:
    """`ftops train` SIGKILLed as soon as candidate `full` has a complete checkpoint (step 8 of 70)."""
    command, options = ftops("train", "-c", str(path), "--snapshot", snapshot_id)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **options)
    deadline = time.monotonic() + 120
    try:
        while not list(runs.glob("*/full/checkpoints/checkpoint-*/trainer_state.json")):
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        proc.kill()
        output = proc.communicate()[0].decode()
    assert proc.returncode == -signal.SIGKILL, output[-3000:]
    return subprocess.CompletedProcess(command, proc.returncode, output)


@pytest.fixture(scope="module")
def resumed(tiny_model, airline_snapshot, tmp_path_factory):
    """A round killed once its second candidate has a checkpoint (the first finished), then
    resumed by the CLI."""
    root = tmp_path_factory.mktemp("resume")
    path = make_project(root, tiny_model, airline_snapshot, [QUICK, FULL])
    cfg = load_config(path)
    runs = cfg.resolved().project.dir / "runs"
    killed = kill_once_checkpointed(path, airline_snapshot.id, runs)
    (folder,) = runs.iterdir()
    candidate = folder / "full"
    at_kill = train.resume_point(candidate)  # (step, of) of its last complete checkpoint
    pruned = retention.prune_checkpoints(cfg)  # the finished candidate's go, the unfinished one's stay
    kept = files_of(folder / "quick"), runs_of(cfg)
    command, options = ftops("train", "-c", str(path), "--resume", folder.name)
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, **options)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return SimpleNamespace(cfg=cfg, path=path, run_id=folder.name, folder=folder, candidate=candidate,
                           killed=killed, at_kill=at_kill, pruned=pruned, kept=kept, done=done)


def files_of(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")}


def runs_of(cfg) -> dict[str, tuple]:
    """run name -> (status, end time, metric names) of every run of the project."""
    client, experiment = client_of(cfg)
    return {r.info.run_name: (r.info.status, r.info.end_time, sorted(r.data.metrics))
            for r in client.search_runs([experiment])}


def client_of(cfg):
    from mlflow import MlflowClient

    from ftops import tracking

    experiment = tracking.use_project(cfg)
    return MlflowClient(), experiment


def test_a_killed_round_resumes_its_candidate_from_the_last_checkpoint(resumed):
    assert f"round {resumed.run_id} started" in resumed.killed.stdout  # the id to resume, said at once
    assert resumed.at_kill and resumed.at_kill[0] < resumed.at_kill[1] == 70, resumed.at_kill  # mid-epoch
    run_id = resumed.run_id
    assert resumed.pruned == [f"{run_id}/quick/checkpoints"] and (resumed.candidate / "checkpoints").is_dir()
    step = resumed.at_kill[0]
    assert f"resuming full from step {step} of 70" in resumed.done.stdout
    # the candidate that had finished is kept as it was: its folder, its MLflow run
    assert "quick: finished, kept" in resumed.done.stdout
    assert files_of(resumed.folder / "quick") == resumed.kept[0]
    assert runs_of(resumed.cfg)["quick"] == resumed.kept[1]["quick"]

    result = json.loads((resumed.candidate / train.RESULT_FILE).read_text())
    assert result["resumed_from"] == f"checkpoint-{step}" and result["global_step"] == 70
    assert (resumed.candidate / "model" / "model.safetensors").is_file()

    client, experiment = client_of(resumed.cfg)
    parents = [r for r in client.search_runs([experiment]) if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.run_id for r in parents] == [run_id] and parents[0].info.status == "FINISHED"
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{run_id}'")
    assert sorted(c.info.run_name for c in children) == ["baseline", "full", "quick"]
    full = next(c for c in children if c.info.run_name == "full")
    assert full.info.status == "FINISHED"
    assert full.data.metrics["test_macro_f1"] == pytest.approx(result["test_macro_f1"])
    # the resumed process went on from the checkpoint: no training step up to it was logged twice
    logged = [m.step for m in client.get_metric_history(full.info.run_id, "loss")]
    early = [s for s in logged if s <= step]
    assert early and len(early) == len(set(early)) and max(logged) >= 60, logged

    # finished now: retention drops its checkpoints, the model stays
    assert retention.prune_checkpoints(resumed.cfg) == [f"{run_id}/full/checkpoints"]
    assert (resumed.candidate / "model" / "model.safetensors").is_file()


def state_of(resumed):
    client, experiment = client_of(resumed.cfg)
    runs = client.search_runs([experiment])
    metrics = {(r.info.run_id, k): len(client.get_metric_history(r.info.run_id, k))
               for r in runs for k in r.data.metrics}
    return {r.info.run_id: (r.info.status, r.info.end_time) for r in runs}, metrics, files_of(resumed.folder)


def invoke(*args: str):
    from typer.testing import CliRunner

    from ftops.cli import app

    return CliRunner().invoke(app, list(args))


def test_resuming_a_finished_round_changes_nothing_and_says_so(resumed):
    before = state_of(resumed)
    done = invoke("train", "-c", str(resumed.path), "--resume", resumed.run_id)
    assert done.exit_code == 0, done.output
    assert f"round {resumed.run_id} is already finished: nothing trained" in done.output
    assert "│ full" in done.output  # the round's results, read back
    assert state_of(resumed) == before


def refusal(*args: str) -> str:
    """The ResumeError the CLI stops with (`main()` prints it and exits 2)."""
    done = invoke(*args)
    assert isinstance(done.exception, train.ResumeError), done.output
    return str(done.exception)


def test_a_bad_run_id_is_a_clear_error(resumed):
    said = refusal("train", "-c", str(resumed.path), "--resume", "0123456789abcdef0123456789abcdef")
    assert "No MLflow run '0123456789abcdef0123456789abcdef' in project 'resume'" in said
    assert f"Latest rounds: {resumed.run_id} (finished)" in said

    client, experiment = client_of(resumed.cfg)
    child = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{resumed.run_id}'")[0]
    said = refusal("train", "-c", str(resumed.path), "--resume", child.info.run_id)
    assert f"of round {resumed.run_id}; resume the round: --resume {resumed.run_id}" in said


def test_a_resume_with_another_config_or_snapshot_is_refused(resumed, airline_snapshot):
    said = refusal("train", "-c", str(resumed.path), "--resume", resumed.run_id, "--max-steps", "5")
    assert f"Cannot resume round {resumed.run_id}: the config differs: candidates.full.max_steps: null -> 5" in said
    other = dataclasses.replace(airline_snapshot, id="another-snapshot")
    with pytest.raises(train.ResumeError, match="trained on data snapshot .* this resume has another-snapshot"):
        train.train_round(resumed.cfg, other, resume=resumed.run_id)


def test_a_retried_flow_run_resumes_its_round(tiny_model, airline_snapshot, tmp_path, monkeypatch):
    """The retry runs the flow again under the same flow run id (what Prefect's retries and a
    worker's PREFECT__FLOW_RUN_ID give it): the round it started before is continued, its
    interrupted candidate from the checkpoint, the one it never reached from the start."""
    from flows import lifecycle

    path = make_project(tmp_path, tiny_model, airline_snapshot, [FULL, QUICK])
    cfg = load_config(path)
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "3b1f6c2e-retry-me")
    real = train.train_candidate

    def dies_after_a_checkpoint(config, candidate, snapshot, out_dir, retrain=None, progress=None):
        def report(step, total, metrics):
            if train.last_checkpoint(out_dir):
                raise RuntimeError("injected: the worker died")
        return real(config, candidate, snapshot, out_dir, retrain, report)

    monkeypatch.setattr(train.rounds, "train_candidate", dies_after_a_checkpoint)
    with pytest.raises(RuntimeError, match="injected"):
        lifecycle.train_candidates.fn(str(path), airline_snapshot.id)
    first = train.find_round(cfg, "3b1f6c2e-retry-me")
    assert first is not None
    folder = cfg.resolved().project.dir / "runs" / first
    assert not (folder / "quick").exists()
    monkeypatch.setattr(train.rounds, "train_candidate", real)

    out = lifecycle.train_candidates.fn(str(path), airline_snapshot.id)
    assert out["round_run_id"] == first and set(out["candidates"]) == {"full", "quick"}
    result = json.loads((folder / "full" / train.RESULT_FILE).read_text())
    assert result["resumed_from"] == "checkpoint-8" and result["global_step"] == 70
    quick = json.loads((folder / "quick" / train.RESULT_FILE).read_text())
    assert quick["resumed_from"] is None and quick["global_step"] == 6
    client, experiment = client_of(cfg)
    parents = [r for r in client.search_runs([experiment]) if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.run_id for r in parents] == [first]


def test_a_checkpoint_half_written_by_a_kill_is_skipped_and_removed(tmp_path):
    """The Trainer writes trainer_state.json last: a folder without a readable one is a save
    the kill interrupted; the complete one before it is where training continues."""
    root = tmp_path / "checkpoints"
    for step, state in ((8, {"global_step": 8, "max_steps": 70}), (16, None), (24, "{\"global_st")):
        (root / f"checkpoint-{step}").mkdir(parents=True)
        (root / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"w")
        if state is not None:
            text = state if isinstance(state, str) else json.dumps(state)
            (root / f"checkpoint-{step}" / "trainer_state.json").write_text(text)
    assert train.last_checkpoint(tmp_path) == str(root / "checkpoint-8")
    assert train.resume_point(tmp_path) == (8, 70)
    train.drop_partial_checkpoints(tmp_path)
    assert [p.name for p in train.checkpoints(tmp_path)] == ["checkpoint-8"]
