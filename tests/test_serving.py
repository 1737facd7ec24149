"""Triton serving against the real tritonserver (nvidia-pytriton binary, python backend)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ftops.config import Config, ServingSection
from ftops.serve import deploy, loadtest
from ftops.serve.triton import models, repository, server
from ftops.serve.triton.client import TritonClient
from ftops.serve.deployable import Deployable
from ftops.serve.runtime import ServingError

TEXTS = ["@united thanks for the lovely crew", "my bag is lost AGAIN", "Flight delayed 3 hours. Great.",
         "ok", "café ☕ and 😀 on board", "东京 flight was fine", "x " * 300, "a\tb\nc"] * 8


def make_export(folder: Path, seed: int) -> Path:
    """A tiny random BERT exported to ONNX with the real MiniLM tokenizer: a real export
    folder layout (manifest with every file's sha256) in a second."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from ftops.artifacts.exported import file_hashes
    from ftops.models import resolve_model

    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=3, max_position_embeddings=128)).eval()
    (folder / "fp32").mkdir(parents=True)
    ids = torch.ones(2, 8, dtype=torch.long)
    axes = {k: {0: "batch", 1: "sequence"} for k in ("input_ids", "attention_mask", "token_type_ids")}
    torch.onnx.export(model, (ids, ids, torch.zeros_like(ids)), str(folder / "fp32" / "model.onnx"),
                      input_names=list(axes), output_names=["logits"],
                      dynamic_axes={**axes, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    shutil.copy(resolve_model("minilm-l6") / "tokenizer.json", folder / "tokenizer.json")
    (folder / "labels.json").write_text(json.dumps(["negative", "neutral", "positive"]))
    (folder / "export.json").write_text(json.dumps({
        "selected": "fp32", "max_length": 96,
        "variants": {"fp32": {"status": "pass", "file": "fp32/model.onnx", "batch_invariant": True}},
        "files": file_hashes(folder)}))
    return folder


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return [make_export(root / f"e{i}", seed=i) for i in range(4)]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    cfg = Config.model_validate({
        "project": {"dir": str(root), "name": "svc"},
        "gates": {"p99_ms": 5000},
        "serving": {"http_port": 0, "grpc_port": 0, "metrics_port": 0, "load_requests": 150,
                    "load_warmup": 10, "load_concurrency": 4},
    })
    info = server.start(cfg)
    yield cfg, info
    assert server.stop(cfg)
    time.sleep(0.3)
    assert not Path(f"/proc/{info.pid}").exists() or b"tritonserver" not in Path(f"/proc/{info.pid}/cmdline").read_bytes()
    assert server.status(cfg) is None


# ------------------------------------------------------------ repository (no server)


def test_python_runtime_config_is_ragged_and_within_the_cores(exports):
    model = Deployable.from_export(exports[0])
    text = models.PythonOnnxRuntime().classifier_config("c", ServingSection(batching=True), model)
    instances, threads = models.default_instances(ServingSection())
    assert instances * threads <= (os.cpu_count() or 1)
    assert 'name: "TEXT" data_type: TYPE_STRING' in text and "dynamic_batching" in text  # one hop
    assert 'key: "bucket_size" value: { string_value: "8" }' in text
    assert 'key: "max_length" value: { string_value: "96" }' in text
    two_hop = models.PythonOnnxRuntime().classifier_config("c", ServingSection(one_hop=False, batching=True), model)
    assert "allow_ragged_batch: true" in two_hop and "TEXT" not in two_hop
    off = models.PythonOnnxRuntime().classifier_config("c", ServingSection(batching=False, one_hop=False), model)
    assert "allow_ragged_batch" not in off and "dynamic_batching" not in off


@pytest.mark.parametrize("gain, on", [(1.3, True), (0.8, False), (None, False)])
def test_auto_batching_follows_what_the_export_measured(exports, gain, on):
    model = Deployable.from_export(exports[0])
    model.batch_gain = gain
    text = models.PythonOnnxRuntime().classifier_config("c", ServingSection(), model)
    assert ("dynamic_batching" in text) is on
    assert models.batching(ServingSection(), model, gpu=True)[0]  # a GPU batches whatever the CPU measured
    assert models.batching(ServingSection(batching=False), model)[0] is False


def test_the_export_figures_give_the_batch_gain(exports, tmp_path):
    shutil.copytree(exports[0], tmp_path / "e")
    manifest = json.loads((tmp_path / "e" / "export.json").read_text())
    manifest["variants"]["fp32"]["figures"] = {"p50_ms": 10.0, "samples_per_s": 125.0}
    (tmp_path / "e" / "export.json").write_text(json.dumps(manifest))
    assert Deployable.from_export(tmp_path / "e").batch_gain == pytest.approx(1.25)


def test_a_batch_variant_dependent_model_runs_text_by_text(exports):
    model = Deployable.from_export(exports[0])
    model.batch_invariant = False
    text = models.PythonOnnxRuntime().classifier_config("c", ServingSection(), model)
    assert 'key: "bucket_size" value: { string_value: "1" }' in text
    with pytest.raises(ServingError, match="not batch-invariant"):
        models.OnnxRuntimeBackend().classifier_config("c", ServingSection(), model)


def test_onnxruntime_backend_runtime_writes_platform_and_postprocess(exports, tmp_path):
    cfg = ServingSection(runtime="onnxruntime_onnx")
    names = repository.write_version(tmp_path, "p", "v1", Deployable.from_export(exports[0]), cfg)
    assert 'platform: "onnxruntime_onnx"' in (tmp_path / names.classifier / "config.pbtxt").read_text()
    assert (tmp_path / names.postprocess / "1" / "model.py").is_file()
    assert names.postprocess in (tmp_path / names.ensemble / "config.pbtxt").read_text()


def test_an_export_without_a_passing_variant_is_refused(tmp_path, exports):
    shutil.copytree(exports[0], tmp_path / "e")
    (tmp_path / "e" / "export.json").write_text(json.dumps({"selected": None, "max_length": 64, "variants": {}}))
    with pytest.raises(ServingError, match="no variant passed the export gate"):
        Deployable.from_export(tmp_path / "e")


def test_a_stale_state_file_is_removed(tmp_path):
    cfg = Config.model_validate({"project": {"dir": str(tmp_path)}})
    server.state_dir(cfg).mkdir(parents=True)
    (server.state_dir(cfg) / "server.json").write_text(json.dumps({
        "pid": 999999, "host": "127.0.0.1", "http_port": 1, "grpc_port": 2, "metrics_port": 3,
        "repository": "/x", "log": "/x"}))
    assert server.status(cfg) is None
    assert not (server.state_dir(cfg) / "server.json").exists()


# ------------------------------------------------------------ the real server


def test_deploy_answers_equal_the_exported_model(project, exports):
    cfg, info = project
    result = deploy.deploy(cfg, exports[0], TEXTS)
    assert result.outcome == "promoted", result.reason
    assert result.smoke["alone_label_agreement"] == 1.0 and result.smoke["batched_max_prob_diff"] <= 1e-5
    name = deploy.champion_model(cfg)
    assert repository.steps(Path(info.repository), models.ModelNames.of(name)) == [f"{name}-classifier"]  # one hop
    reference = deploy.reference_probs(Deployable.from_export(exports[0]), TEXTS)
    results = {}
    with TritonClient(info.grpc_url) as grpc_client, TritonClient(info.http_url, "http") as http_client:
        results["grpc alone"] = grpc_client.classify(TEXTS, name, batch_size=1)
        results["grpc batched"] = grpc_client.classify(TEXTS, name, batch_size=16)
        results["http batched"] = http_client.classify(TEXTS, name, batch_size=7)
    concurrent: list = [None] * len(TEXTS)

    def one(i):
        with TritonClient(info.grpc_url) as c:
            concurrent[i] = c.classify([TEXTS[i]], name)[0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(TEXTS))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    results["concurrent"] = concurrent
    for way, preds in results.items():
        probs = np.array([p.probs for p in preds])
        assert np.abs(probs - reference).max() <= 1e-5, way
        assert [p.label for p in preds] == [["negative", "neutral", "positive"][i] for i in reference.argmax(1)], way


def test_the_two_hop_ensemble_answers_as_the_exported_model(project, exports):
    """serving.one_hop false: a tokenizer step, then the classifier (the GPU runtime's shape)."""
    cfg, info = project
    two_hop = cfg.serving.model_copy(update={"one_hop": False})
    model = Deployable.from_export(exports[0])
    repo = Path(info.repository)
    names = repository.write_version(repo, cfg.project.name, "v9two", model, two_hop)
    assert repository.steps(repo, names) == [names.tokenizer, names.classifier]
    reference = deploy.reference_probs(model, TEXTS)
    with TritonClient(info.grpc_url) as client:
        client.load(names.ensemble)
        try:
            for batch_size in (1, 16):
                probs = np.array([p.probs for p in client.classify(TEXTS, names.ensemble, batch_size=batch_size)])
                assert np.abs(probs - reference).max() <= 1e-5, batch_size
            with pytest.raises(ServingError, match="text 0 is empty"):
                client.classify([""], names.ensemble)
        finally:
            for step in names.unload_order():
                client.unload(step)
    repository.remove_version(repo, names)


@pytest.mark.parametrize("bad, message", [
    ("", "text 0 is empty"),
    (b"\xff\xfe bad", "not valid UTF-8"),
    ("y" * 1_000_000, "the limit is 65536"),
])
def test_bad_requests_get_clear_errors_and_the_model_survives(project, exports, bad, message):
    cfg, info = project
    name = deploy.champion_model(cfg)
    with TritonClient(info.grpc_url) as client:
        with pytest.raises(ServingError, match=message):
            client.classify([bad], name)
        assert client.classify(["still serving"], name)[0].label in ("negative", "neutral", "positive")


def test_wrong_tensor_name_and_unknown_model_are_clear(project):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    cfg, info = project
    name = deploy.champion_model(cfg)
    with TritonClient(info.grpc_url) as client:
        tensor = grpcclient.InferInput("TXT", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[b"hi"]], dtype=object))
        with pytest.raises(InferenceServerException, match="TXT"):
            client.client.infer(name, [tensor])
        with pytest.raises(ServingError, match="not loaded"):
            client.classify(["hi"], "no-such-model")
    with pytest.raises(ServingError, match="not reachable"):
        TritonClient("127.0.0.1:1", timeout_s=2).classify(["hi"], name)


