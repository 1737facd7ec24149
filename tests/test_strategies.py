import pytest
import torch

from ftops import models, strategies, train
from ftops.config import CandidateSection, Config
from ftops.errors import ConfigError


def build(tiny_model, labels=("a", "b", "c")):
    return models.build_classifier(str(tiny_model), list(labels))


def config_with(tiny_model, **candidate):
    return Config.model_validate({"model": {"name": str(tiny_model)},
                                  "candidates": [{"name": "c", **candidate}]})


def test_registry_has_every_strategy_of_the_issue():
    assert set(strategies.STRATEGIES) >= {"full", "freeze", "llrd", "lora", "ia3", "prompt_tuning", "bottleneck"}


@pytest.mark.parametrize("candidate, message", [
    ({"strategy": "qlora"}, r"Unknown strategy 'qlora'. Available: full, freeze, llrd, lora, ia3, prompt_tuning, bottleneck"),
    ({"strategy": "lora", "params": {"rank": 0}}, r"Candidate 'c' \(strategy lora\): params 'rank' = 0: .*greater than or equal to 1"),
    ({"strategy": "freeze", "params": {"layers": 5}}, r"layers=5 but the model has 2 encoder layers"),
    ({"strategy": "lora", "params": {"rnak": 4}}, r"unknown key 'rnak'; allowed: rank, alpha, dropout, target_modules"),
])
def test_bad_candidates_fail_before_training(tiny_model, candidate, message):
    with pytest.raises(ConfigError, match=message):
        train.check_candidates(config_with(tiny_model, **candidate))


def test_non_positive_learning_rate_is_a_config_error():
    with pytest.raises(ValueError, match="learning_rate"):
        Config.model_validate({"candidates": [{"name": "c", "learning_rate": 0}]})


def test_unknown_candidate_name_lists_the_configured_ones(tiny_model):
    with pytest.raises(ConfigError, match="Unknown candidate nope; the config defines: c"):
        train.check_candidates(config_with(tiny_model), ["nope"])


def test_a_strategy_trains_with_its_own_defaults_unless_the_candidate_sets_them(tiny_model):
    lora, shared = strategies.get_strategy("lora"), CandidateSection.model_fields["learning_rate"].default
    assert lora.defaults["learning_rate"] > 10 * shared
    ((plain, _),) = train.check_candidates(config_with(tiny_model, strategy="lora"))
    assert {k: getattr(plain, k) for k in lora.defaults} == lora.defaults
    ((own, _),) = train.check_candidates(config_with(tiny_model, strategy="lora", learning_rate=3e-4))
    assert own.learning_rate == 3e-4
    ((full, _),) = train.check_candidates(config_with(tiny_model, strategy="full"))
    assert full.learning_rate == shared


def test_freeze_freezes_embeddings_and_bottom_layers(tiny_model):
    prepared = strategies.get_strategy("freeze").prepare(build(tiny_model), strategies.get_strategy("freeze").Params(layers=1), 1e-3, 0.01)
    model = prepared.model
    assert not any(p.requires_grad for p in model.bert.embeddings.parameters())
    assert not any(p.requires_grad for p in model.bert.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in model.bert.encoder.layer[1].parameters())
    assert prepared.trainable == sum(p.numel() for g in prepared.param_groups for p in g["params"])


def test_llrd_groups_have_decayed_learning_rates(tiny_model):
    model = build(tiny_model)
    params = strategies.get_strategy("llrd").Params(decay=0.5, head_lr_multiplier=3.0)
    prepared = strategies.get_strategy("llrd").prepare(model, params, 1e-3, 0.01)
    lr_of = {g["name"]: g["lr"] for g in prepared.param_groups}
    assert lr_of["layer1"] == pytest.approx(1e-3)         # top layer: base LR
    assert lr_of["layer0"] == pytest.approx(0.5e-3)       # one below: x decay
    assert lr_of["embeddings"] == pytest.approx(0.25e-3)  # x decay^num_layers
    assert lr_of["head"] == pytest.approx(3e-3)           # discriminative head LR
    grouped = [p for g in prepared.param_groups for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == len(list(model.parameters()))
    assert all(g["weight_decay"] == 0 for g in prepared.param_groups if g["name"].endswith("no_decay"))


def test_lora_reports_its_trainable_share(tiny_model):
    prepared = strategies.get_strategy("lora").prepare(build(tiny_model), strategies.get_strategy("lora").Params(rank=2), 1e-3, 0.0)
    counted = sum(p.numel() for p in prepared.model.parameters() if p.requires_grad)
    assert prepared.trainable == counted and prepared.is_peft
    names = [n for n, p in prepared.model.named_parameters() if p.requires_grad]
    assert any("lora_A" in n and "intermediate.dense" in n for n in names)  # all linear layers
    assert any("classifier" in n for n in names)  # the head trains too


@pytest.mark.parametrize("name", ["full", "freeze", "llrd", "lora", "ia3", "prompt_tuning", "bottleneck"])
def test_every_strategy_runs_a_forward_and_backward(tiny_model, name):
    strategy = strategies.get_strategy(name)
    params = strategy.Params(**({"layers": 1} if name == "freeze" else {}))
    prepared = strategy.prepare(build(tiny_model), params, 1e-3, 0.0)
    batch = {"input_ids": torch.randint(1000, 2000, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    loss = prepared.model(**batch).logits.sum()
    loss.backward()
    assert any(p.grad is not None for g in prepared.param_groups for p in g["params"])
    assert 0 < prepared.trainable <= prepared.total
