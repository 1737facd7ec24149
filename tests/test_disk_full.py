"""A full disk during a drift check and during an export, on a real small filesystem (a
tmpfs of a few MiB mounted for the test): a clear error that names the folder, nothing
half-written, the stored checks intact, no event for a check that was not stored, and no
folder that looks like a finished export.

Mounting needs root (or CAP_SYS_ADMIN); without it these tests are skipped."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_alerts import FakePrefect, alerting
from test_export import MAX_LENGTH, candidate_config, parity_inputs
from test_monitor import STEP, T0, Traffic

from ftops import export, monitor, train


@contextmanager
def small_disk(folder: Path, size_kib: int):
    """A tmpfs of `size_kib` at `folder`, unmounted afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(folder)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot run mount here ({exc}): the disk-full tests need a small real filesystem")
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({done.stderr.strip()}): run as root "
                    "(or with CAP_SYS_ADMIN) to test a full disk")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)


def fill(disk: Path) -> Path:
    """Write until the device is full; the filler file (unlink it to free the space)."""
    filler = disk / "filler.bin"
    block = b"\0" * (1 << 16)
    # Unbuffered: a buffered writer keeps the part of a block the full disk refused and fails
    # again when it is closed, depending on how much space the test left free.
    with open(filler, "ab", buffering=0) as handle:
        try:
            while True:
                handle.write(block)
        except OSError:
            pass
    return filler


@pytest.fixture(scope="module")
def traffic(airline_snapshot) -> Traffic:
    return Traffic(airline_snapshot)


@pytest.fixture
def prefect(monkeypatch) -> FakePrefect:
    fake = FakePrefect()
    monkeypatch.setattr(monitor.events, "emit_drift_event", fake)
    return fake


# ---------------------------------------------------------------- a drift check


@contextmanager
def gateway_holding(cfg):
    """An open connection to the prediction log, as the gateway keeps one: SQLite's shared-memory
    file stays, so the database still opens on a full disk."""
    holder = sqlite3.connect(cfg.resolved().uris.prediction_log.removeprefix("sqlite:///"))
    holder.execute("SELECT count(*) FROM drift_checks").fetchall()
    try:
        yield holder
    finally:
        holder.close()


def test_a_full_disk_stops_the_check_before_anything_is_stored(traffic, prefect, tmp_path):
    with small_disk(tmp_path / "disk", 24 * 1024) as disk:
        cfg = alerting(disk / "project")
        stored = monitor.check(cfg, traffic.window("airline"), traffic.reference, now=T0)
        reports = Path(stored.report_path).parent
        with gateway_holding(cfg):
            filler = fill(disk)
            with pytest.raises(monitor.MonitorError, match=f"No space left on the device holding {reports}") as full:
                monitor.check(cfg, traffic.window("other"), traffic.reference, now=T0 + STEP)
            assert "free space there" in str(full.value) and "no event was sent" in str(full.value)
            assert [p.name for p in reports.iterdir()] == [Path(stored.report_path).name]  # no half page, no temp
            assert [c.id for c in monitor.history(cfg)] == [stored.id] and prefect.sent == []

        filler.unlink()
        again = monitor.check(cfg, traffic.window("other"), traffic.reference, now=T0 + 2 * STEP)
        assert again.alert and again.event_sent is True and prefect.sent == [again.id]
        assert [c.id for c in monitor.history(cfg)] == [again.id, stored.id]


def test_a_full_disk_under_the_check_store_is_a_clear_error(traffic, prefect, tmp_path):
    """Nobody holds the SQLite log open: it cannot even be opened on a full disk."""
    with small_disk(tmp_path / "disk", 24 * 1024) as disk:
        cfg = alerting(disk / "project")
        stored = monitor.check(cfg, traffic.window("airline"), traffic.reference, now=T0)
        filler = fill(disk)
        with pytest.raises(monitor.MonitorError, match=f"No space left on the device holding {disk / 'project'} "):
            monitor.check(cfg, traffic.window("other"), traffic.reference, now=T0 + STEP)
        assert prefect.sent == []
        filler.unlink()
        assert [c.id for c in monitor.history(cfg)] == [stored.id]