def test_hot_swap_under_load_loses_no_request(project, exports):
    cfg, info = project
    stop = threading.Event()
    counts = {"ok": 0, "failed": []}

    def generator():
        with TritonClient(info.grpc_url) as client:
            while not stop.is_set():
                name = deploy.champion_model(cfg)  # follows the route, as the gateway does
                try:
                    client.classify(["the flight was fine"], name)
                    counts["ok"] += 1
                except Exception as exc:
                    counts["failed"].append(str(exc))

    thread = threading.Thread(target=generator)
    thread.start()
    try:
        for export in exports[1:3]:
            assert deploy.deploy(cfg, export, TEXTS).outcome == "promoted"
    finally:
        stop.set()
        thread.join()
    assert counts["ok"] > 50 and counts["failed"] == []
    routes = deploy.routing(cfg)
    assert routes["champion"].export == str(exports[2]) and routes["previous"].export == str(exports[1])
    with TritonClient(info.grpc_url) as client:
        first = models.ModelNames.for_tag("svc", deploy.tag_for(Deployable.from_export(exports[0]), None))
        assert not client.ready(first.ensemble)  # older than previous: unloaded ...
    assert not any((Path(info.repository) / name).exists() for name in first.all())  # ... and removed
    assert set(repository.versions(Path(info.repository), "svc")) == {r.tag for r in routes.values()}


