"""Each strategy trains the real MiniLM on a small real slice and changes what it should."""

import pytest
import torch

from ftops import models, strategies, train
from ftops.config import Config

pytestmark = pytest.mark.slow

PARAMS = {"freeze": {"layers": 4}, "lora": {"rank": 8}, "llrd": {"decay": 0.8}}
LR = {"lora": 5e-4, "ia3": 3e-3, "prompt_tuning": 3e-2}


@pytest.fixture(scope="module")
def pretrained():
    model = models.build_classifier("minilm-l6", ["negative", "neutral", "positive"])
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def trained_state(result):
    model, _, _ = train.load_trained(result.out_dir)
    model = strategies.holding(model).merge(model)
    return {n: p.detach() for n, p in model.named_parameters()}


@pytest.mark.parametrize("strategy", ["full", "freeze", "llrd", "lora", "ia3", "prompt_tuning"])
def test_strategy_trains_the_real_model(strategy, airline_snapshot, pretrained, tmp_path):
    cfg = Config.model_validate({
        "project": {"dir": str(tmp_path)}, "model": {"max_length": 48},
        "candidates": [{"name": strategy, "strategy": strategy, "max_steps": 4, "batch_size": 16,
                        "learning_rate": LR.get(strategy, 5e-5), "params": PARAMS.get(strategy, {})}],
    })
    result = train.train_candidate(cfg, cfg.candidates[0], airline_snapshot, tmp_path / strategy)
    assert result.global_step == 4 and 0 <= result.test_macro_f1 <= 1
    after = trained_state(result)
    moved = {n for n, p in after.items() if n in pretrained and not torch.equal(p, pretrained[n])}
    if strategy == "freeze":
        frozen = [n for n in after if n.startswith("bert.embeddings") or
                  any(n.startswith(f"bert.encoder.layer.{i}.") for i in range(4))]
        assert frozen and not moved & set(frozen)            # frozen weights unchanged
        assert any(n.startswith("bert.encoder.layer.5.") for n in moved)
    elif strategy == "full":
        assert any(n.startswith("bert.embeddings") for n in moved)
        assert any(n.startswith("bert.encoder.layer.0.") for n in moved)
    elif strategy == "lora":
        assert result.trainable_share <= 0.02                 # as reported, and small
        assert any("intermediate.dense" in n for n in moved)  # all linear layers adapted
    elif strategy in ("ia3", "prompt_tuning"):
        assert result.trainable_share < 0.01
    assert any(n.startswith("classifier") for n in moved) or strategy == "prompt_tuning"
    assert (result.out_dir / "learning_curves.png").stat().st_size > 1000
