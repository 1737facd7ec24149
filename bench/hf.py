"""The reference every ftops training figure is held to: the plain HF Trainer as its docs
start you off (default TrainingArguments, default collator), on the same model and rows."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score

from ftops import models, train


def hf_default(snapshot, epochs: float | None, max_length: int, out: Path) -> dict:
    """Train and test the HF Trainer's defaults; `epochs` None keeps its own default (3)."""
    from transformers import Trainer, TrainingArguments

    tokenizer = models.load_tokenizer("minilm-l6", max_length)
    model = models.build_classifier("minilm-l6", snapshot.labels)
    train_set = train.Encoded(snapshot.split("train"), tokenizer, snapshot.labels, max_length)
    test_set = train.Encoded(snapshot.split("test"), tokenizer, snapshot.labels, max_length)
    val_set = train.Encoded(snapshot.split("validation"), tokenizer, snapshot.labels, max_length)
    epochs_arg = {} if epochs is None else {"num_train_epochs": epochs}
    args = TrainingArguments(output_dir=str(out), report_to="none", save_strategy="no", disable_tqdm=True,
                             seed=13, **epochs_arg)
    trainer = Trainer(model=model, args=args, train_dataset=train_set, processing_class=tokenizer)
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    return {"samples_per_second": len(train_set) * args.num_train_epochs / wall, "wall": wall,
            "epochs": args.num_train_epochs, "macro_f1": macro_f1(trainer, test_set),
            "val_macro_f1": macro_f1(trainer, val_set)}


def macro_f1(trainer, encoded) -> float:
    logits = trainer.predict(encoded).predictions
    return f1_score([r["labels"] for r in encoded.rows], np.argmax(logits, -1), average="macro")
