"""The tokenised training rows, and rehearsal of the champion's rows when retraining."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from ftops import adapt


DOMAIN_KEY = "ftops_domain"      # batch key: 0 = source row, 1 = unlabelled target row
TASK_PREFIX = "ftops_task_"      # batch key prefix: an auxiliary task's label id


class Encoded(torch.utils.data.Dataset):
    """Tokenised rows; padding is left to the collator (dynamic, per batch).

    A row without a label (an unlabelled target text) gets the ignored label -100, as does
    a row without a value for an auxiliary task; a `ftops_domain` column is carried along.
    """

    def __init__(self, frame: pd.DataFrame, tokenizer, labels: list[str], max_length: int,
                 tasks: dict[str, tuple[str, list[str]]] | None = None):
        label2id = {label: i for i, label in enumerate(labels)}
        encoded = tokenizer(list(frame["text"]), truncation=True, max_length=max_length)
        label_of = frame["label"] if "label" in frame else pd.Series([None] * len(frame))
        self.rows = [
            {"input_ids": ids, "attention_mask": mask,
             "labels": label2id[label] if isinstance(label, str) else adapt.IGNORE}
            for ids, mask, label in zip(encoded["input_ids"], encoded["attention_mask"], label_of)
        ]
        if DOMAIN_KEY in frame:
            for row, domain in zip(self.rows, frame[DOMAIN_KEY]):
                row[DOMAIN_KEY] = int(domain)
        for name, (column, vocab) in (tasks or {}).items():
            index = {value: i for i, value in enumerate(vocab)}
            for row, value in zip(self.rows, frame[column] if column in frame else [None] * len(frame)):
                row[TASK_PREFIX + name] = index.get(value, adapt.IGNORE)
        self.lengths = [len(r["input_ids"]) for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


def rehearsal_mix(new: pd.DataFrame, old: pd.DataFrame | None, share: float, seed: int) -> pd.DataFrame:
    """New rows plus old rows making up `share` of the result, so the model keeps the old
    domain (rehearsal / experience replay)."""
    if old is None or share <= 0:
        return new.assign(rehearsal=False)
    wanted = round(share / (1 - share) * len(new))
    replay = old.sample(n=min(wanted, len(old)), random_state=seed)
    return pd.concat([new.assign(rehearsal=False), replay.assign(rehearsal=True)], ignore_index=True)
