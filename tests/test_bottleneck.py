"""Bottleneck adapters (strategy `bottleneck`): the encoder stays as it was, the adapters and
the head train, the share is reported, and a saved candidate reloads and exports as trained.

The slow tests use the real MiniLM and a real batch of airline tweets (a few optimizer steps
by hand: the Trainer path is covered on the tiny model, in seconds).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from ftops import export, models, strategies, train
from ftops.config import Config
from ftops.errors import ConfigError

MAX_LENGTH = 48


def adapter_size(hidden: int, bottleneck: int) -> int:
    """Parameters of one adapter: down (weight + bias) and up (weight + bias)."""
    return hidden * bottleneck + bottleneck + bottleneck * hidden + hidden


def encode(tokenizer, frame, labels):
    batch = tokenizer(list(frame["text"]), padding=True, truncation=True, max_length=MAX_LENGTH,
                      return_tensors="pt")
    return batch, torch.tensor([labels.index(label) for label in frame["label"]])


# ---------------------------------------------------------------- the real model (slow)


@pytest.fixture(scope="module")
def minilm(airline_snapshot):
    """MiniLM before and after adapting it, and after 3 AdamW steps on 16 real tweets."""
    torch.manual_seed(0)
    labels = airline_snapshot.labels
    model = models.build_classifier("minilm-l6", labels).eval()
    tokenizer = models.load_tokenizer("minilm-l6", MAX_LENGTH)
    batch, y = encode(tokenizer, airline_snapshot.split("train").iloc[:16], labels)
    pretrained = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        plain = model(**batch).logits

    strategy = strategies.get_strategy("bottleneck")
    params = strategies.parse_params("bn", strategy, {}, model.config.num_hidden_layers)
    prepared = strategy.prepare(model, params, lr=1e-3, weight_decay=0.01)
    with torch.no_grad():
        adapted = model(**batch).logits

    optimizer = torch.optim.AdamW([{k: v for k, v in g.items() if k != "name"} for g in prepared.param_groups])
    model.train()
    for _ in range(3):
        F.cross_entropy(model(**batch).logits, y).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        trained = model(**batch).logits
    return SimpleNamespace(model=model, tokenizer=tokenizer, labels=labels, batch=batch, prepared=prepared,
                           pretrained=pretrained, plain=plain, adapted=adapted, trained=trained)


@pytest.mark.slow
def test_zero_initialised_adapters_leave_the_pretrained_logits_unchanged(minilm):
    assert torch.equal(minilm.adapted, minilm.plain)
    assert not torch.equal(minilm.trained, minilm.plain)  # ...until they train


@pytest.mark.slow
def test_training_leaves_every_encoder_weight_unchanged_and_moves_the_adapters(minilm):
    after = dict(minilm.model.named_parameters())
    body = [n for n in minilm.pretrained if not n.startswith("classifier")]
    assert any(n.startswith("bert.embeddings") for n in body) and any(".layer.5." in n for n in body)
    assert all(torch.equal(after[n], minilm.pretrained[n]) for n in body)  # bit-identical
    assert not torch.equal(after["classifier.weight"], minilm.pretrained["classifier.weight"])
    ups = {n: p for n, p in after.items() if n.endswith("adapter.up.weight")}
    assert sorted(ups) == [f"bert.encoder.layer.{i}.output.dense.adapter.up.weight" for i in range(6)]
    assert all(p.abs().sum() > 0 for p in ups.values())  # moved away from their zero start


@pytest.mark.slow
def test_trainable_share_is_the_adapters_and_the_head(minilm):
    hidden, n_labels = 384, len(minilm.labels)
    adapters = 6 * adapter_size(hidden, hidden // 16)  # one per layer after the FFN, bottleneck 24
    head = hidden * n_labels + n_labels
    prepared = minilm.prepared
    assert prepared.trainable == adapters + head == 113_040 + head
    assert prepared.total == sum(p.numel() for p in minilm.pretrained.values()) + adapters
    assert prepared.trainable == sum(p.numel() for g in prepared.param_groups for p in g["params"])
    assert prepared.trainable_share == pytest.approx((adapters + head) / prepared.total)
    assert prepared.trainable_share < 0.006 and not prepared.is_peft


@pytest.mark.slow
def test_saved_candidate_reloads_to_identical_logits(minilm, tmp_path):
    train.save_trained(minilm.model, minilm.tokenizer, minilm.labels, "minilm-l6", tmp_path)
    meta = json.loads((tmp_path / train.MODEL_DIR / train.META_FILE).read_text())
    assert sorted(meta["bottleneck"]["adapters"]) == [f"bert.encoder.layer.{i}.output.dense" for i in range(6)]
    loaded, _, labels = train.load_trained(tmp_path)
    assert labels == minilm.labels and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(**minilm.batch).logits, minilm.trained)


# ---------------------------------------------------------------- settings (tiny model)


def tiny_config(tiny_model, params, root=None, **candidate):
    return Config.model_validate({"project": {"dir": str(root)} if root else {},
                                  "model": {"name": str(tiny_model), "max_length": 32},
                                  "candidates": [{"name": "bn", "strategy": "bottleneck", "params": params,
                                                  **candidate}]})


@pytest.mark.parametrize("params, message", [
    ({"reduction_factor": 0}, r"params 'reduction_factor' = 0: Input should be greater than or equal to 1"),
    ({"activation": "tanh"}, r"'activation' = 'tanh': Input should be 'relu' or 'gelu'"),
    ({"placement": "attention"}, r"'placement' = 'attention': Input should be 'ffn' or 'both'"),
    ({"dropout": 1.0}, r"'dropout' = 1.0: Input should be less than 1"),
    ({"layers": [0, 2]}, r"layers \[2\] out of range: the model has 2 encoder layers \(0 to 1\)"),
    ({"layers": []}, r"layers=\[\] must be distinct and not empty"),
    ({"reduction": 8}, r"unknown key 'reduction'; allowed: reduction_factor, activation, dropout, placement, "
                       r"layers, train_layer_norm"),
])
def test_bad_settings_are_config_errors_before_training(tiny_model, params, message):
    with pytest.raises(ConfigError, match=r"Candidate 'bn' \(strategy bottleneck\): .*" + message):
        train.check_candidates(tiny_config(tiny_model, params))


def test_placement_layers_and_layer_norms(tiny_model):
    model = models.build_classifier(str(tiny_model), ["a", "b"])
    params = strategies.get_strategy("bottleneck").Params(placement="both", layers=[1], train_layer_norm=True, reduction_factor=4)
    prepared = strategies.get_strategy("bottleneck").prepare(model, params, 1e-3, 0.01)
    assert sorted(strategies.adapter_configs(model)) == ["bert.encoder.layer.1.attention.output.dense",
                                                          "bert.encoder.layer.1.output.dense"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n in trainable if "adapter" not in n and "LayerNorm" not in n} == {"classifier.weight",
                                                                                      "classifier.bias"}
    assert "bert.encoder.layer.0.output.LayerNorm.weight" in trainable  # every encoder LayerNorm
    assert not any(n.startswith("bert.embeddings") for n in trainable)
    layer_norms = 2 * 2 * (2 * 32)  # 2 layers x (attention, output) x (weight, bias) of width 32
    assert prepared.trainable == 2 * adapter_size(32, 8) + layer_norms + 2 * 32 + 2
    decayed = {id(p) for g in prepared.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(model.bert.encoder.layer[1].output.dense.adapter.up.weight) in decayed
    assert id(model.bert.encoder.layer[1].output.dense.adapter.up.bias) not in decayed


def test_an_adapted_model_is_trained_on_not_adapted_twice(tiny_model):
    """init: champion with a bottleneck champion keeps its adapters; another size is refused."""
    model = models.build_classifier(str(tiny_model), ["a", "b"])
    strategy = strategies.get_strategy("bottleneck")
    strategy.prepare(model, strategies.get_strategy("bottleneck").Params(), 1e-3, 0.0)
    first = model.bert.encoder.layer[0].output.dense.adapter
    strategy.prepare(model, strategies.get_strategy("bottleneck").Params(), 1e-3, 0.0)
    assert model.bert.encoder.layer[0].output.dense.adapter is first
    assert type(model.bert.encoder.layer[0].output.dense.weight) is torch.nn.Parameter
    with pytest.raises(ValueError, match="already has an adapter"):
        strategy.prepare(model, strategies.get_strategy("bottleneck").Params(reduction_factor=4), 1e-3, 0.0)


# ---------------------------------------------------------------- train, reload, export (tiny model)


@pytest.fixture(scope="module")
def trained_tiny(tiny_model, airline_snapshot, tmp_path_factory):
    """A tiny bottleneck candidate through the real training path (Trainer, checkpoints,
    best-model reload, save_trained); a high LR so the adapters matter in the export."""
    root = tmp_path_factory.mktemp("bottleneck")
    cfg = tiny_config(tiny_model, {"placement": "both", "reduction_factor": 4}, root,
                      max_steps=3, batch_size=16, learning_rate=3e-2)
    return train.train_candidate(cfg, cfg.candidates[0], airline_snapshot, root / "bn")


def test_train_candidate_reports_and_saves_the_adapters(trained_tiny, airline_snapshot):
    n_labels = len(airline_snapshot.labels)
    assert trained_tiny.trainable == 4 * adapter_size(32, 8) + 32 * n_labels + n_labels
    assert trained_tiny.trainable_share < 0.005
    model, tokenizer, labels = train.load_trained(trained_tiny.out_dir)
    assert len(strategies.adapter_configs(model)) == 4
    assert all(m.up.weight.abs().sum() > 0 for m in model.modules() if isinstance(m, strategies.BottleneckAdapter))
    batch, _ = encode(tokenizer, airline_snapshot.split("test").iloc[:8], labels)
    with torch.no_grad():
        logits = model(**batch).logits
        for m in model.modules():  # the same model with its adapters switched off
            if isinstance(m, strategies.BottleneckAdapter):
                m.up.weight.zero_(), m.up.bias.zero_()
        assert not torch.allclose(model(**batch).logits, logits, atol=1e-4)  # they matter


def test_a_bottleneck_candidate_exports_to_onnx_within_parity(trained_tiny, airline_snapshot, tmp_path):
    import onnx

    test = airline_snapshot.split("test")
    result = export.export_model(trained_tiny.out_dir, tmp_path / "export", [], 32,
                                 parity_texts=list(test["text"]),
                                 parity_labels=[airline_snapshot.labels.index(label) for label in test["label"]],
                                 variants=["fp32", "optimized"])
    assert {n: r.status for n, r in result.variants.items()} == {"fp32": "pass", "optimized": "pass"}
    assert result.variants["fp32"].figures["max_abs_diff"] < 1e-5
    graph = onnx.load(str(result.model_path("fp32"))).graph
    shapes = [list(t.dims) for t in graph.initializer]
    assert shapes.count([32, 8]) == shapes.count([8, 32]) == 4  # every adapter is in the graph