def test_a_candidate_missing_the_p99_slo_is_not_promoted(project, exports):
    cfg, info = project
    before = deploy.routing(cfg)["champion"]
    strict = cfg.model_copy(update={"gates": cfg.gates.model_copy(update={"p99_ms": 0.01})})
    result = deploy.deploy(strict, exports[3], TEXTS)
    assert result.outcome == "rejected" and "p99" in result.reason and "gates.p99_ms" in result.reason
    assert deploy.routing(cfg)["champion"] == before
    with TritonClient(info.grpc_url) as client:
        assert not client.ready(result.route.ensemble)
        assert client.classify(["still the champion"], before.ensemble)
    assert not (Path(info.repository) / result.route.ensemble).exists()
    assert Path(result.histogram).stat().st_size > 1000


def test_rollback_routes_back_and_a_second_undoes_it(project, exports):
    cfg, info = project
    routes = deploy.routing(cfg)
    champion, previous = routes["champion"], routes["previous"]
    assert deploy.rollback(cfg) == previous
    assert deploy.routing(cfg)["previous"] == champion
    with TritonClient(info.grpc_url) as client:
        assert client.classify(["hello"], deploy.champion_model(cfg))
    assert deploy.rollback(cfg) == champion


def test_loadtest_reports_and_cross_checks_with_the_server(project):
    cfg, info = project
    result = loadtest.run(info.grpc_url, deploy.champion_model(cfg), TEXTS, concurrency=2, requests=100, warmup=5)
    assert result.requests == 100 and result.errors == 0
    assert result.p50_ms <= result.p95_ms <= result.p99_ms
    assert 0 < result.server_avg_ms < result.p99_ms  # the server's own view is below the client's tail
    assert result.throughput > 0


