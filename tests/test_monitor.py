"""Drift monitoring on the real tweets: in-domain traffic stays quiet, other domains drift,
one shift gives one alert, and every output (table, report, workspace, UI, Prefect event)
is real. Predictions come from the TF-IDF baseline: the monitor needs no transformer."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sqlalchemy import create_engine, text

from ftops import monitor
from ftops.config import Config
from ftops.data.corpora import load_builtin
from ftops.monitor import events, frames, store, ui

WINDOW = 300
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
STEP = timedelta(minutes=15)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_config(root: Path, **monitoring) -> Config:
    """A project in `root`; the Prefect URL points at a closed port unless a test starts one."""
    settings = {"window_size": WINDOW, "min_window": 200, "cooldown_hours": 24, **monitoring}
    return Config.model_validate({"project": {"dir": str(root)}, "monitoring": settings,
                                  "uris": {"prefect_api": f"http://127.0.0.1:{free_port()}/api"}})


class Traffic:
    """Seeded pools of real tweets and the baseline's predictions on them."""

    def __init__(self, snapshot):
        from ftops.train import fit_baseline

        self.pipeline = fit_baseline(snapshot).pipeline
        self.labels = list(snapshot.labels)
        seen = set(pd.concat([snapshot.split(s) for s in ("train", "validation", "test")])["text"])
        airline, _ = load_builtin("builtin:tweets?domain=airline")
        other, _ = load_builtin("builtin:tweets?exclude_domain=airline")
        self.airline = airline[~airline["text"].isin(seen)].sample(frac=1.0, random_state=0).reset_index(drop=True)
        self.other = other.sample(frac=1.0, random_state=0).reset_index(drop=True)
        self.reference = self.predict(self.airline.iloc[:1000], feedback=True)
        self._next = {"airline": 1000, "other": 0}

    def predict(self, frame: pd.DataFrame, feedback: bool = False) -> pd.DataFrame:
        classes = list(self.pipeline.classes_)
        probs = self.pipeline.predict_proba(frame["text"])[:, [classes.index(l) for l in self.labels]]
        return monitor.predictions_frame(frame["text"], probs, self.labels, frame["label"] if feedback else None)

    def window(self, domain: str, n: int = WINDOW, feedback: bool = False) -> pd.DataFrame:
        """The next `n` unseen tweets of a domain: windows never overlap each other or the reference."""
        pool = self.airline if domain == "airline" else self.other
        start = self._next[domain]
        self._next[domain] = start + n
        return self.predict(pool.iloc[start:start + n], feedback)


@pytest.fixture(scope="module")
def traffic(airline_snapshot) -> Traffic:
    return Traffic(airline_snapshot)


@pytest.fixture(scope="module")
def checked(traffic, tmp_path_factory):
    """One project with an in-domain check, then an other-domain check with full feedback."""
    root = tmp_path_factory.mktemp("monitored")
    cfg = make_config(root)
    quiet = monitor.check(cfg, traffic.window("airline"), traffic.reference, now=T0)
    shifted = monitor.check(cfg, traffic.window("other", feedback=True), traffic.reference, now=T0 + STEP)
    return cfg, quiet, shifted


def test_held_out_airline_tweets_show_no_drift(checked):
    cfg, quiet, _ = checked
    assert quiet.decision == "no_drift" and not quiet.alert
    assert quiet.signals["text"].score < cfg.monitoring.text_auc_threshold
    assert not quiet.signals["text"].drifted
    assert quiet.drifted_share < cfg.monitoring.drift_share
    assert quiet.accuracy is None and "label" not in quiet.signals  # no feedback, no label drift


def test_other_domain_tweets_drift_on_text_predictions_and_labels(checked, traffic):
    cfg, _, shifted = checked
    assert shifted.decision == "drift"
    assert shifted.signals["text"].score > 0.9 and shifted.signals["text"].drifted
    assert shifted.drifted_share >= cfg.monitoring.drift_share
    assert shifted.signals["prediction"].drifted and shifted.signals["label"].drifted
    assert not shifted.alert and "1 of the last 2" in shifted.reason  # persistence: one window is not enough
    names = [s.name for s in shifted.top(3)]
    assert all(shifted.signals[n].drifted for n in names)


