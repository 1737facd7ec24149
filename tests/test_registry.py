"""The registry against a real MLflow store on SQLite: aliases, promotion, rollback."""

import json

import pytest

from ftops import decide, registry, train
from ftops.config import Config
from ftops.errors import FtopsError


@pytest.fixture(scope="module")
def trained_round(tiny_model, airline_snapshot, tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    cfg = Config.model_validate({
        "project": {"dir": str(root), "name": "reg-test"}, "model": {"name": str(tiny_model), "max_length": 32},
        "candidates": [{"name": "a", "strategy": "full", "max_steps": 2, "batch_size": 16},
                       {"name": "b", "strategy": "lora", "max_steps": 2, "batch_size": 16}],
    })
    return cfg, train.train_round(cfg, airline_snapshot)


def test_register_promote_and_rollback(trained_round):
    cfg, result = trained_round
    (_, run_a), (_, run_b) = result.candidates
    assert registry.find(cfg, registry.CHAMPION) is None
    v1 = registry.register(cfg, run_a)
    v2 = registry.register(cfg, run_b)
    assert v1.tags["ftops.candidate"] == "a" and v1.tags["ftops.data_snapshot"]  # lineage copied
    registry.promote(cfg, v1.version)
    registry.set_alias(cfg, registry.CHALLENGER, v2.version)
    champion = registry.promote(cfg, v2.version)
    assert champion.version == v2.version
    assert registry.get(cfg, registry.PREVIOUS).version == v1.version
    assert registry.find(cfg, registry.CHALLENGER) is None  # the challenger became champion
    back = registry.rollback(cfg)
    assert back.version == v1.version
    assert registry.get(cfg, registry.PREVIOUS).version == v2.version
    assert registry.get(cfg, v2.version).tags[registry.TAG_ROLLED_BACK] == "true"
    assert registry.rollback(cfg).version == v2.version  # a second rollback undoes the first
    listed = registry.versions(cfg)
    assert [v.version for v in listed] == [v2.version, v1.version]


def test_a_registry_version_downloads_and_loads(trained_round):
    cfg, result = trained_round
    version = registry.register(cfg, result.candidates[1][1])
    folder = registry.download(cfg, version.version)
    model, tokenizer, labels = train.load_trained(folder)
    assert labels == json.loads((folder / "model" / "labels.json").read_text())
    assert hasattr(model, "peft_config")  # the LoRA candidate came back as an adapter on its base


def test_unknown_versions_and_empty_rollback_are_clear(tmp_path, tiny_model):
    cfg = Config.model_validate({"project": {"dir": str(tmp_path), "name": "empty"}})
    with pytest.raises(registry.RegistryError, match="No model version 'champion' in the registry of 'empty'"):
        registry.get(cfg, "champion")
    with pytest.raises(FtopsError, match="Cannot find model 'nope'"):
        decide.resolve(cfg, "nope")


def test_rollback_without_previous_is_refused(trained_round):
    cfg, result = trained_round
    cfg2 = cfg.model_copy(update={"project": cfg.project.model_copy(update={"name": "fresh"})})
    v = registry.register(cfg2, result.candidates[0][1])
    registry.promote(cfg2, v.version)
    with pytest.raises(registry.RegistryError, match="Nothing to roll back to"):
        registry.rollback(cfg2)
    assert registry.get(cfg2, registry.CHAMPION).version == v.version  # champion untouched