def test_an_external_triton_is_used_through_its_uri_and_never_stopped(project, exports, tmp_path):
    """The team path (infra/): Triton is a service ftops did not start, named by uris.triton
    with a shared model repository. Here the module's server plays that service; the deploy
    code is the same, only the URIs differ."""
    cfg, info = project
    team = cfg.model_copy(update={
        "project": cfg.project.model_copy(update={"dir": tmp_path / "team", "name": "team"}),
        "uris": cfg.uris.model_copy(update={"triton": f"http://{info.http_url}",
                                            "triton_repository": str(server.repository_dir(cfg))}),
        "serving": cfg.serving.model_copy(update={"grpc_port": info.grpc_port, "metrics_port": info.metrics_port}),
    })

    def tritons() -> int:  # servers on this repository (stubs come and go with models; other
        # people's tests may start their own servers meanwhile)
        def argv(path: Path) -> list[bytes]:
            try:
                return path.read_bytes().split(b"\0")
            except OSError:
                return [b""]
        wanted = f"--model-repository={server.repository_dir(cfg)}".encode()
        found = map(argv, Path("/proc").glob("[0-9]*/cmdline"))
        return sum(a[0].endswith(b"bin/tritonserver") and wanted in a for a in found)

    before = tritons()
    found = server.start(team)
    assert found.external and found.grpc_url == info.grpc_url and tritons() == before == 1
    result = deploy.deploy(team, exports[3], TEXTS[:16])
    assert result.outcome == "promoted", result.reason
    assert (server.repository_dir(cfg) / deploy.champion_model(team)).is_dir()  # the shared repository
    with TritonClient(info.grpc_url) as client:
        assert len(client.classify(TEXTS[:4], deploy.champion_model(team))) == 4
    assert server.stop(team) is False and server.ready(info)  # not ours to stop

    gone = team.model_copy(update={"uris": team.uris.model_copy(update={"triton": "http://127.0.0.1:9"}),
                                   "serving": team.serving.model_copy(update={"ready_timeout_s": 1})})
    assert server.status(gone) is None
    with pytest.raises(ServingError, match=r"uris.triton\) is not ready .* does not start a Triton"):
        server.start(gone)