def test_live_quality_is_computed_on_feedback_rows_only(traffic, tmp_path):
    from sklearn.metrics import accuracy_score, f1_score

    window = traffic.window("other", feedback=True)
    window.loc[window.index[120:], "label"] = None  # feedback arrived for 120 of 300 answers
    result = monitor.check(make_config(tmp_path), window, traffic.reference, now=T0)
    labelled = window.iloc[:120]
    assert result.feedback_rows == 120
    assert result.accuracy == pytest.approx(accuracy_score(labelled["label"], labelled["prediction"]))
    assert result.macro_f1 == pytest.approx(f1_score(labelled["label"], labelled["prediction"], average="macro"))


def test_an_alternating_stream_alerts_once_per_cooldown(traffic, tmp_path, monkeypatch):
    sent = []
    monkeypatch.setattr(events, "emit_drift_event", lambda config, result: sent.append(result.id) or True)
    cfg = make_config(tmp_path)
    drifted, clean = traffic.window("other"), traffic.window("airline")
    stream = [clean, drifted] * 4
    results = [monitor.check(cfg, w, traffic.reference, now=T0 + i * STEP) for i, w in enumerate(stream)]
    assert [r.decision for r in results] == ["no_drift", "drift"] * 4
    assert [r.alert for r in results] == [False, False, False, True, False, False, False, False]
    assert results[3].event_sent is True and sent == [results[3].id]  # the cooldown runs from a delivered alert
    assert "cooldown" in results[5].reason and "cooldown" in results[7].reason
    later = results[3].ts + timedelta(hours=cfg.monitoring.cooldown_hours) + STEP
    again = [monitor.check(cfg, drifted, traffic.reference, now=later + i * STEP) for i in range(2)]
    assert [r.alert for r in again] == [True, False]  # still shifted after the cooldown: one more, then quiet


def test_persistence_starts_over_with_a_new_champion(traffic, tmp_path):
    cfg = make_config(tmp_path)
    drifted = traffic.window("other")
    first, second = traffic.reference.copy(), traffic.reference.copy()
    first.attrs["version"], second.attrs["version"] = "1", "2"
    old = monitor.check(cfg, drifted, first, now=T0)
    new = monitor.check(cfg, drifted, second, now=T0 + STEP)
    assert old.drift and new.drift and not new.alert and "1 of the last 1" in new.reason


def test_twenty_clean_windows_raise_no_alert(traffic, tmp_path):
    cfg = make_config(tmp_path, keep_reports=5)
    results = [monitor.check(cfg, traffic.window("airline"), traffic.reference, now=T0 + i * STEP)
               for i in range(20)]
    assert sum(r.alert for r in results) == 0
    assert sum(r.drift for r in results) <= 1
    assert max(r.signals["text"].score for r in results) < cfg.monitoring.strong_auc
    kept = sorted(p.name for p in Path(results[0].report_path).parent.glob("*.html"))
    assert kept == sorted(Path(r.report_path).name for r in results[-5:])  # older reports pruned


def test_checks_are_stored_and_survive_a_new_engine(checked, traffic):
    cfg, quiet, shifted = checked
    small = monitor.check(cfg, traffic.window("airline", n=50), traffic.reference, now=T0 + 2 * STEP)
    assert small.decision == "too_small" and small.report_path is None
    url = cfg.resolved().uris.prediction_log
    with create_engine(url).connect() as conn:  # a fresh engine: what a restarted process sees
        rows = conn.execute(text("SELECT id, decision, alert, drifted_share, window_size, scores, report_path "
                                 "FROM drift_checks ORDER BY id")).fetchall()
        tables = {r[0] for r in conn.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))}
    assert {"predictions", "drift_checks"} <= tables  # the prediction log's database
    assert [r.decision for r in rows[:3]] == ["no_drift", "drift", "too_small"]
    assert rows[1].drifted_share == pytest.approx(shifted.drifted_share)
    assert json.loads(rows[1].scores)["text"]["score"] == pytest.approx(shifted.signals["text"].score)
    history = monitor.history(cfg)
    assert [c.id for c in history[:3]] == [small.id, shifted.id, quiet.id]
    assert history[1].signals["text"].drifted and history[1].ts == shifted.ts


