"""EDA augmentation of the train split, offline (no WordNet)."""

from __future__ import annotations

import random

import pandas as pd

from ftops.config import DataSection


def augment(train: pd.DataFrame, cfg: DataSection) -> pd.DataFrame:
    """EDA random swap / deletion / insertion on the train split only.

    EDA's synonym replacement and insertion use WordNet, which is a download; insertion here
    repeats a word of the same text instead, so augmentation works offline.
    """
    aug = cfg.augment
    out = train.assign(augmented=False)
    if not aug.enabled:
        return out
    rng = random.Random(cfg.seed)
    copies = []
    for _ in range(aug.copies):
        variant = train.copy()
        variant["text"] = [eda(t, rng, aug.swap, aug.delete, aug.insert) for t in train["text"]]
        copies.append(variant.assign(augmented=True))
    return pd.concat([out, *copies], ignore_index=True)


def eda(text: str, rng: random.Random, swap: float, delete: float, insert: float) -> str:
    words = text.split()
    if len(words) < 2:
        return text
    n_swap = max(1, round(swap * len(words))) if swap else 0
    for _ in range(n_swap):
        i, j = rng.randrange(len(words)), rng.randrange(len(words))
        words[i], words[j] = words[j], words[i]
    if delete:
        kept = [w for w in words if rng.random() >= delete]
        words = kept or [rng.choice(words)]
    n_insert = max(1, round(insert * len(words))) if insert else 0
    for _ in range(n_insert):
        words.insert(rng.randrange(len(words) + 1), rng.choice(words))
    return " ".join(words)
