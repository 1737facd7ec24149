import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from ftops import strategies, train
from ftops.config import CandidateSection, Config, DistillationSection
from ftops.errors import ConfigError


# ------------------------------------------------------------ losses on known values


def test_distillation_alpha_zero_is_cross_entropy():
    student = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    labels = torch.tensor([0, 2])
    loss = train.distillation_loss(student, torch.randn(2, 3), labels, DistillationSection(alpha=0.0))
    assert loss.item() == pytest.approx(F.cross_entropy(student, labels).item())


def test_distillation_soft_term_matches_a_hand_computation():
    student = torch.tensor([[1.0, 0.0]])
    teacher = torch.tensor([[0.0, 1.0]])
    t = 2.0
    p = [math.exp(0.0) / (math.exp(0.0) + math.exp(0.5)), math.exp(0.5) / (math.exp(0.0) + math.exp(0.5))]  # teacher / T
    q = [p[1], p[0]]  # student / T is the mirror image
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    loss = train.distillation_loss(student, teacher, torch.tensor([0]), DistillationSection(temperature=t, alpha=1.0))
    assert loss.item() == pytest.approx(kl * t * t, rel=1e-5)
    same = train.distillation_loss(student, student, torch.tensor([0]), DistillationSection(alpha=1.0))
    assert same.item() == pytest.approx(0.0, abs=1e-7)


def test_ewc_penalty_on_known_values():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 1.0]]))
    ewc = train.Ewc({"weight": torch.tensor([[2.0, 0.0]])}, {"weight": torch.zeros(1, 2)}, strength=10.0)
    assert ewc.penalty(model).item() == pytest.approx(10 / 2 * (2 * 9 + 0 * 1))


def test_ewc_fisher_is_the_mean_of_per_row_squared_gradients():
    torch.manual_seed(0)

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)

        def forward(self, x):
            return type("Out", (), {"logits": self.linear(x)})()

    model = Tiny()
    rows = [{"x": torch.randn(1, 3)[0], "labels": i % 2} for i in range(6)]

    def collate(batch):
        return {"x": torch.stack([b["x"] for b in batch]), "labels": torch.tensor([b["labels"] for b in batch])}

    ewc = train.Ewc.estimate(model, rows, collate, strength=1.0, samples=6, seed=0)
    expected = torch.zeros_like(model.linear.weight)
    for row in rows:
        model.zero_grad()
        F.log_softmax(model.linear(row["x"][None]), -1)[0, row["labels"]].backward()
        expected += model.linear.weight.grad ** 2 / 6
    assert torch.allclose(ewc.fisher["linear.weight"], expected, atol=1e-7)
    assert ewc.penalty(model).item() == 0.0  # at the anchor


def test_one_class_score_is_what_answering_one_class_scores():
    from sklearn.metrics import f1_score

    labels = [0, 0, 0, 1, 2, 2, -100]  # -100: a row without a label
    floor = train.one_class_macro_f1(labels)
    assert floor == pytest.approx(f1_score([0, 0, 0, 1, 2, 2], [0] * 6, average="macro"))  # the majority class
    assert floor > f1_score([0, 0, 0, 1, 2, 2], [2] * 6, average="macro")


@pytest.mark.parametrize("scores, stops_after", [
    ([0.25, 0.25, 0.25, 0.25, 0.6, 0.6, 0.6], 7),  # at the one-class score: no patience spent
    ([0.25, 0.5, 0.5, 0.5], 4),  # learning, then stalled: HF's rule
    ([0.6, 0.6, 0.6], 3),
])
def test_patience_starts_once_the_model_beats_one_class(tmp_path, scores, stops_after):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), eval_strategy="steps", metric_for_best_model="macro_f1",
                             greater_is_better=True, report_to="none")
    stopping, state, control = train.EarlyStopping(2, floor=0.25), TrainerState(), TrainerControl()
    for evaluation, score in enumerate(scores, start=1):
        stopping.on_evaluate(args, state, control, metrics={"eval_macro_f1": score})
        state.best_metric = score if state.best_metric is None else max(state.best_metric, score)
        if control.should_training_stop:
            break
    assert control.should_training_stop and evaluation == stops_after


def test_rehearsal_mix_hits_the_share():
    new = pd.DataFrame({"text": [f"n{i}" for i in range(300)], "label": "a"})
    old = pd.DataFrame({"text": [f"o{i}" for i in range(1000)], "label": "b"})
    mixed = train.rehearsal_mix(new, old, 0.25, seed=1)
    assert mixed["rehearsal"].mean() == pytest.approx(0.25, abs=0.005)
    assert train.rehearsal_mix(new, None, 0.25, seed=1)["rehearsal"].sum() == 0


