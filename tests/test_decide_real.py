"""The A/B on real trained MiniLM candidates (slow)."""

import subprocess
import sys

import pytest

from ftops import data, decide, train
from ftops.config import Config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ab")
    cfg = Config.model_validate({
        "project": {"dir": str(root), "name": "ab"}, "model": {"max_length": 48},
        "data": {"source": "builtin:tweets?domain=airline", "max_rows": 1600},
        "candidates": [
            {"name": "weak", "strategy": "full", "max_steps": 2, "batch_size": 16},
            {"name": "strong", "strategy": "full", "max_steps": 50, "batch_size": 16, "learning_rate": 1e-4,
             "early_stopping_patience": 0},
        ],
    })
    snap = data.prepare(cfg)
    weak = train.train_candidate(cfg, cfg.candidates[0], snap, root / "weak")
    strong = train.train_candidate(cfg, cfg.candidates[1], snap, root / "strong")
    return cfg, snap, root / "weak", root / "strong"


def test_a_better_challenger_is_promoted_and_the_reverse_rejected(setup):
    cfg, snap, weak, strong = setup
    # the baseline rule is tested on its own (test_evaluate); 50 steps do not beat TF-IDF yet
    win = decide.compare_refs(cfg, snap, decide.resolve(cfg, str(strong)), decide.resolve(cfg, str(weak)),
                              with_baseline=False)
    assert win.outcome == "promote", win.summary
    assert win.bootstrap.ci_low > 0 and win.mcnemar.p_value < cfg.gates.alpha
    lose = decide.compare_refs(cfg, snap, decide.resolve(cfg, str(weak)), decide.resolve(cfg, str(strong)),
                               with_baseline=False)
    assert lose.outcome == "reject"
    assert any(r.name == "significance" and not r.passed for r in lose.rules)
    lat = win.context["latency_batch1"]
    assert set(lat) == {"challenger", "champion"} and all(v["p50_ms"] > 0 for v in lat.values())


def test_identical_models_show_no_significant_difference(setup):
    cfg, snap, _, strong = setup
    same = decide.compare_refs(cfg, snap, decide.resolve(cfg, str(strong)), decide.resolve(cfg, str(strong)),
                               with_baseline=False)
    assert same.outcome == "reject" and "no significant difference" in same.summary
    assert same.bootstrap.delta == 0 and same.mcnemar.b01 == same.mcnemar.b10 == 0


def test_cli_compare_prints_the_decision(setup):
    cfg, snap, weak, strong = setup
    done = subprocess.run([sys.executable, "-m", "ftops", "compare", "--challenger", str(strong),
                           "--champion", str(weak), "--snapshot", snap.id, "--no-baseline",
                           "--project-dir", str(cfg.project.dir)],
                          capture_output=True, text=True, timeout=600, env={"COLUMNS": "200", "PATH": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "PROMOTE" in done.stdout and "significance" in done.stdout and "p50 ms" in done.stdout
    decisions = list((cfg.resolved().project.dir / "decisions").glob("*/decision.md"))
    assert decisions and "# Decision: promote" in decisions[-1].read_text()
