"""The tuning stage on real Optuna, real MLflow (the project's SQLite store) and, in the slow
tests, the real MiniLM: spaces are checked before any trial, a hopeless trial is pruned,
the best settings are written back and reach training, a second call resumes the study."""

from __future__ import annotations

import csv
import json
import os
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from ftops import names, strategies, train, tune
from ftops.config import CandidateSection, Config, DistillationSection, load_config
from ftops.errors import ConfigError
from ftops.strategies import Dim

POSTGRES = os.environ.get("FTOPS_TEST_POSTGRES_URL")


def config(root: Path, **tuning) -> Config:
    return Config.model_validate({
        "project": {"dir": str(root / "proj"), "name": "t"},
        "model": {"name": "minilm-l6", "max_length": 32},
        "candidates": [{"name": "lora", "strategy": "lora"}, {"name": "frozen", "strategy": "freeze"}],
        "tuning": tuning,
    })


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ftops.yaml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------- bad spaces fail before any trial


def test_low_above_high_is_a_config_error_naming_the_key(tmp_path):
    path = write_yaml(tmp_path, "tuning:\n  space:\n    lora:\n      learning_rate: {low: 1.0e-3, high: 1.0e-5}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert "'tuning.space.lora.learning_rate'" in str(caught.value)
    assert "low (0.001) is above high (1e-05)" in str(caught.value)


@pytest.mark.parametrize("tuning, names, message", [
    ({"space": {"lora": {"rnak": {"low": 2, "high": 8}}}}, ["lora"],
     r"tuning\.space\.lora\.rnak: 'rnak' is not a parameter of candidate 'lora' \(strategy lora\)\. "
     r"Strategy lora has: rank, alpha, dropout, target_modules; every candidate has: learning_rate, epochs"),
    ({"fixed": {"frozen": {"decay": 0.9}}}, ["frozen"],
     r"tuning\.fixed\.frozen\.decay: 'decay' is not a parameter of candidate 'frozen' \(strategy freeze\)\. "
     r"Strategy freeze has: layers;"),
    ({"space": {"nope": {"learning_rate": {"low": 1e-5, "high": 1e-4}}}}, None,
     r"tuning\.space\.nope: 'nope' is no candidate; the config defines: lora, frozen"),
    ({"space": {"frozen": {"layers": {"high": 10}}}}, ["frozen"],
     r"tuning\.space\.frozen\.layers = 10: .*layers=10 but the model has 6 encoder layers"),
    ({"space": {"lora": {"rank": {"low": 2, "high": 8}}}}, ["lora"],
     r"tuning\.space\.lora\.rank: it is searched over choices \[4, 8, 16, 32\]; give choices"),
    ({"space": {"lora": {"epochs": {"low": 1.5, "high": 3}}}}, ["lora"],
     r"tuning\.space\.lora\.epochs: an int dimension needs whole bounds"),
])
def test_a_bad_space_fails_before_any_study_exists(tmp_path, airline_snapshot, tuning, names, message):
    cfg = config(tmp_path, **tuning)
    with pytest.raises(ConfigError, match=message):
        tune.tune(cfg, airline_snapshot, names)
    assert not (tmp_path / "proj" / "tuning.db").exists()  # no storage opened, so no study created


@pytest.mark.parametrize("budget, key", [({"trials": 0}, "tuning.trials = 0"), ({"minutes": 0}, "tuning.minutes = 0"),
                                         ({"minutes": -5.0}, "tuning.minutes = -5.0")])
def test_a_zero_budget_fails_before_any_study_exists(tmp_path, airline_snapshot, budget, key):
    with pytest.raises(ConfigError, match=key):
        tune.tune(config(tmp_path), airline_snapshot, ["lora"], **budget)
    assert not (tmp_path / "proj" / "tuning.db").exists()


def test_a_zero_budget_from_the_cli_names_the_flag(tmp_path):
    from typer.testing import CliRunner

    from ftops.cli import app

    path = write_yaml(tmp_path, "project: {name: t}\n")
    result = CliRunner().invoke(app, ["tune", "--trials", "0", "-c", str(path), "--project-dir", str(tmp_path / "p")])
    assert isinstance(result.exception, ConfigError)
    assert "'tuning.trials' = 0 (from --trials)" in str(result.exception)
    assert not (tmp_path / "p").exists()


def test_the_tuning_storage_defaults_to_sqlite_under_the_project(tmp_path):
    cfg = config(tmp_path)
    assert cfg.resolved().uris.tuning == f"sqlite:///{tmp_path / 'proj' / 'tuning.db'}"
    team = cfg.model_copy(update={"uris": cfg.uris.model_copy(update={"tuning": "postgresql+psycopg://u@db/optuna"})})
    assert team.resolved().uris.tuning == "postgresql+psycopg://u@db/optuna"


# ---------------------------------------------------------------- spaces and Dim -> suggest


def test_dims_map_onto_optunas_distributions():
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    values = {"lr": Dim.real(1e-5, 1e-3, log=True).suggest(trial, "lr"),
              "share": Dim.real(0.0, 0.2).suggest(trial, "share"),
              "layers": Dim.integer(0, 4).suggest(trial, "layers"),
              "rank": Dim.categorical(4, 8, 16).suggest(trial, "rank")}
    assert trial.distributions == {"lr": FloatDistribution(1e-5, 1e-3, log=True),
                                   "share": FloatDistribution(0.0, 0.2),
                                   "layers": IntDistribution(0, 4),
                                   "rank": CategoricalDistribution((4, 8, 16))}
    assert 1e-5 <= values["lr"] <= 1e-3 and isinstance(values["layers"], int) and values["rank"] in (4, 8, 16)
    with pytest.raises(ValueError, match="low <= high"):
        Dim.real(1.0, 0.5)
    with pytest.raises(ValueError, match="low > 0"):
        Dim.real(0.0, 1.0, log=True)


def test_every_strategy_space_names_its_own_params_and_fits_the_model(tmp_path):
    for strategy in strategies.STRATEGIES.values():
        assert set(strategy.space) <= set(strategy.Params.model_fields), strategy.name
        assert not set(strategy.Params.model_fields) & set(tune.CANDIDATE_SPACE), strategy.name
        assert set(strategy.candidate_space) <= set(tune.CANDIDATE_SPACE), strategy.name
    cfg = Config.model_validate({"model": {"name": "minilm-l6"}, "candidates": [
        {"name": s, "strategy": s} for s in strategies.STRATEGIES]})
    plans = {p.candidate.name: p for p in tune.check_tuning(cfg)}
    assert set(plans["lora"].space) == {*tune.CANDIDATE_SPACE, "learning_rate", "rank", "alpha", "dropout"}
    assert set(plans["full"].space) == {*tune.CANDIDATE_SPACE, "learning_rate"}
    assert plans["lora"].space["epochs"] == strategies.get_strategy("lora").candidate_space["epochs"] \
        != plans["full"].space["epochs"]
    # adapters and prompts search higher learning rates than the whole model
    assert plans["full"].space["learning_rate"].high < plans["lora"].space["learning_rate"].high \
        < plans["prompt_tuning"].space["learning_rate"].high


def test_the_freeze_range_narrows_to_a_smaller_model(tiny_model):
    cfg = Config.model_validate({"model": {"name": str(tiny_model)}, "candidates": [{"name": "f", "strategy": "freeze", "params": {"layers": 1}}]})
    plan, = tune.check_tuning(cfg)  # the tiny BERT has 2 layers: MiniLM's 0..4 would not fit
    assert plan.space["layers"] == Dim.integer(0, 1)


def test_overrides_and_fixed_values_shape_the_space():
    cfg = Config.model_validate({"model": {"name": "minilm-l6"}, "candidates": [{"name": "lora", "strategy": "lora"}],
                                 "tuning": {"space": {"lora": {"learning_rate": {"high": 5e-4},
                                                               "rank": {"choices": [2, 4]},
                                                               "gradient_accumulation": {"low": 1, "high": 4}}},
                                            "fixed": {"lora": {"batch_size": 8, "dropout": 0.0}}}})
    plan, = tune.check_tuning(cfg)
    assert plan.space["learning_rate"] == Dim.real(1e-4, 5e-4, log=True)   # lora's default, one end replaced
    assert plan.space["rank"] == Dim.categorical(2, 4)
    assert plan.space["gradient_accumulation"] == Dim.integer(1, 4)        # added: whole ends make an int
    assert "batch_size" not in plan.space and "dropout" not in plan.space
    built = plan.build({**plan.fixed, "learning_rate": 2e-4, "rank": 2})
    assert (built.batch_size, built.learning_rate, built.params) == (8, 2e-4, {"dropout": 0.0, "rank": 2})


def test_a_new_strategy_that_declares_a_space_is_tuned_with_no_other_edit(monkeypatch):
    from pydantic import Field

    class WidthParams(strategies.Params):
        width: int = Field(4, ge=1, le=16)

    class Width(strategies.full.Full):
        name = "width"
        Params = WidthParams
        description = "a test strategy"
        space = {"width": Dim.integer(2, 8)}

    monkeypatch.setitem(strategies.STRATEGIES, "width", Width())
    cfg = Config.model_validate({"model": {"name": "minilm-l6"}, "candidates": [{"name": "w", "strategy": "width"}]})
    plan, = tune.check_tuning(cfg)
    assert plan.space["width"] == Dim.integer(2, 8)
    assert plan.build({"width": 3, "learning_rate": 1e-4}).params == {"width": 3}


# ---------------------------------------------------------------- class weights


def test_balanced_class_weights_are_sklearns():
    from sklearn.utils.class_weight import compute_class_weight

    frame = pd.DataFrame({"label": ["a"] * 6 + ["b"] * 2 + ["c"] * 2 + [None] * 3})  # None: unlabelled target rows
    weights = train.class_weights(frame, ["a", "b", "c", "d"], "balanced")
    expected = compute_class_weight("balanced", classes=np.array(["a", "b", "c"]), y=frame["label"].dropna().to_numpy())
    assert torch.allclose(weights[:3], torch.tensor(expected, dtype=torch.float32))
    assert torch.allclose(weights, torch.tensor([10 / 18, 10 / 6, 10 / 6, 1.0]))  # n / (classes x rows); absent: 1
    assert train.class_weights(frame, ["a", "b", "c"], "none") is None


def test_weighted_loss_differs_on_an_imbalanced_batch_in_training_only(tmp_path, tiny_model):
    from transformers import TrainingArguments

    from ftops import models

    labels = ["a", "b", "c"]
    model = models.build_classifier(str(tiny_model), labels)
    with torch.no_grad():  # a head that favours "a": the weighted loss then differs whatever the random init
        model.classifier.bias.copy_(torch.tensor([2.0, 0.0, -1.0]))
    weights = train.class_weights(pd.DataFrame({"label": ["a"] * 8 + ["b", "c"]}), labels, "balanced")
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    plain = train.FtopsTrainer(model=model, args=args, param_groups=[])
    weighted = train.FtopsTrainer(model=model, args=args, param_groups=[], class_weights=weights)
    torch.manual_seed(0)
    batch = {"input_ids": torch.randint(1000, 2000, (10, 12)), "attention_mask": torch.ones(10, 12, dtype=torch.long),
             "labels": torch.tensor([0] * 8 + [1, 2])}
    model.train()

    def seeded(function):  # the same dropout masks in every forward pass
        torch.manual_seed(1)
        with torch.no_grad():
            return function()

    logits = seeded(lambda: model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits)
    loss_plain = seeded(lambda: plain.compute_loss(model, dict(batch)))
    loss_weighted = seeded(lambda: weighted.compute_loss(model, dict(batch)))
    expected = F.cross_entropy(logits, batch["labels"], weight=weights)
    assert loss_weighted.item() == pytest.approx(expected.item(), rel=1e-4)
    assert abs(loss_weighted.item() - loss_plain.item()) > 1e-3
    model.eval()
    with torch.no_grad():
        assert weighted.compute_loss(model, dict(batch)).item() == pytest.approx(plain.compute_loss(model, dict(batch)).item())
    student, labels_ = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]]), torch.tensor([1, 0])
    cfg = DistillationSection(alpha=0.5)
    hard_only = train.distillation_loss(student, student, labels_, cfg, weight=weights)  # soft term is 0 here
    assert hard_only.item() == pytest.approx(0.5 * F.cross_entropy(student, labels_, weight=weights).item())
    assert hard_only.item() != pytest.approx(train.distillation_loss(student, student, labels_, cfg).item())