def test_the_window_comes_from_the_prediction_log(traffic, tmp_path):
    from ftops import predlog

    cfg = make_config(tmp_path, window_size=250)
    eng = store.checks_engine(cfg)
    window = traffic.window("other", n=400)
    routes = ["champion", "challenger", "shadow", "champion"] * 100
    predlog.write(eng, [predlog.Record(f"r{i}", row.text, row.prediction, row.confidence, [0.0], 5.0, "m", "1",
                                       routes[i], ts=T0 + timedelta(seconds=i)).row()
                        for i, row in enumerate(window.itertuples())])
    predlog.add_feedback(eng, "r399", "neutral")
    current = frames.current_window(cfg, eng)
    assert len(current) == 250 and set(current.columns) >= {"text", "prediction", "confidence", "label"}
    assert current["label"].notna().sum() == 1
    result = monitor.check(cfg, reference=traffic.reference, now=T0 + timedelta(hours=1))
    assert result.window_size == 250 and result.decision == "drift"


def test_the_report_is_one_self_contained_html_file(checked):
    cfg, quiet, shifted = checked
    for result in (quiet, shifted):
        path = Path(result.report_path)
        assert path.parent == cfg.resolved().project.dir / "monitoring" / "reports"
        html = path.read_text(encoding="utf-8")
        assert len(html) > 100_000 and "<html" in html.lower()
        assert "<script src=" not in html.replace("'", '"').lower()  # Evidently's JS is inlined
        assert 'rel="stylesheet" href="http' not in html


def test_the_workspace_gets_a_project_with_snapshots_and_panels(checked, traffic):
    cfg, _, _ = checked
    ws = monitor.workspace(cfg)
    (project,) = [p for p in ws.list_projects() if p.name == cfg.project.name]
    runs = ws.list_runs(project.id)
    assert len(runs) >= 2
    titles = [p.title for p in ws.get_dashboard(project.id).panels]
    assert "Drifted share over time" in titles and "Live quality on feedback rows" in titles
    assert any("Prediction distribution" in t for t in titles) and len(titles) == len(set(titles))
    monitor.check(cfg, traffic.window("airline"), traffic.reference, now=T0 + 3 * STEP)
    assert len(ws.get_dashboard(project.id).panels) == len(titles)  # panels are created once


def test_embedding_drift_on_a_sample_and_the_reference_round_trip(tiny_model, traffic, tmp_path):
    import mlflow
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ftops import registry, tracking

    cfg = make_config(tmp_path, embedding_sample=100)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_model, num_labels=3, ignore_mismatched_sizes=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    labels = traffic.labels
    reference = monitor.build_reference(model, tokenizer, labels, traffic.airline.iloc[:400], 48,
                                        embedding_sample=100)
    assert reference["embedding"].notna().sum() == 100
    tracking.use_project(cfg)
    with mlflow.start_run() as run:
        pass
    monitor.save_reference(cfg, run.info.run_id, reference)
    registry.set_alias(cfg, registry.CHAMPION, registry.register(cfg, run.info.run_id).version)
    loaded = monitor.load_reference(cfg)
    assert loaded.attrs["version"] == "1" and len(loaded) == 400
    assert np.allclose(np.stack(loaded["embedding"].dropna().to_list()),
                       np.stack(reference["embedding"].dropna().to_list()))

    embed = monitor.embedder(model, tokenizer, 48)
    scores = {}
    for i, domain in enumerate(("airline", "other")):
        rows = (traffic.airline.iloc[2000:2200] if domain == "airline" else traffic.other.iloc[-200:])
        with torch.inference_mode():
            pred = model(**tokenizer(list(rows["text"]), padding=True, truncation=True, max_length=48,
                                     return_tensors="pt")).logits.softmax(-1).numpy()
        current = monitor.predictions_frame(rows["text"], pred, labels)
        result = monitor.check(cfg, current, now=T0 + i * STEP, embed=embed)  # reference: the champion's
        assert result.reference_version == "1"
        scores[domain] = result.signals["embedding"].score
        assert "Drift in embeddings" in Path(result.report_path).read_text(encoding="utf-8")  # one page, both reports
    assert scores["other"] > scores["airline"] and scores["airline"] < cfg.monitoring.strong_auc


def test_a_missing_reference_artifact_is_a_clear_error(tmp_path):
    import mlflow

    from ftops import registry, tracking

    cfg = make_config(tmp_path)
    tracking.use_project(cfg)
    with mlflow.start_run() as run:
        pass
    registry.set_alias(cfg, registry.CHAMPION, registry.register(cfg, run.info.run_id).version)
    with pytest.raises(monitor.MonitorError, match="has no reference data artifact reference/reference.parquet"):
        monitor.load_reference(cfg)


