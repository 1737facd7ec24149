"""Domain-adaptation benchmark on the real tweets: does learning from UNLABELLED target-domain
texts help on the target domain?

Source = airline tweets with labels; target = the other five domains (self-driving,
deflategate, apple, coachella, claritin): their train-split texts are given WITHOUT labels,
their test split (labelled, never trained on) measures the result. Every run is the same
MiniLM full fine-tune (same rows, seed, learning rate, optimizer steps); only the adaptation
option differs. Adapted runs use a batch twice as large, since about half of each batch is
unlabelled target text: every run sees the same labelled rows per step. The table shows
target and source macro-F1 side by side, with the paired bootstrap 95% CI of each run's
target gain over the run without adaptation.

    python bench/adapt.py [--rows 2000] [--target-rows 1500] [--steps 88] [--methods none,dann,mmd,kl]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ftops import data, decide, evaluate, train
from ftops.config import Config

# mmd 1.0 and kl 0.01 (kl sums over 384 dimensions) collapsed every prediction to one class
# in a first run: aligning is easiest with constant features. These are 10x lower.
SETTINGS = {"none": None, "dann": {"method": "dann", "weight": 0.3},
            "mmd": {"method": "mmd", "weight": 0.1}, "kl": {"method": "kl", "weight": 0.001}}
BATCH = 32  # labelled rows per step


def snapshots(root: Path, rows: int, target_rows: int):
    def make(source: str, max_rows: int):
        cfg = Config.model_validate({"project": {"dir": str(root)}, "data": {"source": source, "max_rows": max_rows}})
        return data.prepare(cfg)

    # the target's test split (15%) is the held-out evaluation; its train split feeds adaptation
    return make("builtin:tweets?domain=airline", rows), make("builtin:tweets?exclude_domain=airline",
                                                              int(target_rows / 0.7))


def run(method: str, source, target, root: Path, steps: int) -> dict:
    adapted = SETTINGS[method] is not None
    cfg = Config.model_validate({
        "project": {"dir": str(root), "name": "bench-adapt"}, "model": {"name": "minilm-l6", "max_length": 64},
        "candidates": [{"name": method, "strategy": "full", "max_steps": steps, "learning_rate": 1e-4,
                        "batch_size": 2 * BATCH if adapted else BATCH,
                        "adaptation": SETTINGS[method], "early_stopping_patience": 0}],
    })
    texts = list(target.split("train")["text"])  # labels dropped: the target is unlabelled
    started = time.perf_counter()
    result = train.train_candidate(cfg, cfg.candidates[0], source, root / "runs" / method,
                                   retrain=train.RetrainSources(target_texts=texts if adapted else None))
    model, tokenizer, labels = train.load_trained(result.out_dir)
    pred = decide.predict(model.eval(), tokenizer, labels, target.split("test"), max_length=64)
    return {"method": method, "target": pred, "target_f1": evaluate.metrics(pred)["macro_f1"],
            "source_f1": result.test_macro_f1, "steps": result.global_step, "target_rows": result.target_rows,
            "wall": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2000, help="labelled airline rows (source)")
    parser.add_argument("--target-rows", type=int, default=1500, help="unlabelled target texts")
    parser.add_argument("--steps", type=int, default=88, help="optimizer steps of every run (88: 2 epochs of 1,400 rows)")
    parser.add_argument("--methods", default="none,dann,mmd,kl")
    args = parser.parse_args()
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source, target = snapshots(root, args.rows, args.target_rows)
        console.print(f"source {source.counts}, target {target.counts} (target test = held out, labelled)")
        results = []
        for method in args.methods.split(","):
            console.print(f"[bold]{method}[/] ...")
            results.append(run(method, source, target, root, args.steps))
    plain = next((r for r in results if r["method"] == "none"), None)
    table = Table(title="domain adaptation: airline (labelled) -> other domains (unlabelled); macro-F1")
    for column in ("method", "target F1", "vs none (95% CI)", "source F1", "target texts", "steps", "wall s"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for r in results:
        gain = ""
        if plain is not None and r is not plain:
            boot = evaluate.paired_bootstrap(plain["target"].y_true, plain["target"].y_pred, r["target"].y_pred)
            gain = f"{boot.delta:+.3f} [{boot.ci_low:+.3f}, {boot.ci_high:+.3f}]"
        table.add_row(r["method"], f"{r['target_f1']:.3f}", gain, f"{r['source_f1']:.3f}",
                      str(r["target_rows"]), str(r["steps"]), f"{r['wall']:.0f}")
    console.print(table)


if __name__ == "__main__":
    main()
