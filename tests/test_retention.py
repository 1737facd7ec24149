"""Retention removes what it should and nothing else: old prediction-log rows (archived to
Parquet first), Triton versions no route names, oversized logs, old downloads, Evidently
snapshots and finished checkpoints. And the demo never wipes a folder it did not create."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ftops import predlog, procs, registry, retention
from ftops.config import Config
from ftops.errors import FtopsError

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def make_config(root: Path, **retention_settings) -> Config:
    return Config.model_validate({"project": {"dir": str(root), "name": "svc"}, "retention": retention_settings})


def row(request_id: str, ts: datetime) -> dict:
    return predlog.Record(request_id, f"text {request_id}", "positive", 0.9, [0.05, 0.05, 0.9], 3.0,
                          "svc-v1", "1", "champion", ts=ts).row()


# ------------------------------------------------------------ prediction log


def test_old_prediction_rows_are_archived_to_parquet_and_deleted(tmp_path):
    cfg = make_config(tmp_path, prediction_days=90, archive_chunk_rows=100)
    eng = predlog.engine(cfg.resolved().uris.prediction_log)
    old = [row(f"old-{i}", NOW - timedelta(days=120, seconds=-i)) for i in range(250)]
    new = [row(f"new-{i}", NOW - timedelta(days=89, seconds=-i)) for i in range(30)]
    predlog.write(eng, old[:100] + new[:10] + old[100:] + new[10:])  # interleaved ids
    predlog.add_feedback(eng, "old-7", "negative")
    before = predlog.read(eng, routes=predlog.ROUTES)

    report = retention.apply(cfg, now=NOW)

    assert report.errors == {} and report.archived["predictions"] == 250
    files = sorted((tmp_path / "archive" / "predictions").glob("*.parquet"))
    assert [str(p) for p in files] == sorted(report.archive_files) and len(files) == 3  # 100 rows a chunk
    archived = pd.concat(pd.read_parquet(p, columns=["id", "request_id", "feedback", "probs"])
                         for p in files).sort_values("id")
    assert list(archived["request_id"]) == [r["request_id"] for r in old]
    assert archived.set_index("request_id").loc["old-7", "feedback"] == "negative"
    assert list(archived.iloc[0]["probs"]) == [0.05, 0.05, 0.9]
    kept = predlog.read(eng, routes=predlog.ROUTES)
    newer = before[before["request_id"].str.startswith("new-")].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept.drop(columns="feedback_ts"), newer.drop(columns="feedback_ts"))
    assert retention.apply(cfg, now=NOW).archived["predictions"] == 0  # nothing left to archive
    eng.dispose()


def test_the_label_log_is_archived_on_the_same_horizon_and_an_absent_table_is_skipped(tmp_path, monkeypatch):
    cfg = make_config(tmp_path, prediction_days=90)
    eng = predlog.engine(cfg.resolved().uris.prediction_log)
    monkeypatch.setattr(retention, "ARCHIVED_TABLES", ("no_such_table", *retention.ARCHIVED_TABLES))
    labels = predlog.metadata.tables.get("feedback")
    if labels is not None:  # the append-only label log (absent from older releases of the log)
        with eng.begin() as conn:
            conn.execute(labels.insert(), [
                {"request_id": f"r{i}", "label": "positive", "sender": "ops", "replaces": False,
                 "ts": NOW - timedelta(days=100 if i < 3 else 10)} for i in range(5)])
    report = retention.apply(cfg, now=NOW)
    assert report.errors == {} and "no_such_table" not in report.archived
    if labels is not None:
        assert report.archived["feedback"] == 3
        with eng.connect() as conn:
            assert [r.request_id for r in conn.execute(labels.select().order_by(labels.c.id))] == ["r3", "r4"]
        assert len(pd.read_parquet(next((tmp_path / "archive" / "feedback").glob("*.parquet")))) == 3
    eng.dispose()


def test_a_fresh_project_is_pruned_without_creating_anything(tmp_path):
    report = retention.apply(make_config(tmp_path / "proj"), now=NOW)
    assert report.errors == {} and report.archived == {} and not (tmp_path / "proj").exists()


# ------------------------------------------------------------ Triton model repository


def test_the_repository_keeps_exactly_champion_previous_and_challenger(tmp_path):
    from test_serving import make_export

    from ftops.serve import deploy
    from ftops.serve.deployable import Deployable
    from ftops.serve.triton import models, repository, server

    cfg = make_config(tmp_path / "proj")
    repo = server.repository_dir(cfg)
    repo.mkdir(parents=True)
    model = Deployable.from_export(make_export(tmp_path / "export", seed=0))
    for tag in ("v1", "v2", "v3", "v4", "v5", "v6", "v7"):
        repository.write_version(repo, "svc", tag, model, cfg.serving)
    repository.write_version(repo, "other", "v1", model, cfg.serving)  # another project, shared repository
    (repo / "hand-made").mkdir()
    repository.mark_pending(repo, models.ModelNames.for_tag("svc", "v2"))  # being deployed right now
    repository.mark_pending(repo, models.ModelNames.for_tag("svc", "v7"))  # a deploy that died long ago
    old = time.time() - repository.PENDING_MAX_S - 60
    os.utime(repo / "svc-v7.pending", (old, old))
    assert deploy.prune_repository(cfg) == []  # nothing routed yet: nothing to tell stale from kept

    route = lambda tag: deploy.Route(tag, f"svc-{tag}", tag[1:], str(tmp_path / "export"), "fp32")  # noqa: E731
    deploy.save_routing(cfg, {"champion": route("v6"), "previous": route("v5"), "challenger": route("v3")})
    removed = retention.apply(cfg, now=NOW).repository

    assert removed == ["svc-v1", "svc-v4", "svc-v7"]
    assert set(repository.versions(repo, "svc")) == {"v2", "v3", "v5", "v6"}
    assert set(repository.versions(repo, "other")) == {"v1"} and (repo / "hand-made").is_dir()
    assert not list(repo.glob("svc-v1*")) and not list(repo.glob("svc-v7*"))
    for tag in ("v3", "v5", "v6"):
        assert repository.version_problems(repo, models.ModelNames.for_tag("svc", tag)) == []


# ------------------------------------------------------------ service logs


def test_logs_rotate_by_size_and_the_newest_are_kept(tmp_path):
    cfg = make_config(tmp_path, log_max_mb=0.001, log_keep=3)  # ~1 KB
    services = tmp_path / "services"
    services.mkdir()
    log, small = services / "prefect.log", services / "mlflow.log"
    small.write_text("short\n")
    for n in range(5):
        log.write_text(f"round {n}\n" * 200)
        assert retention.apply(cfg, now=NOW).logs == [str(log)]
    assert sorted(p.name for p in services.iterdir()) == ["mlflow.log", "prefect.log", "prefect.log.1",
                                                          "prefect.log.2", "prefect.log.3"]
    assert [services.joinpath(f"prefect.log.{i}").read_text().split("\n")[0] for i in (1, 2, 3)] == \
        ["round 4", "round 3", "round 2"]
    assert log.read_text() == "" and small.read_text() == "short\n"


def test_a_running_service_keeps_writing_to_its_log_after_a_rotation(tmp_path):
    """copytruncate: the child's append-mode stdout lands at the start of the emptied file."""
    log = tmp_path / "svc.log"
    code = "import time\nfor i in range(100000):\n    print(f'line {i}', flush=True); time.sleep(0.002)"
    with open(log, "ab") as handle:
        child = subprocess.Popen([sys.executable, "-c", code], stdout=handle)
    try:
        while log.stat().st_size < 2000:
            time.sleep(0.02)
        assert procs.rotate(log, 1000, keep=2)
        time.sleep(0.2)
        text = log.read_bytes()
    finally:
        child.kill()
        child.wait()
    assert text and b"\0" not in text and text.startswith(b"line ")  # no hole where the old content was
    first_after = int(text.split(b"\n")[0].split()[1])
    last_before = int(log.with_name("svc.log.1").read_bytes().split(b"\n")[-2].split()[1])
    assert first_after > last_before


