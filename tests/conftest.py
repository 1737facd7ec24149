from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ftops.config import Config


@pytest.fixture
def project(tmp_path: Path):
    """Build a Config whose project dir is a fresh temp folder; data keys as keywords."""

    def make(**data) -> Config:
        return Config.model_validate({"project": {"dir": str(tmp_path / "proj")}, "data": data})

    return make


def write_csv(path: Path, rows: list[tuple], header=("text", "label")) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def sentiment_rows(n_per_class: int = 20, labels=("neg", "pos")) -> list[tuple[str, str]]:
    return [(f"sample text number {i} about {label} things", label)
            for label in labels for i in range(n_per_class)]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer random BERT with the real MiniLM tokenizer: the training code path in seconds."""
    import shutil

    from transformers import BertConfig, BertForSequenceClassification

    from ftops.models import resolve_model

    folder = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertForSequenceClassification(config).save_pretrained(folder)
    source = resolve_model("minilm-l6")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(source / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def airline_snapshot(tmp_path_factory):
    """A small real slice: 400 airline tweets, snapshotted once per session."""
    from ftops import data

    root = tmp_path_factory.mktemp("airline")
    cfg = Config.model_validate({"project": {"dir": str(root)},
                                 "data": {"source": "builtin:tweets?domain=airline", "max_rows": 400}})
    return data.prepare(cfg)


def pytest_terminal_summary(terminalreporter):
    """The fault-injection suite's table (tests/faults/faultload.py), when it ran."""
    harness = sys.modules.get("faultload")
    if harness is not None:
        harness.summary(terminalreporter)