def test_class_weight_is_a_validated_candidate_setting():
    assert CandidateSection(name="c").class_weight == "none"
    with pytest.raises(ValueError, match="class_weight"):
        CandidateSection(name="c", class_weight="inverse")


# ---------------------------------------------------------------- settings written back


def test_tuned_settings_apply_only_to_the_strategy_they_were_tuned_for(tmp_path):
    cfg = config(tmp_path)
    path = tune.tuned_path(cfg, "lora")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"strategy": "lora", "study": "t-lora-x", "best_trial": 3,
                                "settings": {"learning_rate": 3e-4, "class_weight": "balanced", "params": {"rank": 16}}}))
    lora, frozen = tune.tuned_candidates(cfg)
    assert (lora.learning_rate, lora.class_weight, lora.params) == (3e-4, "balanced", {"rank": 16})
    assert frozen == cfg.candidates[1]
    same, applied = tune.tuned_config(cfg, use=False)
    assert same is cfg and applied == {}
    _, applied = tune.tuned_config(cfg, use=True)
    assert applied["lora"].values == {"learning_rate": 3e-4, "class_weight": "balanced", "lora": {"rank": 16}}
    other = cfg.model_copy(update={"candidates": [CandidateSection(name="lora", strategy="full")]})
    assert tune.tuned_candidates(other) == other.candidates  # tuned for lora, now full: not applied
    path.write_text(json.dumps({"strategy": "lora", "study": "s", "best_trial": 0,
                                "settings": {"learning_rate": -1, "params": {}}}))
    with pytest.raises(ConfigError, match=r"lora\.json do not apply to candidate 'lora' \('learning_rate' = -1: Input should be greater than 0\)\..*ftops tune --candidates lora --new"):
        tune.tuned_candidates(cfg)