def test_a_strategy_in_its_own_file_trains_exports_and_serves(project, tiny_model, airline_snapshot, tmp_path):
    """tests/toy_strategy.py is the whole strategy: nothing else names it, yet its own saved
    form goes through training, export (merged) and Triton like a built-in strategy's."""
    import toy_strategy  # registers "temperature_head"

    from ftops import export, strategies, train

    cfg, info = project
    trained_cfg = Config.model_validate({
        "project": {"dir": str(tmp_path)}, "model": {"name": str(tiny_model), "max_length": 48},
        "candidates": [{"name": "toy", "strategy": "temperature_head", "max_steps": 6, "batch_size": 16,
                        "learning_rate": 5e-2, "params": {"temperature": 2.0}}]})
    result = train.train_candidate(trained_cfg, trained_cfg.candidates[0], airline_snapshot, tmp_path / "toy")
    model, tokenizer, labels = train.load_trained(result.out_dir)
    assert isinstance(strategies.holding(model), toy_strategy.TemperatureHeadStrategy)
    temperature = float(model.classifier.log_t.exp())
    assert temperature != pytest.approx(2.0, abs=1e-4)  # it trained, and came back as trained

    test = airline_snapshot.split("test")
    label_ids = [airline_snapshot.labels.index(label) for label in test["label"]]
    exported = export.export_model(result.out_dir, tmp_path / "export", [], 48, variants=["fp32"],
                                   parity_texts=list(test["text"]), parity_labels=label_ids)
    assert exported.selected == "fp32", exported.selection_reason
    deployed = deploy.deploy(cfg, tmp_path / "export", TEXTS[:16])
    assert deployed.outcome == "promoted", deployed.reason

    import torch

    with torch.no_grad():  # the unmerged model as trained is the reference
        encoded = tokenizer(TEXTS[:16], truncation=True, max_length=48, padding=True, return_tensors="pt")
        expected = torch.softmax(model(**encoded).logits, -1).numpy()
    with TritonClient(info.grpc_url) as client:
        served = np.array([p.probs for p in client.classify(TEXTS[:16], deploy.champion_model(cfg))])
    assert np.abs(served - expected).max() <= 1e-4


def test_the_tfidf_baseline_serves_through_triton_as_scikit_learn_answers(project, airline_snapshot, tmp_path):
    """A graph that takes the text itself: one step even with serving.one_hop false, its
    answers those of the scikit-learn pipeline, alone, batched and for bad input."""
    from ftops.export.baseline import export_baseline
    from ftops.train.baseline import fit_baseline, load_baseline, save_baseline

    cfg, info = project
    save_baseline(fit_baseline(airline_snapshot), airline_snapshot.labels, tmp_path / "baseline")
    test = airline_snapshot.split("test")
    exported = export_baseline(tmp_path / "baseline", tmp_path / "export", parity_texts=list(test["text"]),
                               parity_labels=[airline_snapshot.labels.index(label) for label in test["label"]])
    assert exported.selected == "fp32", exported.selection_reason
    two_hop = cfg.model_copy(update={"serving": cfg.serving.model_copy(update={"one_hop": False})})
    deployed = deploy.deploy(two_hop, tmp_path / "export", TEXTS)
    assert deployed.outcome == "promoted", deployed.reason
    name = deploy.champion_model(cfg)
    assert repository.steps(Path(info.repository), models.ModelNames.of(name)) == [f"{name}-classifier"]
    expected = load_baseline(tmp_path / "baseline").probs(TEXTS)
    with TritonClient(info.grpc_url) as client:
        for batch_size in (1, 16):
            served = client.classify(TEXTS, name, batch_size=batch_size)
            assert np.abs(np.array([p.probs for p in served]) - expected).max() <= 1e-5, batch_size
            assert [p.label for p in served] == [airline_snapshot.labels[i] for i in expected.argmax(1)]
        with pytest.raises(ServingError, match="text 0 is empty"):
            client.classify(["  "], name)
