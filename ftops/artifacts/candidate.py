"""The trained-candidate folder: `model/` in the form its strategy saves, the tokenizer,
labels.json and ftops.json (what rebuilds it by name, offline). Every stage reads it here."""

from __future__ import annotations

import json
from pathlib import Path

from ftops import strategies
from ftops.names import META_FILE, MODEL_DIR


def save_trained(model, tokenizer, labels: list[str], base_model: str, out_dir: Path) -> None:
    """The model in the form its strategy saves (`Strategy.save`), the tokenizer, and
    ftops.json: what `load_trained` needs to rebuild it by name, offline."""
    target = out_dir / MODEL_DIR
    meta = {"base_model": base_model, "peft": False, "labels": labels}
    meta.update(strategies.holding(model).save(model, target))
    tokenizer.save_pretrained(target)
    (target / "labels.json").write_text(json.dumps(labels))
    (target / META_FILE).write_text(json.dumps(meta, indent=2))


def load_trained(out_dir: Path):
    """(model, tokenizer, labels) of a trained candidate folder, loaded by the strategy
    whose form ftops.json describes (`Strategy.load`)."""
    from transformers import AutoTokenizer

    folder = Path(out_dir) / MODEL_DIR
    meta = json.loads((folder / META_FILE).read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = strategies.saved_in(folder, meta).load(folder, meta)
    return model.eval(), tokenizer, meta["labels"]
