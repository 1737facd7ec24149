"""The TF-IDF baseline as a model that can serve: exported exactly through skl2onnx, chosen
when the first candidate does not beat it, registered, and judged like any champion."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ftops import decide, export, monitor, registry, train
from ftops.config import Config
from ftops.serve import deploy
from ftops.serve.deployable import Deployable

ODD_TEXTS = ["@united thanks for the lovely crew", "ok", "café ☕ and 😀 on board", "东京 flight was fine",
             "KELVIN \u212a and İstanbul", "a\tb\nc   d", "x " * 800, "DELAYED delayed DeLaYeD"]


@pytest.fixture(scope="module")
def lost_round(tiny_model, airline_snapshot, tmp_path_factory):
    """A round whose only candidate (a random 2-layer BERT, 2 steps) cannot beat TF-IDF."""
    root = tmp_path_factory.mktemp("baseline-serves")
    cfg = Config.model_validate({
        "project": {"dir": str(root), "name": "base-serves"}, "model": {"name": str(tiny_model), "max_length": 32},
        "candidates": [{"name": "weak", "strategy": "full", "max_steps": 2, "batch_size": 16}],
    })
    return cfg, train.train_round(cfg, airline_snapshot)


@pytest.fixture(scope="module")
def served(lost_round, airline_snapshot):
    """The lifecycle's A/B step: the candidate is rejected, the baseline takes its place."""
    cfg, result = lost_round
    (_, run_id), = result.candidates
    rejected, candidate = decide.decide(cfg, airline_snapshot, run_id, promote=False)
    made = decide.serve_baseline(cfg, rejected, candidate, result.baseline.run_id)
    return cfg, result, rejected, candidate, made


def test_a_first_model_that_does_not_beat_the_baseline_makes_way_for_it(served):
    cfg, result, rejected, candidate, made = served
    assert rejected.outcome == "reject" and rejected.mode == "no-champion-yet"
    assert [r.name for r in rejected.rules if not r.passed] == ["baseline"]
    assert made is not None
    decision, version = made
    assert decision.outcome == "promote" and decision.mode == "baseline-serves"
    assert f"v{candidate.version}" in decision.summary and "baseline" in decision.summary
    assert decision.rules[0].value == pytest.approx(rejected.metrics["baseline"]["macro_f1"]
                                                    - rejected.metrics["challenger"]["macro_f1"])
    assert version.run_id == result.baseline.run_id and version.tags["ftops.candidate"] == "baseline"
    assert registry.get(cfg, registry.CHALLENGER).version == version.version
    assert registry.find(cfg, registry.CHAMPION) is None  # the serving gates move the alias, not the A/B
    recorded = sorted((cfg.project.dir / "decisions").glob("*/decision.json"))
    assert json.loads(recorded[-1].read_text())["mode"] == "baseline-serves"


def test_the_served_baseline_exports_exactly_and_serving_reads_it(served, airline_snapshot, tmp_path):
    cfg, _, _, _, (_, version) = served
    result = export.export_version(cfg, version.version, airline_snapshot)
    report = result.variants["fp32"]
    assert result.selected == "fp32" and report.status == export.PASS, report.reason
    assert report.figures["max_abs_diff"] <= cfg.gates.parity_atol and report.figures["agreement"] == 1.0
    assert report.batch_invariant
    manifest = json.loads((result.out_dir / "export.json").read_text())
    assert manifest["inputs"] == [{"name": "text", "dtype": "string", "shape": ["batch", 1]}]
    assert manifest["tokenizer"] is None and not export.verify_files(result.out_dir)
    model = Deployable.from_export(result.out_dir)
    assert model.text_input and model.labels == airline_snapshot.labels
    # what serving compares Triton with is scikit-learn's own answer, on texts the gate never saw
    baseline = decide.load(decide.resolve(cfg, f"v{version.version}"))[0]
    assert np.abs(deploy.reference_probs(model, ODD_TEXTS) - baseline.probs(ODD_TEXTS)).max() < 1e-5


def test_a_baseline_champion_is_judged_and_monitored_like_any(served, airline_snapshot):
    cfg, result, _, _, (_, version) = served
    (candidate, _), = result.candidates
    against = decide.compare_refs(cfg, airline_snapshot, decide.resolve(cfg, str(candidate.out_dir)),
                                  decide.resolve(cfg, f"v{version.version}"))
    assert against.reference == "champion" and against.outcome == "reject"
    assert against.context["latency_batch1"]["champion"]["runtime"] == "scikit-learn"
    cost = next(r for r in against.rules if r.name == "cost")
    assert not cost.passed and "parameters" in cost.detail  # the transformer is never the cheaper one
    monitor.save_champion_reference(cfg, version.version, airline_snapshot)
    reference = monitor.load_reference(cfg, version.version)
    assert len(reference) == airline_snapshot.counts["validation"] and "embedding" not in reference
    assert set(reference["prediction"]) <= set(airline_snapshot.labels)


def test_the_baseline_does_not_serve_when_it_is_switched_off_or_lost(served, lost_round):
    cfg, result, rejected, candidate, _ = served
    off = cfg.model_copy(update={"gates": cfg.gates.model_copy(update={"baseline_serves": "never"})})
    assert decide.serve_baseline(off, rejected, candidate, result.baseline.run_id) is None
    won = type(rejected)(**{**rejected.__dict__, "outcome": "promote"})
    assert decide.serve_baseline(cfg, won, candidate, result.baseline.run_id) is None
    with_champion = type(rejected)(**{**rejected.__dict__, "mode": "champion"})
    assert decide.serve_baseline(cfg, with_champion, candidate, result.baseline.run_id) is None
