"""The batched forward pass every stage that runs a model over many texts shares (decide's
predictions, the monitor's embeddings, export's parity reference): batches of texts of
similar length, so little compute goes to padding, and rows back in the input order."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def length_sorted(texts: list[str], batch_size: int) -> list[np.ndarray]:
    """Row indices of `texts` in batches of up to `batch_size`, shortest texts first (stable)."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    return [order[start:start + batch_size] for start in range(0, len(texts), batch_size)]


def batched_forward(texts: list[str], batch_size: int, forward: Callable[[list[str]], np.ndarray],
                    dtype=np.float32, columns: int = 0) -> np.ndarray:
    """`forward` (a batch of texts -> one row each) over `texts` in length-sorted batches;
    the rows come back in the order of `texts`. `columns` is the row width when the caller
    knows it (else the first batch's); with no texts the result is (0, columns)."""
    out = np.zeros((len(texts), columns), dtype=dtype) if columns or not texts else None
    for idx in length_sorted(texts, batch_size):
        rows = np.asarray(forward([texts[i] for i in idx]))
        if out is None:
            out = np.zeros((len(texts), *rows.shape[1:]), dtype=dtype)
        out[idx] = rows
    return out
