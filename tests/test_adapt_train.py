"""Domain adaptation and multi-task heads wired into training (issue 11)."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from ftops import train
from ftops.config import Config
from ftops.errors import ConfigError, DataError


def config(model: str, root, **candidate) -> Config:
    return Config.model_validate({
        "project": {"dir": str(root), "name": "t"}, "model": {"name": model, "max_length": 48},
        "candidates": [{"name": "c", "strategy": "full", "max_steps": 6, "batch_size": 16,
                        "evals_per_epoch": 1, "early_stopping_patience": 0, **candidate}],
    })


@pytest.fixture(scope="module")
def two_domains(tmp_path_factory):
    """Real tweets of two domains, each row with its `domain` column."""
    from ftops import data

    root = tmp_path_factory.mktemp("two-domains")
    cfg = Config.model_validate({"project": {"dir": str(root)},
                                 "data": {"source": "builtin:tweets?domain=airline,apple", "max_rows": 360}})
    return data.prepare(cfg)


def test_dann_trains_on_unlabelled_target_rows_and_saves_only_the_classifier(tiny_model, airline_snapshot, tmp_path):
    cfg = config(str(tiny_model), tmp_path, adaptation={"method": "dann", "weight": 0.5})
    target = ["new iphone battery dies by noon", "apple store line around the block"] * 20
    result = train.train_candidate(cfg, cfg.candidates[0], airline_snapshot, tmp_path / "dann",
                                   retrain=train.RetrainSources(target_texts=target))
    assert result.target_rows == 40 and result.extras == "dann w0.5 (traffic)"
    logged = [h for h in result.history if "dann_loss" in h]
    assert logged and all(0 < h["dann_loss"] < 5 for h in logged)  # the domain classifier's CE
    weights = load_file(result.out_dir / "model" / "model.safetensors")
    assert not [k for k in weights if "ftops_extras" in k]  # the domain classifier stays behind
    model, _, _ = train.load_trained(result.out_dir)
    assert not hasattr(model, "ftops_extras") and not model.classifier._forward_pre_hooks


@pytest.mark.parametrize("method", ["mmd", "kl"])
def test_alignment_penalties_are_logged(method, tiny_model, airline_snapshot, tmp_path):
    cfg = config(str(tiny_model), tmp_path, adaptation={"method": method, "schedule": "constant"})
    target = [f"coachella lineup day {i} was unreal" for i in range(40)]
    result = train.train_candidate(cfg, cfg.candidates[0], airline_snapshot, tmp_path / method,
                                   retrain=train.RetrainSources(target_texts=target))
    values = [h[f"{method}_loss"] for h in result.history if f"{method}_loss" in h]
    assert values and all(v >= 0 for v in values) and any(v > 0 for v in values)


def test_adaptation_without_target_texts_is_a_clear_error(tiny_model, airline_snapshot, tmp_path):
    cfg = config(str(tiny_model), tmp_path, adaptation={"method": "dann"})
    with pytest.raises(DataError, match="prediction log .* has 0"):
        train.train_candidate(cfg, cfg.candidates[0], airline_snapshot, tmp_path / "none")


def test_a_task_on_a_missing_column_names_it(tiny_model, airline_snapshot, tmp_path):
    cfg = config(str(tiny_model), tmp_path, tasks=[{"name": "topic", "column": "topic"}])
    with pytest.raises(ConfigError, match="column 'topic'.*it has: domain"):
        train.train_candidate(cfg, cfg.candidates[0], airline_snapshot, tmp_path / "topic")


@pytest.mark.slow
def test_a_two_task_minilm_trains_and_reports_both_tasks(two_domains, tmp_path):
    cfg = config("minilm-l6", tmp_path, max_steps=14, learning_rate=2e-4,
                 tasks=[{"name": "domain", "column": "domain", "weight": 0.5}])
    result = train.train_candidate(cfg, cfg.candidates[0], two_domains, tmp_path / "mt")
    assert 0 < result.test_macro_f1 <= 1  # the primary task (sentiment)
    domain = result.task_metrics["domain"]
    assert set(domain) == {"accuracy", "macro_f1"}
    assert domain["accuracy"] > 0.8  # airline vs apple tweets are easy to tell apart
    assert any("task_domain_loss" in h for h in result.history)
    folder = result.out_dir / "model"
    tasks = json.loads((folder / "tasks.json").read_text())
    assert tasks["domain"]["classes"] == ["airline", "apple"]
    heads = load_file(folder / "task_heads.safetensors")
    assert heads["heads.domain.1.weight"].shape == (2, 384)


def test_mlflow_records_the_adaptation_settings(tiny_model, airline_snapshot, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    cfg = config(str(tiny_model), tmp_path, max_steps=2,
                 adaptation={"method": "mmd", "weight": 0.7, "schedule": "linear"})
    target = [f"claritin works for my allergies {i}" for i in range(30)]
    result = train.train_round(cfg, airline_snapshot, retrain=train.RetrainSources(target_texts=target))
    (_, run_id), = result.candidates
    params = MlflowClient(mlflow.get_tracking_uri()).get_run(run_id).data.params
    assert params["adaptation.method"] == "mmd" and params["adaptation.weight"] == "0.7"
    assert params["adaptation.schedule"] == "linear" and params["target_rows"] == "30"


def test_a_multi_task_candidate_exports_its_primary_head(tiny_model, tmp_path):
    """Export and serving use the primary classifier; the auxiliary heads stay beside it."""
    from ftops import data, export

    snap = data.prepare(Config.model_validate({"project": {"dir": str(tmp_path / "d")},
                                               "data": {"source": "builtin:tweets?domain=airline,apple",
                                                        "max_rows": 200}}))
    cfg = config(str(tiny_model), tmp_path, max_steps=3, tasks=[{"name": "domain", "column": "domain"}])
    trained = train.train_candidate(cfg, cfg.candidates[0], snap, tmp_path / "mt")
    test = snap.split("test")
    result = export.export_model(trained.out_dir, tmp_path / "export", [], 48, parity_texts=list(test["text"]),
                                 parity_labels=[snap.labels.index(label) for label in test["label"]],
                                 variants=["fp32"])
    assert result.variants["fp32"].status == "pass" and result.labels == snap.labels
    assert (trained.out_dir / "model" / "task_heads.safetensors").is_file()
