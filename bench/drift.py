"""Drift-check benchmark on the real tweets: the full `ftops.monitor.check` (Evidently report,
decision, drift_checks row, HTML report, workspace snapshot) for windows of 1k, 10k and 100k
rows against an equal-size reference, without and with (sampled) embedding drift.

Reference = airline tweets, current = the other domains, both resampled with replacement
to reach the size; predictions come from a word TF-IDF + logistic regression fitted on 3k
airline tweets (the monitor only sees text, prediction and confidence). Embeddings are
mean-pooled MiniLM-L6 states of `monitoring.embedding_sample` rows a side, so their cost
does not grow with the window.

Target (issue "Drift monitoring with Evidently"): 10k vs 10k <= 2 s, growing linearly.

    python bench/drift.py [--sizes 1000,10000,100000] [--no-embeddings]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from ftops import monitor
from ftops.config import Config
from ftops.data.corpora import load_builtin

LABELS = ["negative", "neutral", "positive"]


def predictor(airline: pd.DataFrame):
    """A fast stand-in for the served model: texts -> class probabilities in LABELS order."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    train = airline.sample(3000, random_state=1)
    pipeline = make_pipeline(TfidfVectorizer(min_df=2, sublinear_tf=True), LogisticRegression(max_iter=1000))
    pipeline.fit(train["text"], train["label"])
    order = [list(pipeline.classes_).index(label) for label in LABELS]
    return lambda texts: pipeline.predict_proba(texts)[:, order]


def scored(frame: pd.DataFrame, predict) -> pd.DataFrame:
    """Every distinct tweet predicted once; resampled rows reuse the answer."""
    return monitor.predictions_frame(frame["text"], predict(frame["text"]), LABELS, frame["label"])


def resample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    return frame.sample(n, replace=n > len(frame), random_state=seed).reset_index(drop=True)


def minilm_embedder():
    from transformers import AutoModel, AutoTokenizer

    from ftops.models import resolve_model

    folder = resolve_model("minilm-l6")
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    return monitor.embedder(model, AutoTokenizer.from_pretrained(folder, local_files_only=True), 128)


def timed_check(cfg: Config, current: pd.DataFrame, reference: pd.DataFrame, now: datetime, embed=None):
    started = time.perf_counter()
    result = monitor.check(cfg, current, reference, now=now, embed=embed)
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--no-embeddings", action="store_true")
    args = parser.parse_args()
    logging.getLogger("ftops.monitor").setLevel(logging.ERROR)  # alerts without a Prefect server are expected
    sizes = [int(s) for s in args.sizes.split(",")]

    airline, _ = load_builtin("builtin:tweets?domain=airline")
    other, _ = load_builtin("builtin:tweets?exclude_domain=airline")
    predict = predictor(airline)
    airline, other = scored(airline, predict), scored(other, predict)
    embed = None if args.no_embeddings else minilm_embedder()

    root = Path(tempfile.mkdtemp(prefix="ftops-bench-drift-"))
    now = datetime.now(UTC)
    rows = []
    for i, n in enumerate(sizes):
        cfg = Config.model_validate({"project": {"dir": str(root / f"n{n}")},
                                     "monitoring": {"window_size": max(n, 10), "min_window": min(200, n)},
                                     "uris": {"prefect_api": "http://127.0.0.1:9/api"}})
        reference, current = resample(airline, n, seed=2 * i), resample(other, n, seed=2 * i + 1)
        if i == 0:
            timed_check(cfg, current.head(500), reference.head(500), now - timedelta(days=1))  # imports, caches
        seconds, result = timed_check(cfg, current, reference, now)
        row = {"n": n, "seconds": seconds, "per_1k": 1000 * seconds / n, "share": result.drifted_share,
               "text_auc": result.signals["text"].score, "decision": result.decision}
        if embed is not None:
            reference = monitor.add_embeddings(reference, embed, cfg.monitoring.embedding_sample)
            row["seconds_emb"], result = timed_check(cfg, current, reference, now + timedelta(minutes=15), embed)
            row["emb_auc"] = result.signals["embedding"].score
        rows.append(row)
    print_table(rows, embed is not None)


def print_table(rows: list[dict], with_embeddings: bool) -> None:
    table = Table(title="ftops monitor check: n current rows vs n reference rows (real tweets)")
    columns = ["rows", "check s", "s / 1k rows", "drifted share", "text AUC", "decision"]
    if with_embeddings:
        columns += ["check + embeddings s", "embedding AUC"]
    for name in columns:
        table.add_column(name, justify="left" if name == "decision" else "right")
    for row in rows:
        cells = [f"{row['n']:,}", f"{row['seconds']:.2f}", f"{row['per_1k']:.3f}", f"{row['share']:.2f}",
                 f"{row['text_auc']:.3f}", row["decision"]]
        if with_embeddings:
            cells += [f"{row['seconds_emb']:.2f}", f"{row['emb_auc']:.3f}"]
        table.add_row(*cells)
    console = Console()
    console.print(table)
    by_n = {row["n"]: row["seconds"] for row in rows}
    if 10_000 in by_n:
        verdict = "meets" if by_n[10_000] <= 2.0 else "MISSES"
        console.print(f"10k vs 10k: {by_n[10_000]:.2f} s, {verdict} the 2 s target")
    sizes = sorted(by_n)
    for small, large in zip(sizes, sizes[1:]):
        console.print(f"{small:,} -> {large:,} rows: x{large / small:.0f} rows, x{by_n[large] / by_n[small]:.1f} time")


if __name__ == "__main__":
    main()