def test_precision_auto_follows_the_hardware(monkeypatch):
    candidate = CandidateSection(name="c")
    monkeypatch.setattr(train.trainer, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert train.precision(candidate) == ("bf16" if not torch.cuda.is_available() else train.precision(candidate))
    monkeypatch.setattr(train.trainer, "cpu_flags", lambda: {"avx2"})
    if not torch.cuda.is_available():
        assert train.precision(candidate) == "fp32"
    assert train.precision(candidate.model_copy(update={"precision": "fp32"})) == "fp32"


# ------------------------------------------------------------ baseline, round, resume


def test_baseline_learns_the_real_tweets(airline_snapshot):
    baseline = train.fit_baseline(airline_snapshot)
    assert baseline.test_macro_f1 > 0.45  # 3 classes: chance is ~0.33
    assert baseline.pipeline.predict(["@united worst flight ever, lost my bag"])[0] == "negative"


def tiny_config(tiny_model, root: Path, **candidate) -> Config:
    return Config.model_validate({
        "project": {"dir": str(root), "name": "t"}, "model": {"name": str(tiny_model), "max_length": 32},
        "candidates": [{"name": "lora", "strategy": "lora", "max_steps": 3, "batch_size": 16, **candidate},
                       {"name": "full", "strategy": "full", "max_steps": 3, "batch_size": 16, **candidate}],
    })


def test_a_round_is_one_parent_run_with_nested_candidates(tiny_model, airline_snapshot, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    cfg = tiny_config(tiny_model, tmp_path)
    result = train.train_round(cfg, airline_snapshot)
    client = MlflowClient(mlflow.get_tracking_uri())
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = client.get_run(result.run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{result.run_id}'")
    assert {c.info.run_name for c in children} == {"baseline", "lora", "full"}
    assert all(c.info.status == "FINISHED" for c in [parent, *children])
    lora = next(c for c in children if c.info.run_name == "lora")
    for tag in ("ftops.data_snapshot", "ftops.data_sha256", "ftops.config_sha256", "ftops.git_sha",
                "ftops.parent_model_version", "ftops.candidate", "ftops.strategy"):
        assert tag in lora.data.tags, tag
    assert lora.data.tags["ftops.data_snapshot"] == airline_snapshot.id
    assert {"val_macro_f1", "test_macro_f1", "samples_per_second", "wall_seconds", "peak_rss_mb",
            "trainable_share"} <= set(lora.data.metrics)
    assert lora.data.params["strategy"] == "lora" and lora.data.params["batch_size"] == "16"
    # the candidate leaves learning_rate out: LoRA's measured default trains, and is logged
    assert float(lora.data.params["learning_rate"]) == strategies.get_strategy("lora").defaults["learning_rate"]
    assert len(client.get_metric_history(lora.info.run_id, "loss")) >= 1  # per-step curve
    artifacts = {a.path for a in client.list_artifacts(lora.info.run_id)}
    assert {"model", "learning_curves.png", "confusion_matrix.png", "result.json"} <= artifacts
    model_files = {Path(a.path).name for a in client.list_artifacts(lora.info.run_id, "model")}
    assert "adapter_model.safetensors" in model_files and "model.safetensors" not in model_files
    assert json.loads((result.candidates[0][0].out_dir / "model" / "ftops.json").read_text())["base_model"] == str(tiny_model)
    # the artifact store is the project's, not ./mlruns of the test's cwd
    assert str(tmp_path / "mlartifacts") in client.get_experiment(parent.info.experiment_id).artifact_location


def test_a_trained_candidate_loads_back_with_the_same_predictions(tiny_model, airline_snapshot, tmp_path):
    cfg = tiny_config(tiny_model, tmp_path)
    result = train.train_candidate(cfg, cfg.candidates[0], airline_snapshot, tmp_path / "lora")
    model, tokenizer, labels = train.load_trained(result.out_dir)
    assert labels == airline_snapshot.labels
    batch = tokenizer(list(airline_snapshot.split("test")["text"][:8]), padding=True, truncation=True,
                      max_length=32, return_tensors="pt")
    saved = torch.tensor(__import__("numpy").load(result.out_dir / "test_logits.npy")[:8])
    with torch.no_grad():
        logits = model.eval()(**batch).logits
    # test logits were computed on length-padded batches under bf16/fp32: compare labels
    assert (logits.argmax(-1) == saved.argmax(-1)).float().mean() >= 0.75


def test_training_without_saving_writes_no_checkpoint_and_scores_its_best_evaluation(tiny_model, airline_snapshot,
                                                                                      tmp_path):
    """What a tuning trial trains with: its score is the best evaluation's, nothing heavy is written."""
    cfg = tiny_config(tiny_model, tmp_path, max_steps=6, evals_per_epoch=8, early_stopping_patience=0)
    result = train.train_candidate(cfg, cfg.candidates[1], airline_snapshot, tmp_path / "trial",
                                   evaluate_test=False, save=False)
    evaluated = [h["eval_macro_f1"] for h in result.history if "eval_macro_f1" in h]
    assert len(evaluated) >= 2 and result.val_macro_f1 == pytest.approx(max(evaluated))
    written = {p.name for p in result.out_dir.rglob("*") if p.is_file()}
    assert written == {"result.json", "learning_curves.png"}  # no checkpoint, no model


RESUME_SCRIPT = """
import sys, time
from pathlib import Path
from ftops import data, train
from ftops.config import Config
cfg = Config.model_validate({"project": {"dir": sys.argv[1]}, "model": {"name": sys.argv[2], "max_length": 32},
    "data": {"source": "builtin:tweets?domain=airline", "max_rows": 400},
    "candidates": [{"name": "full", "strategy": "full", "batch_size": 8, "epochs": 1, "evals_per_epoch": 4,
                    "early_stopping_patience": 0}]})
snap = data.prepare(cfg)
slow = sys.argv[3] == "slow"
result = train.train_candidate(cfg, cfg.candidates[0], snap, Path(sys.argv[1]) / "run",
                               progress=(lambda s, t, m: time.sleep(0.25)) if slow else None)
print("RESUMED", result.resumed_from, "STEP", result.global_step)
"""


def test_a_run_killed_mid_epoch_resumes_and_finishes(tiny_model, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(RESUME_SCRIPT)
    cmd = [sys.executable, str(script), str(tmp_path), str(tiny_model)]
    proc = subprocess.Popen(cmd + ["slow"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    checkpoints = tmp_path / "run" / "checkpoints"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and not any(checkpoints.glob("checkpoint-*/trainer_state.json")):
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            time.sleep(0.2)
        time.sleep(0.5)
        proc.kill()  # mid-epoch: one epoch is 35 steps, the first checkpoint is at step 8
    finally:
        proc.wait()
    first = sorted(int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*"))
    assert first and first[-1] < 35
    done = subprocess.run(cmd + ["fast"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    line = next(l for l in done.stdout.splitlines() if l.startswith("RESUMED"))
    resumed, step = line.split()[1], int(line.split()[3])
    assert resumed.startswith("checkpoint-") and int(resumed.split("-")[1]) in first
    assert step == 35


def test_init_champion_starts_from_the_champion_weights(tiny_model, airline_snapshot, tmp_path):
    cfg = tiny_config(tiny_model, tmp_path)
    champion = train.train_candidate(cfg, cfg.candidates[1], airline_snapshot, tmp_path / "champion")
    candidate = cfg.candidates[0].model_copy(update={"init": "champion"})
    sources = train.RetrainSources(teacher_dir=champion.out_dir)
    start = train.initial_model(cfg, candidate, airline_snapshot.labels, sources)
    saved, _, _ = train.load_trained(champion.out_dir)
    assert all(torch.equal(a, b) for a, b in zip(start.state_dict().values(), saved.state_dict().values()))
    fresh = train.initial_model(cfg, candidate.model_copy(update={"init": "base"}), airline_snapshot.labels, sources)
    assert not torch.equal(fresh.classifier.weight, saved.classifier.weight)
    # a LoRA candidate on top of the champion is saved merged (its base is not the named model)
    result = train.train_candidate(cfg, candidate, airline_snapshot, tmp_path / "cont", retrain=sources)
    assert not json.loads((result.out_dir / "model" / "ftops.json").read_text())["peft"]


def test_a_student_keeps_the_first_layers_and_learns_from_the_champion(tiny_model, airline_snapshot, tmp_path):
    """layers: 1 of the tiny BERT's 2, distilled from a trained champion: half the encoder,
    its kept layer the pretrained one, saved and loaded back at that size."""
    cfg = tiny_config(tiny_model, tmp_path)
    champion = train.train_candidate(cfg, cfg.candidates[1], airline_snapshot, tmp_path / "champion")
    student = cfg.candidates[1].model_copy(update={
        "name": "student", "layers": 1, "distillation": DistillationSection(temperature=2.0, alpha=0.7)})
    sources = train.RetrainSources(teacher_dir=champion.out_dir)
    start = train.initial_model(cfg, student, airline_snapshot.labels, sources)
    from transformers import BertForSequenceClassification

    pretrained = BertForSequenceClassification.from_pretrained(tiny_model)
    assert start.config.num_hidden_layers == 1 and len(start.bert.encoder.layer) == 1
    assert torch.equal(start.bert.encoder.layer[0].attention.self.query.weight,
                       pretrained.bert.encoder.layer[0].attention.self.query.weight)
    result = train.train_candidate(cfg, student, airline_snapshot, tmp_path / "student", retrain=sources)
    model, _, _ = train.load_trained(result.out_dir)
    assert len(model.bert.encoder.layer) == 1
    assert result.total < champion.total  # fewer parameters: the second layer is gone
    with pytest.raises(ConfigError, match="layers is 3, but the model has 2 encoder layers"):
        train.check_candidates(cfg.model_copy(update={"candidates": [student.model_copy(update={"layers": 3})]}))
    with pytest.raises(ConfigError, match="init: champion would replace"):
        train.check_candidates(cfg.model_copy(update={"candidates": [student.model_copy(update={"init": "champion"})]}))