# ---------------------------------------------------------------- a real study (MiniLM)

WORDS = {"positive": ["great", "wonderful", "lovely", "excellent", "happy", "fantastic"],
         "negative": ["awful", "terrible", "horrible", "bad", "angry", "broken"],
         "neutral": ["scheduled", "listed", "printed", "located", "numbered", "filed"]}
GOOD = {"learning_rate": 5e-3, "rank": 8, "alpha": 16, "dropout": 0.0, "class_weight": "none"}
HOPELESS = {**GOOD, "learning_rate": 1e-8}


def study_config(root: Path, **uris) -> Config:
    """90 rows of three separable classes; 6 steps of 8 rows, an evaluation every 2 steps."""
    rows = [(f"the {words[i % 6]} trip {i} was {words[(5 * i + 1) % 6]}", label)
            for label, words in WORDS.items() for i in range(30)]
    source = root / "trips.csv"
    with open(source, "w", newline="") as handle:
        csv.writer(handle).writerows([("text", "label"), *rows])
    return Config.model_validate({
        "project": {"dir": str(root / "proj"), "name": "t"}, "data": {"source": str(source)},
        "model": {"name": "minilm-l6", "max_length": 32},
        "candidates": [{"name": "lora", "strategy": "lora", "max_steps": 6, "batch_size": 8, "evals_per_epoch": 4,
                        "early_stopping_patience": 0, "precision": "fp32"}],
        "tuning": {"pruner": {"startup_trials": 1, "warmup_evals": 0},
                   "space": {"lora": {"learning_rate": {"low": 1e-8, "high": 1e-2}}},
                   "fixed": {"lora": {"batch_size": 8, "epochs": 1, "warmup_share": 0.0, "weight_decay": 0.0,
                                      "label_smoothing": 0.0}}},
        "uris": uris,
    })


