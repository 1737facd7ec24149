"""The closed loop, end to end, through the real services: first champion, traffic shift,
drift detected, the drift event starts the lifecycle through Prefect, the retrained model
is promoted. Reports the drift-to-retrain delay and before/after macro-F1 on both domains."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from ftops import services
from ftops.config import load_config
from ftops.serve.triton.server import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


# Two full fine-tunes, two exports and two gated deploys: 4.7 min on an idle 2-core machine
# (45 training samples/s), twice that when the CPU gives half the speed (seen: 23 samples/s).
@pytest.mark.timeout(2400)
def test_the_closed_loop(tmp_path, capsys):
    from flows import demo

    settings = yaml.safe_load((ROOT / "deploy" / "demo.yaml").read_text())
    settings["project"]["dir"] = str(tmp_path / "project")
    settings["uris"] = {"prefect_api": f"http://127.0.0.1:{free_port()}/api",
                        "mlflow_ui": f"http://127.0.0.1:{free_port()}"}
    settings["serving"].update({"http_port": 0, "grpc_port": 0, "metrics_port": 0, "gateway_port": 0,
                                "load_requests": 300})  # two P99 gates at half the demo's load: CI time
    settings["monitoring"]["ui_port"] = free_port()
    path = tmp_path / "e2e.yaml"
    path.write_text(yaml.safe_dump(settings))
    config = load_config(path)
    lines: list[str] = []
    saved = dict(os.environ)  # the demo exports the project's PREFECT_* / FTOPS_* settings
    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:
        # Prefect reads the environment once per process: an earlier test that imported it
        # (tests/faults) fixed another server's URL, so this one is named explicitly.
        with temporary_settings(updates={PREFECT_API_URL: config.uris.prefect_api}):
            story = demo.run(str(path), reset=True, say=lines.append)
    finally:
        rows = services.status(config)
        stopped = services.down(config)
        after = services.status(config)
        os.environ.clear()
        os.environ.update(saved)
    assert all(r.state == "down" for r in after), after
    assert {r.name for r in rows if r.state == "up"} <= set(stopped)

    with capsys.disabled():
        print("\n--- closed loop ---")
        for step in story.steps:
            print(f"{step.name:>28} ({step.seconds:5.0f} s): {step.what} | {step.figures}")
        print(f"drift event -> retraining run started: {story.drift_to_run_s:.1f} s")
        for who, figures in story.before_after.items():
            print(f"{who:>20}: " + ", ".join(f"{k} macro-F1 {v:.3f}" for k, v in figures.items()))
        print(f"total {story.total_s / 60:.1f} min")

    assert story.drift_to_run_s is not None and story.drift_to_run_s < 60
    before, after_ = story.before_after["before (previous)"], story.before_after["after (champion)"]
    assert after_["other domains"] > before["other domains"] + 0.05  # learned the new domains
    assert after_["airline"] > before["airline"] - 0.05               # and kept the old one