# ---------------------------------------------------------------- real servers


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def test_the_evidently_ui_serves_the_project(checked, tmp_path):
    from typer.testing import CliRunner

    from ftops.cli import app

    cfg, _, _ = checked
    config_file = tmp_path / "ftops.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    port = free_port()
    runner = CliRunner()
    up = runner.invoke(app, ["monitor", "ui", "up", "--port", str(port), "--config", str(config_file)])
    assert up.exit_code == 0, up.output
    info = monitor.ui_status(cfg)
    try:
        assert info is not None and info.port == port and info.host == "127.0.0.1"
        assert b"<!DOCTYPE html>" in _get(f"{info.url}/")
        projects = json.loads(_get(f"{info.url}/api/projects"))
        (project,) = [p for p in projects if p["name"] == cfg.project.name]
        snapshots = json.loads(_get(f"{info.url}/api/projects/{project['id']}/snapshots"))
        assert len(snapshots) >= 2
        dashboard = json.loads(_get(f"{info.url}/api/v2/dashboards/{project['id']}"))
        assert "Drifted share over time" in [p["title"] for p in dashboard["panels"]]
        share = {"tags": [], "metadata": {}, "metric": "evidently:metric_v2:DriftedColumnsCount",
                 "metric_labels": {"value_type": "share"}}
        series = _post(f"{info.url}/api/v2/snapshots/{project['id']}/data_series_batch", {"series_filter": [share]})
        assert len(series["sources"]) >= 2 and max(v for v in series["series"][0]["values"] if v is not None) >= 0.5
        _screenshot(f"{info.url}/projects/{project['id']}", tmp_path / "evidently.png")
    finally:
        down = runner.invoke(app, ["monitor", "ui", "down", "--config", str(config_file)])
    assert down.exit_code == 0 and "stopped" in down.output
    assert monitor.ui_status(cfg) is None
    assert not Path(f"/proc/{info.pid}").exists() or _zombie(info.pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _screenshot(url: str, path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return  # no browser on this machine: the HTML and API checks above stand
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=8000",
                    "--window-size=1400,1000", f"--screenshot={path}", url], timeout=90, capture_output=True)
    assert path.is_file() and path.stat().st_size > 20_000


@pytest.mark.parametrize("written_by", ["procs", "an older release"])
def test_a_stale_ui_state_file_is_removed(tmp_path, written_by):
    cfg = make_config(tmp_path)
    state = ui.ui_dir(cfg) / "ui.json"
    state.parent.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    older = {"pid": dead.pid, "host": "127.0.0.1", "port": 1, "workspace": "w", "log": "l"}
    current = {"name": "ui", "pid": dead.pid, "url": "http://127.0.0.1:1", "log": "l", "marker": "evidently"}
    state.write_text(json.dumps(current if written_by == "procs" else older))
    assert monitor.ui_status(cfg) is None and not state.exists()
    assert monitor.ui_stop(cfg) is False


@pytest.fixture
def prefect_server(tmp_path):
    """A real `prefect server start` on a free port with its own SQLite home, stopped by PID."""
    port = free_port()
    home = tmp_path / "prefect-home"
    home.mkdir()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false", "PREFECT_API_URL": ""}
    with open(tmp_path / "prefect.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 90
        while not events.prefect_reachable(api, timeout=1):
            assert proc.poll() is None, (tmp_path / "prefect.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "prefect server not healthy in 90 s"
            time.sleep(0.5)
        yield api
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_a_drift_alert_reaches_a_real_prefect_server(prefect_server, traffic, tmp_path):
    cfg = make_config(tmp_path, persistence_windows=1, persistence_hits=1)
    cfg.uris.prefect_api = prefect_server
    result = monitor.check(cfg, traffic.window("other"), traffic.reference, now=datetime.now(UTC))
    assert result.alert and result.event_sent is True
    query = {"filter": {"event": {"name": [monitor.EVENT]}}}
    deadline = time.monotonic() + 30
    while not (events := _post(f"{prefect_server}/events/filter", query)["events"]):
        assert time.monotonic() < deadline, "the drift event never showed up in the Prefect API"
        time.sleep(0.5)
    (event,) = events
    assert event["event"] == "ftops.drift.detected"
    assert event["resource"]["prefect.resource.id"] == f"ftops.model.{cfg.project.name}"
    assert event["payload"]["scores"] == pytest.approx(result.scores())
    assert event["payload"]["drifted_share"] == pytest.approx(result.drifted_share)
    assert monitor.history(cfg)[0].event_sent is True
