"""The export stage: ONNX variants, the parity gate, selection and the manifest.

Fast tests export a tiny random BERT (trained 2 steps, full and LoRA) once per module; the
slow test exports the real MiniLM.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ftops import decide, export, names, train
from ftops.artifacts import exported
from ftops.export import card, parity, publish, results, runtime, source, variants
from ftops.config import Config, GatesSection
from ftops.export.select import select

MAX_LENGTH = 32


def candidate_config(model_name: str, root: Path, max_length: int, steps: int) -> Config:
    return Config.model_validate({
        "project": {"dir": str(root), "name": "t"}, "model": {"name": model_name, "max_length": max_length},
        "candidates": [{"name": "lora", "strategy": "lora", "max_steps": steps, "batch_size": 16},
                       {"name": "full", "strategy": "full", "max_steps": steps, "batch_size": 16}],
    })


def parity_inputs(snapshot) -> dict:
    test = snapshot.split("test")
    label2id = {label: i for i, label in enumerate(snapshot.labels)}
    return {"parity_texts": list(test["text"]), "parity_labels": [label2id[l] for l in test["label"]]}


def calibration_texts(snapshot, n: int = 50) -> list[str]:
    return list(snapshot.split("train")["text"].sample(n=n, random_state=0))


def ort_labels(folder: Path, texts: list[str], variant: str = "fp32") -> np.ndarray:
    """What serving does: tokenizer.json + onnxruntime, one batch per 32 texts."""
    result = card.load_export(folder)
    run = runtime.ort_runner(result.model_path(variant), threads=1)
    tokenizer = runtime.load_tokenizer_json(folder / "tokenizer.json")
    return np.concatenate([run(runtime.encode_batch(tokenizer, texts[i:i + 32])).argmax(-1)
                           for i in range(0, len(texts), 32)])


def pytorch_labels(candidate: Path, snapshot, max_length: int) -> np.ndarray:
    model, tokenizer, labels = decide.load(decide.ModelRef("c", candidate, None))
    return decide.predict(model, tokenizer, labels, snapshot.split("test"), max_length).probs.argmax(-1)


def perturb_initializer(source: Path, target: Path, scale: float = 5.0) -> str:
    """Copy an ONNX file with its largest float initializer multiplied by `scale`: a
    deliberately broken variant. Returns the initializer's name."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    floats = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    victim = max(floats, key=lambda t: int(np.prod(t.dims)))
    victim.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(victim) * scale, victim.name))
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    return victim.name


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def candidates(tiny_model, airline_snapshot, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export-candidates")
    cfg = candidate_config(str(tiny_model), root, MAX_LENGTH, steps=2)
    for candidate in cfg.candidates:
        train.train_candidate(cfg, candidate, airline_snapshot, root / candidate.name)
    return {c.name: root / c.name for c in cfg.candidates}


@pytest.fixture(scope="module")
def exports(candidates, airline_snapshot, tmp_path_factory) -> dict[str, export.ExportResult]:
    root = tmp_path_factory.mktemp("exports")
    return {name: export.export_model(folder, root / name, calibration_texts(airline_snapshot), MAX_LENGTH,
                                      source={"candidate": name, "snapshot": airline_snapshot.id},
                                      **parity_inputs(airline_snapshot))
            for name, folder in candidates.items()}


# ---------------------------------------------------------------- tiny model


@pytest.mark.parametrize("name", ["full", "lora"])
def test_fp32_passes_parity_and_onnx_agrees_with_pytorch(name, exports, candidates, airline_snapshot):
    result = exports[name]
    fp32 = result.variants["fp32"]
    assert fp32.status == results.PASS and fp32.batch_invariant
    assert fp32.figures["max_abs_diff"] <= GatesSection().parity_atol
    assert fp32.figures["agreement"] == 1.0
    texts = parity_inputs(airline_snapshot)["parity_texts"]
    assert np.array_equal(ort_labels(result.out_dir, texts), pytorch_labels(candidates[name], airline_snapshot, MAX_LENGTH))


def test_every_variant_is_recorded_with_figures_or_a_reason(exports):
    result = exports["full"]
    assert list(result.variants) == list(variants.VARIANTS)
    for report in result.variants.values():
        if report.file:
            assert (result.out_dir / report.file).is_file()
            for key in ("size_mb", "p50_ms", "p99_ms", "samples_per_s", "max_abs_diff", "agreement",
                        "delta_macro_f1", "batch_label_agreement", "batch_max_prob_diff"):
                assert key in report.figures, (report.name, key)
        else:
            assert report.status in (results.SKIPPED, results.ERROR) and report.reason
    bf16 = result.variants["bf16"]  # onnxruntime's CPU provider has no bf16 MatMul kernel
    assert bf16.status == results.SKIPPED and results.UNSUPPORTED in bf16.reason
    assert result.selected in result.variants and result.variants[result.selected].status == results.PASS


def test_a_broken_variant_fails_the_gate_and_is_not_selected(candidates, airline_snapshot, tmp_path, monkeypatch):
    def build_broken(build: variants.Build, target: Path) -> list[str]:
        return [f"perturbed {perturb_initializer(build.fp32, target)}"]

    monkeypatch.setitem(variants.VARIANTS, "broken", variants.Variant("broken", build_broken, True, "test"))
    result = export.export_model(candidates["full"], tmp_path / "out", calibration_texts(airline_snapshot),
                                 MAX_LENGTH, variants=["fp32", "broken"], **parity_inputs(airline_snapshot))
    broken = result.variants["broken"]
    assert broken.status == results.FAIL
    assert "max_abs_diff" in broken.reason and "gates.parity_atol" in broken.reason
    assert result.selected == "fp32"
    manifest = json.loads((result.out_dir / names.MANIFEST_FILE).read_text())
    assert manifest["variants"]["broken"]["status"] == "fail" and manifest["selected"] == "fp32"


def test_a_variant_that_fails_to_build_is_recorded_not_raised(candidates, airline_snapshot, tmp_path, monkeypatch):
    def build_failing(build: variants.Build, target: Path) -> list[str]:
        raise RuntimeError("quantizer exploded")

    monkeypatch.setitem(variants.VARIANTS, "failing", variants.Variant("failing", build_failing, False, "test"))
    result = export.export_model(candidates["lora"], tmp_path / "out", [], MAX_LENGTH,
                                 variants=["fp32", "failing"], **parity_inputs(airline_snapshot))
    assert result.variants["failing"].status == results.ERROR
    assert "quantizer exploded" in result.variants["failing"].reason
    assert not (result.out_dir / "failing").exists()


def test_manifest_hashes_match_the_files(exports, tmp_path):
    result = exports["lora"]
    manifest = json.loads((result.out_dir / names.MANIFEST_FILE).read_text())
    for name in ("labels.json", "tokenizer.json", "tokenizer_config.json", "model_card.md", "fp32/model.onnx"):
        assert manifest["files"][name] == exported.sha256(result.out_dir / name)
    assert exported.verify_files(result.out_dir) == []
    copy = shutil.copytree(result.out_dir, tmp_path / "copy")
    (copy / "labels.json").write_text('["tampered"]')
    assert exported.verify_files(copy) == ["labels.json"]


def test_manifest_tells_serving_where_everything_is(exports, airline_snapshot):
    result = exports["full"]
    manifest = json.loads((result.out_dir / names.MANIFEST_FILE).read_text())
    assert json.loads((result.out_dir / manifest["labels_file"]).read_text()) == airline_snapshot.labels
    assert manifest["selected_file"] == f"{manifest['selected']}/model.onnx"
    assert manifest["max_length"] == MAX_LENGTH and manifest["pad_id"] == 0  # BERT's [PAD]
    assert [i["name"] for i in manifest["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert manifest["source"] == {"candidate": "full", "snapshot": airline_snapshot.id}
    tokenizer = json.loads((result.out_dir / "tokenizer.json").read_text())
    assert tokenizer["truncation"]["max_length"] == MAX_LENGTH  # not the training setting
    assert all("batch_invariant" in v for v in manifest["variants"].values())
    assert "## Variants" in (result.out_dir / names.CARD_FILE).read_text()


def test_reexport_gives_the_same_fp32_file(exports, candidates, tmp_path):
    model, tokenizer, _ = source.load_for_export(candidates["lora"])
    source.export_fp32(model, tokenizer, tmp_path / "again.onnx")
    manifest = json.loads((exports["lora"].out_dir / names.MANIFEST_FILE).read_text())
    assert exported.sha256(tmp_path / "again.onnx") == manifest["files"]["fp32/model.onnx"]


def test_export_json_round_trips(exports):
    result = exports["full"]
    assert card.load_export(result.out_dir) == result


def test_prompt_tuning_is_refused_with_a_clear_error(tiny_model, airline_snapshot, tmp_path):
    from peft import PromptTuningConfig, TaskType, get_peft_model

    from ftops import models

    labels = airline_snapshot.labels
    model = get_peft_model(models.build_classifier(str(tiny_model), labels),
                           PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=4))
    train.save_trained(model, models.load_tokenizer(str(tiny_model), MAX_LENGTH), labels, str(tiny_model),
                       tmp_path / "prompt")
    with pytest.raises(export.ExportError, match="trained with prompt_tuning.*not exportable to ONNX"):
        export.export_model(tmp_path / "prompt", tmp_path / "out", [], MAX_LENGTH, **parity_inputs(airline_snapshot))


def test_an_existing_export_is_not_overwritten(exports, candidates, airline_snapshot):
    with pytest.raises(export.ExportError, match="already holds an export"):
        export.export_model(candidates["full"], exports["full"].out_dir, [], MAX_LENGTH,
                            **parity_inputs(airline_snapshot))


def test_mlflow_gets_every_variant_and_the_manifest(exports, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    result = exports["full"]
    assert publish.log_to_mlflow(result) is False  # no active run, no run id: nothing logged
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("export", artifact_location=(tmp_path / "art").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        assert publish.log_to_mlflow(result) is True
    client = MlflowClient()
    metrics = client.get_run(run.info.run_id).data.metrics
    assert metrics["export.fp32.passed"] == 1.0 and "export.int8_static.p50_ms" in metrics
    assert client.get_run(run.info.run_id).data.tags["ftops.export.selected"] == result.selected
    logged = {m.name for m in client.search_logged_models(experiment_ids=[experiment])}
    assert logged == {n for n, r in result.variants.items() if r.file}
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "export")}
    assert "export/export.json" in artifacts
    only_fp32 = dataclasses.replace(result, variants={"fp32": result.variants["fp32"]})  # cheaper
    assert publish.log_to_mlflow(only_fp32, run_id=run.info.run_id) is True  # e.g. a registry version's run
    assert mlflow.active_run() is None and client.get_run(run.info.run_id).info.status == "FINISHED"


def test_cli_export_prints_every_variant_and_the_selection(candidates, airline_snapshot, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from ftops.cli import app

    project = airline_snapshot.path.parent.parent
    config = tmp_path / "ftops.yaml"
    config.write_text(yaml.safe_dump({"project": {"dir": str(project)},
                                      "model": {"name": str(candidates["full"]), "max_length": MAX_LENGTH}}))
    done = CliRunner().invoke(app, ["export", "--model", str(candidates["full"]), "--snapshot", airline_snapshot.id,
                                    "--config", str(config)], terminal_width=250)
    assert done.exit_code == 0, done.output
    for name in variants.VARIANTS:
        assert name in done.output
    assert "selected" in done.output
    (folder,) = (project / "exports").glob("full-*")
    manifest = json.loads((folder / names.MANIFEST_FILE).read_text())
    assert manifest["source"]["snapshot"] == airline_snapshot.id and manifest["selected"] in manifest["variants"]


# ---------------------------------------------------------------- rules and selection (pure)


def report(name: str, status: str, p50: float, delta_f1: float = 0.0) -> results.VariantReport:
    return results.VariantReport(name, status, file=f"{name}/model.onnx",
                                figures={"p50_ms": p50, "delta_macro_f1": delta_f1})


def test_the_f1_rule_is_paired_non_inferiority_not_the_point_delta():
    """Two int8-like variants on 3000 texts: one differs from PyTorch on 3 of them, the other
    flips 15% of the labels both ways. The paired CI passes the first and fails the second,
    as the A/B cost rule would judge them."""
    rng = np.random.default_rng(0)
    n, gates = 3000, GatesSection()
    y = rng.integers(0, 3, n)
    reference = np.where(rng.random(n) < 0.8, y, rng.integers(0, 3, n))
    few = reference.copy()
    few[:3] = (few[:3] + 1) % 3
    noisy = np.where(rng.random(n) < 0.15, rng.integers(0, 3, n), reference)

    def rule(pred):
        figures = parity.f1_figures(y, reference, pred, 3, gates.alpha)
        report = results.VariantReport("int8", results.FAIL, file="x", exact=False,
                                       figures={**figures, "batch_label_agreement": 1.0, "batch_max_prob_diff": 0.0})
        (f1_rule,) = [r for r in parity.parity_rules(report, gates) if r.setting == "max_f1_loss"]
        return figures, f1_rule

    figures, f1_rule = rule(few)
    assert figures["delta_macro_f1_ci_low"] <= figures["delta_macro_f1"] <= figures["delta_macro_f1_ci_high"]
    assert f1_rule.passed and f1_rule.name == "delta_macro_f1_ci_low"
    figures, f1_rule = rule(noisy)
    assert not f1_rule.passed and figures["delta_macro_f1_ci_low"] < -gates.max_f1_loss


def test_failing_only_batch_invariance_means_unbatched_only():
    rules = [results.Rule("agreement", 0.99, 0.98, True, "parity_min_agreement"),
             results.Rule("batch_label_agreement", 0.97, 1.0, False, "batch_label_agreement", batch=True)]
    status, reason = parity.verdict(rules)
    assert status == results.UNBATCHED and "gates.batch_label_agreement" in reason
    rules[0] = results.Rule("agreement", 0.90, 0.98, False, "parity_min_agreement")
    assert parity.verdict(rules)[0] == results.FAIL


def test_selection_takes_the_fastest_batch_invariant_variant_within_the_f1_loss():
    gates = GatesSection()
    reports = {r.name: r for r in [report("fp32", results.PASS, 6.0), report("int8_dynamic", results.UNBATCHED, 3.0),
                                   report("int8_static", results.PASS, 4.0, delta_f1=-0.02),
                                   report("optimized", results.PASS, 5.0), report("broken", results.FAIL, 1.0)]}
    selected, why = select(reports, gates)
    assert selected == "optimized"
    assert "int8_dynamic" in why  # the faster unbatched_only variant is named, not chosen
    assert select({"x": report("x", results.FAIL, 1.0)}, gates)[0] is None
    selected, why = select(reports, GatesSection(unbatched_ok=True))
    assert selected == "int8_dynamic" and "served one text per call" in why


# ---------------------------------------------------------------- the real model


@pytest.mark.slow
def test_real_minilm_lora_and_full_export_with_parity(airline_snapshot, tmp_path):
    cfg = candidate_config("minilm-l6", tmp_path, 48, steps=3)
    for candidate in cfg.candidates:
        folder = tmp_path / candidate.name
        train.train_candidate(cfg, candidate, airline_snapshot, folder)
        result = export.export_model(folder, tmp_path / f"export-{candidate.name}", calibration_texts(airline_snapshot),
                                     48, variants=["fp32", "optimized", "int8_dynamic"], **parity_inputs(airline_snapshot))
        fp32 = result.variants["fp32"]
        assert fp32.status == results.PASS, fp32.reason
        assert result.variants["optimized"].status == results.PASS, result.variants["optimized"].reason
        texts = parity_inputs(airline_snapshot)["parity_texts"]
        assert np.array_equal(ort_labels(result.out_dir, texts), pytorch_labels(folder, airline_snapshot, 48))
        assert exported.verify_files(result.out_dir) == []