@pytest.fixture(scope="module")
def studied(tmp_path_factory):
    """One study: a good trial first, then a hopeless one the median pruner stops."""
    from ftops import data

    root = tmp_path_factory.mktemp("tune")
    cfg = study_config(root)
    snapshot = data.prepare(cfg)
    seen = []
    result, = tune.tune(cfg, snapshot, ["lora"], trials=2, enqueue={"lora": [GOOD, HOPELESS]}, progress=seen.append)
    return cfg, snapshot, result, seen


def trial_runs(cfg: Config, parent_id: str):
    from mlflow import MlflowClient

    from ftops import tracking

    experiment = tracking.use_project(cfg)
    runs = MlflowClient().search_runs([experiment], f"tags.mlflow.parentRunId = '{parent_id}'")
    return {r.info.run_name: r for r in runs}


@pytest.mark.slow
def test_a_hopeless_trial_is_pruned_and_the_best_is_written_back(studied):
    import optuna
    from optuna.trial import TrialState

    cfg, snapshot, result, seen = studied
    study = optuna.load_study(study_name=f"t-lora-{snapshot.id}", storage=cfg.resolved().uris.tuning)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert (result.complete, result.pruned, result.trials_run, result.best_trial) == (1, 1, 2, 0)
    assert result.best_val_macro_f1 == pytest.approx(study.trials[0].value) and result.best_val_macro_f1 > 0.6
    assert study.trials[1].intermediate_values[0] < study.trials[0].intermediate_values[0]
    assert len(study.trials[0].intermediate_values) == 3  # it reported at every evaluation
    record = json.loads(result.settings_file.read_text())
    assert result.settings_file == cfg.resolved().project.dir / "tuning" / "lora.json"
    assert (record["study"], record["best_trial"], record["snapshot"]) == (result.study, 0, snapshot.id)
    assert record["settings"]["learning_rate"] == 5e-3 and record["settings"]["params"] == {
        "rank": 8, "alpha": 16, "dropout": 0.0}
    assert record["settings"]["batch_size"] == 8  # the fixed values are part of the settings
    tuned, = tune.tuned_candidates(cfg)
    assert (tuned.learning_rate, tuned.params["rank"], tuned.max_steps) == (5e-3, 8, 6)
    assert [(s.run, s.complete, s.pruned) for s in seen] == [(0, 0, 0), (1, 1, 0), (2, 1, 1)]
    assert seen[-1].best == pytest.approx(result.best_val_macro_f1)