def test_a_disk_that_fills_before_the_check_is_stored_sends_no_event(traffic, prefect, tmp_path, monkeypatch):
    """The report fits, then the disk is full: the check store (SQLite beside it) cannot write
    the check, so the check raises, its report is removed and nothing is sent."""
    with small_disk(tmp_path / "disk", 24 * 1024) as disk:
        cfg = alerting(disk / "project")
        stored = monitor.check(cfg, traffic.window("airline"), traffic.reference, now=T0)
        write_html, fillers = monitor.write_html, []

        def then_full(snapshots, path):
            written = write_html(snapshots, path)
            fillers.append(fill(disk))
            return written

        monkeypatch.setattr(monitor.publish, "write_html", then_full)
        with gateway_holding(cfg):
            with pytest.raises(monitor.MonitorError, match="No space left on the device") as full:
                monitor.check(cfg, traffic.window("other"), traffic.reference, now=T0 + STEP)
            assert "storing the check" in str(full.value)
            assert prefect.sent == [] and [c.id for c in monitor.history(cfg)] == [stored.id]
            assert [p.name for p in Path(stored.report_path).parent.iterdir()] == [Path(stored.report_path).name]
        fillers[0].unlink()


# ---------------------------------------------------------------- an export


@pytest.fixture(scope="module")
def candidate(tiny_model, airline_snapshot, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("disk-full-candidate")
    cfg = candidate_config(str(tiny_model), root, MAX_LENGTH, steps=2)
    full = next(c for c in cfg.candidates if c.name == "full")
    train.train_candidate(cfg, full, airline_snapshot, root / "full")
    return root / "full"


def test_a_full_disk_during_export_leaves_nothing_that_looks_like_an_export(candidate, airline_snapshot, tmp_path):
    with small_disk(tmp_path / "disk", 2 * 1024) as disk:  # the tokenizer fits, the ONNX model does not
        target = disk / "exports" / "v1"
        with pytest.raises(export.ExportError, match=f"No space left on the device holding {target.parent}"):
            export.export_model(candidate, target, [], MAX_LENGTH, variants=["fp32"], **parity_inputs(airline_snapshot))
        assert list(target.parent.iterdir()) == []  # neither the export nor its partial folder
        assert shutil.disk_usage(disk).used < 64 * 1024


def test_the_manifest_comes_last_and_a_failure_there_publishes_nothing(candidate, airline_snapshot, tmp_path,
                                                                      monkeypatch):
    with small_disk(tmp_path / "disk", 16 * 1024) as disk:
        target = disk / "exports" / "v1"
        write_manifest, fillers = export.write_manifest, []

        def full_before_the_manifest(result, gates, threads):
            assert (result.out_dir / "fp32" / export.MODEL_FILE).is_file() and result.out_dir != target
            fillers.append(fill(disk))
            return write_manifest(result, gates, threads)

        monkeypatch.setattr("ftops.export.stage.write_manifest", full_before_the_manifest)
        with pytest.raises(export.ExportError, match="No space left"):
            export.export_model(candidate, target, [], MAX_LENGTH, variants=["fp32"], **parity_inputs(airline_snapshot))
        assert sorted(p.name for p in disk.rglob("*")) == ["exports", "filler.bin"]

        fillers[0].unlink()
        monkeypatch.setattr("ftops.export.stage.write_manifest", write_manifest)
        result = export.export_model(candidate, target, [], MAX_LENGTH, variants=["fp32"],
                                     **parity_inputs(airline_snapshot))
        assert result.out_dir == target and export.verify_files(target) == []
        assert [p.name for p in target.parent.iterdir()] == ["v1"]


def test_an_export_killed_midway_is_cleaned_up_by_the_next_one(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    abandoned = tmp_path / f".v1.{dead.pid}-0123abcd{export.PARTIAL}"
    (abandoned / "fp32").mkdir(parents=True)
    live = tmp_path / f".v2.{os.getpid()}-0123abcd{export.PARTIAL}"
    live.mkdir()
    assert export.remove_abandoned(tmp_path) == [abandoned]
    assert not abandoned.exists() and live.is_dir()
