"""Learning curves and the confusion matrix of a candidate."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ftops.train.dataset import Encoded


def plot_history(history: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_macro_f1"], h["eval_loss"]) for h in history if "eval_macro_f1" in h]
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue", alpha=0.7)
    if evals:
        steps, f1, loss = zip(*evals)
        ax.plot(steps, loss, label="val loss", color="tab:orange", marker="o")
        twin = ax.twinx()
        twin.plot(steps, f1, label="val macro-F1", color="tab:green", marker="s")
        twin.set_ylabel("macro-F1")
        twin.legend(loc="lower right")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(loc="upper right")
    ax.set_title(f"{title}: learning curves")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(dataset: Encoded, logits: np.ndarray, labels: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    y_true = [r["labels"] for r in dataset.rows]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ConfusionMatrixDisplay.from_predictions(y_true, logits.argmax(-1), display_labels=labels,
                                            ax=ax, colorbar=False, normalize="true", values_format=".2f")
    ax.set_title(f"{title}: test confusion (row-normalised)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