@pytest.mark.slow
def test_trials_never_see_the_test_split_and_keep_only_their_curves(studied):
    cfg, snapshot, result, _ = studied
    folder = cfg.resolved().project.dir / "tuning" / result.study
    for number in (0, 1):
        trial = folder / f"trial-{number}"
        assert {p.name for p in trial.rglob("*") if p.is_file()} == {"result.json", "learning_curves.png"}
        saved = json.loads((trial / "result.json").read_text())
        assert saved["test_macro_f1"] is None and saved["test_accuracy"] is None and saved["task_metrics"] == {}
    runs = trial_runs(cfg, result.run_id)
    assert set(runs) == {"trial-0", "trial-1"}
    for run in runs.values():
        assert not [m for m in run.data.metrics if m.startswith("test")], run.data.metrics
        assert run.info.status == "FINISHED" and run.data.tags["ftops.study"] == result.study


@pytest.mark.slow
def test_the_study_is_tracked_in_mlflow_with_states_curves_and_plots(studied):
    from mlflow import MlflowClient

    cfg, _, result, _ = studied
    client = MlflowClient()
    parent = client.get_run(result.run_id)
    assert parent.info.run_name == "tune-lora" and parent.data.params["study"] == result.study
    assert parent.data.metrics["trials_pruned"] == 1 and parent.data.metrics["best_val_macro_f1"] > 0.6
    assert "need 2 complete trials" in parent.data.tags[names.TAG_IMPORTANCES]
    assert {a.path for a in client.list_artifacts(result.run_id, "plots")} == {"plots/optimization_history.png"}
    runs = trial_runs(cfg, result.run_id)
    assert runs["trial-0"].data.tags[names.TAG_TRIAL_STATE] == "complete"
    assert runs["trial-1"].data.tags[names.TAG_TRIAL_STATE] == "pruned"
    assert runs["trial-1"].data.params["learning_rate"] == "1e-08"
    assert len(client.get_metric_history(runs["trial-0"].info.run_id, "eval_macro_f1")) == 3
    assert len(client.get_metric_history(runs["trial-1"].info.run_id, "eval_macro_f1")) == 1  # stopped early


@pytest.mark.slow
def test_a_round_trains_with_the_tuned_settings_and_names_their_trial(studied):
    cfg, snapshot, result, _ = studied
    round_ = train.train_round(cfg, snapshot, ["lora"], tuned=True)
    runs = trial_runs(cfg, round_.run_id)
    lora = runs["lora"]
    assert lora.data.tags[names.TAG_TUNED_STUDY] == result.study and lora.data.tags[names.TAG_TUNED_TRIAL] == "0"
    assert lora.data.params["learning_rate"] == "0.005" and lora.data.params["tuned.learning_rate"] == "0.005"
    assert lora.data.params["tuned.lora.rank"] == "8"
    assert round_.candidates[0][0].test_macro_f1 is not None  # training proper still reports the test split
    plain = train.train_round(cfg.model_copy(update={"candidates": [cfg.candidates[0].model_copy(
        update={"max_steps": 1})]}), snapshot, ["lora"])  # tuning.enabled is false: the config's own settings
    assert names.TAG_TUNED_STUDY not in trial_runs(cfg, plain.run_id)["lora"].data.tags