# ------------------------------------------------------------ downloads, snapshots, checkpoints


def test_old_downloads_go_and_aliased_or_recent_ones_stay(tmp_path, monkeypatch):
    cfg = make_config(tmp_path, downloads_keep=2)
    root = registry.downloads_dir(cfg)
    for n in range(1, 7):
        (root / f"v{n}" / "model").mkdir(parents=True)
        os.utime(root / f"v{n}", (time.time() - 1000 + n, time.time() - 1000 + n))  # v6 used last
    (root / "notes").mkdir()
    dead, fresh = root / "v6" / f"{registry.PARTIAL}dead", root / "v5" / f"{registry.PARTIAL}now"
    dead.mkdir(), fresh.mkdir()
    os.utime(dead, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    champion = registry.Version("svc", "1", "run", "src", ["champion"], {}, 0)
    monkeypatch.setattr(registry, "find", lambda config, alias: champion if alias == "champion" else None)

    removed = retention.prune_downloads(cfg)

    assert sorted(removed) == ["v2", "v3", "v4", f"v6/{registry.PARTIAL}dead"]
    assert sorted(p.name for p in root.iterdir()) == ["notes", "v1", "v5", "v6"]
    assert fresh.is_dir() and (root / "v6" / "model").is_dir()


def test_evidently_snapshots_beyond_the_count_are_pruned(tmp_path):
    from evidently import Report
    from evidently.metrics import RowCount

    from ftops import monitor

    cfg = make_config(tmp_path, evidently_snapshots=3)
    other = cfg.model_copy(update={"project": cfg.project.model_copy(update={"name": "other"})})
    snapshot = Report([RowCount()]).run(pd.DataFrame({"a": [1, 2, 3]}), None)
    ids = [monitor.add_snapshots(cfg, [snapshot], ["a"]) for _ in range(7)]
    monitor.add_snapshots(other, [snapshot], ["a"])

    assert retention.apply(cfg, now=NOW).snapshots == 4
    ws = monitor.workspace(cfg)
    runs = {p.name: sorted(str(r) for r in ws.list_runs(p.id)) for p in ws.list_projects()}
    assert runs["svc"] == sorted(ids[-3:]) and len(runs["other"]) == 1


def test_checkpoints_of_finished_candidates_are_deleted_and_models_stay(tmp_path):
    runs = tmp_path / "runs"
    for folder in (runs / "r1" / "full", runs / "r2" / "lora"):
        (folder / "checkpoints" / "checkpoint-4").mkdir(parents=True)
        (folder / "checkpoints" / "checkpoint-4" / "model.safetensors").write_bytes(b"w")
        (folder / "model").mkdir()
    (runs / "r1" / "full" / "result.json").write_text("{}")  # r2/lora is still training
    assert retention.apply(make_config(tmp_path, keep_checkpoints=True), now=NOW).checkpoints == []

    assert retention.apply(make_config(tmp_path), now=NOW).checkpoints == ["r1/full/checkpoints"]
    assert not (runs / "r1" / "full" / "checkpoints").exists() and (runs / "r1" / "full" / "model").is_dir()
    assert (runs / "r2" / "lora" / "checkpoints" / "checkpoint-4").is_dir()


def test_a_failing_step_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    (tmp_path / "runs" / "r" / "c" / "checkpoints").mkdir(parents=True)
    (tmp_path / "runs" / "r" / "c" / "result.json").write_text("{}")

    def broken(config):
        raise OSError("disk unavailable")

    monkeypatch.setattr(retention, "rotate_logs", broken)
    report = retention.apply(make_config(tmp_path), now=NOW)
    assert report.errors == {"service logs": "OSError: disk unavailable"}
    assert report.checkpoints == ["r/c/checkpoints"] and "FAILED service logs" in report.lines()[-1]


def test_ftops_prune_prints_what_it_removed(tmp_path):
    from typer.testing import CliRunner

    from ftops.cli import app

    (tmp_path / "runs" / "r" / "c" / "checkpoints").mkdir(parents=True)
    (tmp_path / "runs" / "r" / "c" / "result.json").write_text("{}")
    result = CliRunner().invoke(app, ["prune", "--project-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "training checkpoints: 1 folders deleted (r/c/checkpoints)" in result.output
    assert "prediction log: 0 rows archived" in result.output


# ------------------------------------------------------------ the demo's project dir


class Stop(Exception):
    """Raised in place of starting the services: the demo got past its project-dir check."""


@pytest.fixture
def demo_run(tmp_path, monkeypatch):
    """demo.run on a config whose project.dir is tmp_path/project, the services stubbed."""
    from flows import demo

    from ftops import services

    calls = []
    monkeypatch.setattr(services, "environment", lambda config, path: {})
    monkeypatch.setattr(services, "down", lambda config: calls.append("down"))

    def up(config, path):
        calls.append("up")
        raise Stop

    monkeypatch.setattr(services, "up", up)
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump({"project": {"dir": str(tmp_path / "project")}}))

    def run(reset: bool = True):
        with pytest.raises(Stop):
            demo.run(str(path), reset=reset, say=lambda line: None)

    return run, tmp_path / "project", calls, str(path)


def test_the_demo_refuses_a_non_empty_folder_it_did_not_create(demo_run):
    from flows import demo

    run, folder, calls, path = demo_run
    (folder / "shared").mkdir(parents=True)
    (folder / "shared" / "team-data.csv").write_text("text,label\n")
    with pytest.raises(FtopsError, match=r"not empty and was not created by the demo .* no \.ftops-demo file.*"
                                         r"Nothing in it was touched.*--keep"):
        demo.run(path, reset=True, say=lambda line: None)
    assert calls == [] and sorted(p.name for p in folder.rglob("*")) == ["shared", "team-data.csv"]
    run(reset=False)  # --keep: used as it is, nothing deleted, not claimed
    assert (folder / "shared" / "team-data.csv").is_file() and not (folder / demo.MARKER).exists()


def test_the_demo_creates_marks_and_later_resets_its_own_folder(demo_run):
    from flows import demo

    run, folder, calls, _ = demo_run
    run()  # missing: created and marked, nothing to stop
    assert calls == ["up"] and sorted(p.name for p in folder.iterdir()) == [demo.MARKER]
    (folder / "mlflow.db").write_text("from the last demo")
    run()  # marked: services stopped, folder wiped and marked again
    assert calls == ["up", "down", "up"] and sorted(p.name for p in folder.iterdir()) == [demo.MARKER]
    (folder / demo.MARKER).unlink()
    run()  # empty but unmarked: claimed
    assert (folder / demo.MARKER).is_file()
