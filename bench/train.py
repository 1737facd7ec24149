"""Training benchmark on the real MiniLM and the real airline tweets, in one run:

1. ftops defaults (full fine-tuning) vs the plain HF Trainer with its defaults: same model,
   same data, same epochs. Prints samples/s (the ratio) and test macro-F1 of each; beside
   them, ftops' trainer on HF's own settings (batch, learning rate, no warm-up, no weight
   decay): the trainer's speed at the HF run's F1.
2. Every strategy with ftops defaults: trainable %, test macro-F1, and that F1 as a share
   of full fine-tuning's, plus the TF-IDF baseline.

Targets (issue "Fine-tuning engine"): ftops >= 1.5x HF-default samples/s at equal F1
(+-1 pt); default LoRA >= 97% of full macro-F1 with <= 2% trainable parameters.

    python bench/train.py [--rows 3000] [--epochs 2] [--strategies full,lora,...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ftops import data, train
from ftops.config import Config

from hf import hf_default  # bench/hf.py, beside this script

LR = {"full": 1e-4, "freeze": 1e-4, "llrd": 1e-4, "lora": 2e-3, "ia3": 3e-3, "prompt_tuning": 3e-2,
      "bottleneck": 1e-3}
PARAMS = {"lora": {"rank": 8, "target_modules": "all-linear"}}


def hf_settings() -> dict:
    """The HF Trainer's default optimisation settings, as ftops candidate settings."""
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir="unused", report_to="none")
    return {"batch_size": args.per_device_train_batch_size, "learning_rate": args.learning_rate,
            "warmup_share": 0.0, "weight_decay": args.weight_decay}  # HF warms up 0 steps by default


def ftops_candidate(config: Config, snapshot, strategy: str, epochs: float, out: Path,
                    settings: dict | None = None) -> dict:
    cfg = config.model_copy(update={"candidates": []})
    chosen = settings or {"learning_rate": LR[strategy]}
    candidate = type(config.candidates[0])(name=strategy.replace("_", "-"), strategy=strategy, epochs=epochs,
                                          params=PARAMS.get(strategy, {}), **chosen)
    started = time.perf_counter()
    result = train.train_candidate(cfg, candidate, snapshot, out / (strategy + ("-hf" if settings else "")))
    wall = time.perf_counter() - started
    n_train = snapshot.counts["train"]
    # Epochs actually run may be fewer (early stopping): count optimizer steps, not epochs.
    seen = result.global_step * candidate.batch_size
    return {"samples_per_second": min(seen, n_train * epochs) / result.wall_seconds, "wall": wall,
            "trainer_samples_per_second": result.samples_per_second, "macro_f1": result.test_macro_f1,
            "trainable_share": result.trainable_share, "steps": result.global_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--strategies", default="full,freeze,llrd,lora,ia3,prompt_tuning,bottleneck")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = Config.model_validate({
            "project": {"dir": str(root)}, "model": {"max_length": args.max_length},
            "data": {"source": "builtin:tweets?domain=airline", "max_rows": args.rows},
        })
        snapshot = data.prepare(config)
        print(f"data: {snapshot.counts} (snapshot {snapshot.id}); epochs {args.epochs}; "
              f"max_length {args.max_length}; precision auto -> {train.precision(config.candidates[0])}")
        baseline = train.fit_baseline(snapshot)

        print("running: HF Trainer defaults (full) ...", flush=True)
        hf = hf_default(snapshot, args.epochs, args.max_length, root / "hf")
        results = {}
        if "full" in args.strategies.split(","):
            print("running: ftops full on HF's settings ...", flush=True)
            on_hf = ftops_candidate(config, snapshot, "full", args.epochs, root, hf_settings())
        for strategy in args.strategies.split(","):
            print(f"running: ftops {strategy} ...", flush=True)
            results[strategy] = ftops_candidate(config, snapshot, strategy, args.epochs, root)

    full = results.get("full")
    print("\n1. ftops defaults vs HF Trainer defaults (full fine-tuning, same data and epochs)")
    print(f"{'':22}{'samples/s':>10}{'wall s':>8}{'test macro-F1':>15}")
    print(f"{'HF Trainer defaults':22}{hf['samples_per_second']:>10.1f}{hf['wall']:>8.0f}{hf['macro_f1']:>15.3f}")
    if full:
        print(f"{'ftops defaults':22}{full['samples_per_second']:>10.1f}{full['wall']:>8.0f}{full['macro_f1']:>15.3f}")
        print(f"{'ftops on HF settings':22}{on_hf['samples_per_second']:>10.1f}{on_hf['wall']:>8.0f}"
              f"{on_hf['macro_f1']:>15.3f}")
        for name, res in (("defaults", full), ("on HF settings", on_hf)):
            print(f"ratio ftops {name} / HF: samples/s x{res['samples_per_second'] / hf['samples_per_second']:.2f}, "
                  f"macro-F1 {100 * (res['macro_f1'] - hf['macro_f1']):+.1f} pt")
    print("\n2. strategies (ftops defaults)")
    print(f"{'strategy':16}{'trainable %':>12}{'test macro-F1':>15}{'% of full':>11}{'samples/s':>11}{'wall s':>8}")
    for name, res in results.items():
        share = f"{100 * res['macro_f1'] / full['macro_f1']:.1f}" if full else "-"
        print(f"{name:16}{100 * res['trainable_share']:>12.2f}{res['macro_f1']:>15.3f}{share:>11}"
              f"{res['samples_per_second']:>11.1f}{res['wall']:>8.0f}")
    base_share = f"{100 * baseline.test_macro_f1 / full['macro_f1']:.1f}" if full else "-"
    print(f"{'tfidf baseline':16}{'-':>12}{baseline.test_macro_f1:>15.3f}{base_share:>11}"
          f"{'-':>11}{baseline.wall_seconds:>8.1f}")

if __name__ == "__main__":
    main()