@pytest.mark.slow
def test_a_second_call_resumes_the_study_and_new_restarts_it(studied):
    cfg, snapshot, first, _ = studied
    second_cfg = cfg.model_copy(deep=True)
    second_cfg.tuning.pruner.kind = "none"  # the added trial runs to its end: two complete trials
    balanced = {**GOOD, "learning_rate": 2e-3, "class_weight": "balanced"}
    second, = tune.tune(second_cfg, snapshot, ["lora"], trials=1, enqueue={"lora": [balanced]})
    assert (second.study, second.study_id) == (first.study, first.study_id)
    assert (second.trials_run, second.complete + second.pruned) == (1, 3)
    assert {p.name for p in second.plots} == {"optimization_history.png", "param_importances.png"}
    added = trial_runs(cfg, second.run_id)["trial-2"].data.params
    assert added["class_weight"] == "balanced"
    assert set(json.loads(added["class_weights"])) == set(snapshot.labels)  # the weights, per label
    restarted, = tune.tune(second_cfg, snapshot, ["lora"], trials=1, new_study=True, enqueue={"lora": [GOOD]})
    assert restarted.study == first.study  # the same name, its 3 trials gone: numbering starts again
    assert (restarted.trials_run, restarted.complete, restarted.pruned, restarted.best_trial) == (1, 1, 0, 0)
    assert not (cfg.resolved().project.dir / "tuning" / first.study / "trial-1").exists()


# ---------------------------------------------------------------- the team storage


@pytest.fixture
def postgres_url():
    if not POSTGRES:
        pytest.skip("set FTOPS_TEST_POSTGRES_URL to run this against PostgreSQL")
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"ftops_tune_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(make_url(POSTGRES).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES).set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.slow
def test_a_study_on_postgresql_resumes_across_calls(tmp_path, postgres_url):
    import optuna

    from ftops import data

    cfg = study_config(tmp_path, tuning=postgres_url)
    snapshot = data.prepare(cfg)
    first, = tune.tune(cfg, snapshot, ["lora"], trials=1, enqueue={"lora": [GOOD]})
    second, = tune.tune(cfg, snapshot, ["lora"], trials=1, enqueue={"lora": [HOPELESS]})
    assert optuna.get_all_study_names(storage=postgres_url) == [first.study]
    assert second.study_id == first.study_id and (second.complete, second.pruned) == (1, 1)
    assert not (tmp_path / "proj" / "tuning.db").exists()
    assert tune.tuned_candidates(cfg)[0].learning_rate == 5e-3


# ---------------------------------------------------------------- the docs stay true


def test_the_tuning_page_lists_the_default_spaces_and_its_example_is_valid(tmp_path):
    import re

    import yaml

    page = (Path(__file__).resolve().parent.parent / "docs" / "tuning.md").read_text()
    rows, owner = {}, None
    for line in page.splitlines():
        match = re.match(r"\| (every candidate|`\w+`)? *\| `(\w+)` \|", line)
        if match:
            owner = match.group(1) or owner
            rows.setdefault(owner.strip("`"), set()).add(match.group(2))
    assert rows.pop("every candidate") == {*tune.CANDIDATE_SPACE, "learning_rate"}
    assert rows == {name: {*s.space, *s.candidate_space} for name, s in strategies.STRATEGIES.items()
                    if s.space or s.candidate_space}
    example = yaml.safe_load(page.split("```yaml\n", 1)[1].split("```", 1)[0])
    cfg = Config.model_validate({**example, "project": {"dir": str(tmp_path)}})
    plans = {p.candidate.name: p for p in tune.check_tuning(cfg)}
    assert plans["lora"].space["rank"] == Dim.categorical(8, 16) and "batch_size" not in plans["full"].space


# ---------------------------------------------------------------- the lifecycle's tuning step


@pytest.mark.slow
def test_the_lifecycle_step_tunes_then_a_retraining_reuses_the_settings(tmp_path, capsys):
    import yaml

    from flows import lifecycle
    from ftops import data, run

    cfg = study_config(tmp_path)
    cfg.tuning.enabled, cfg.tuning.trials = True, 1
    path = tmp_path / "ftops.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)))
    snapshot = data.prepare(cfg)
    first = lifecycle.tune_candidates.fn(str(path), snapshot.id)
    assert first["lora"]["complete"] + first["lora"]["pruned"] == 1
    assert tune.tuned_path(cfg, "lora").is_file() and "tune lora: trial 1/1" in capsys.readouterr().out
    assert lifecycle.tune_candidates.fn(str(path), snapshot.id, retrain=True) == {}  # on_retrain: reuse
    assert "lora: reusing its tuned settings" in capsys.readouterr().out
    (row,) = [text for stage, text in run.stage_rows({"tune": first}) if stage == "tune"]
    assert row.startswith("lora: ") and "trial 0" in row
