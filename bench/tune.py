"""The guide's claim, reproduced: after tuning each strategy at the same wall-clock budget,
how much of full fine-tuning's test macro-F1 does each reach, training what share of the
weights, in what share of the time? In one run, on the real MiniLM and real corpora.

For each corpus and strategy: an Optuna study (`ftops.tune`) of `--minutes` on the train
and validation splits; then the best settings train once more and are scored on the test
split (never seen while tuning). The table per corpus: trainable %, test macro-F1, share of
full's F1, training time share of full, trials complete / pruned, the TF-IDF baseline.

Target (the guide, and the LoRA paper's GLUE table): LoRA >= 97% of full's macro-F1 with
<= 2% trainable; 99% is the mark to beat.

    python bench/tune.py [--corpora airline,movies] [--rows 3000] [--minutes 10]
                         [--trials 20] [--strategies full,lora,freeze,llrd] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

from ftops import data, train, tune
from ftops.config import Config

CORPORA = {"airline": "builtin:tweets?domain=airline", "movies": "builtin:movies"}


def candidate_of(strategy: str) -> dict:
    return {"name": strategy.replace("_", "-"), "strategy": strategy}


def run_strategy(root: Path, source: str, rows: int, max_length: int, strategy: str, minutes: float,
                 trials: int) -> dict:
    """Tune one strategy on its own project, then train its best settings and test them."""
    config = Config.model_validate({
        "project": {"dir": str(root / strategy), "name": f"bench-{strategy.replace('_', '-')}"},
        "model": {"max_length": max_length}, "data": {"source": source, "max_rows": rows, "on_invalid": "drop"},
        "candidates": [candidate_of(strategy)],
    })
    snapshot = data.prepare(config)
    started = time.perf_counter()
    (study,) = tune.tune(config, snapshot, trials=trials, minutes=minutes)
    tuning_s = time.perf_counter() - started
    (best,) = tune.tuned_candidates(config)
    result = train.train_candidate(config, best, snapshot, root / strategy / "final")
    return {"strategy": strategy, "trainable_share": result.trainable_share, "test_macro_f1": result.test_macro_f1,
            "val_macro_f1": result.val_macro_f1, "train_s": result.wall_seconds, "tuning_s": tuning_s,
            "complete": study.complete, "pruned": study.pruned, "settings": study.settings,
            "baseline_test_macro_f1": train.fit_baseline(snapshot).test_macro_f1, "counts": snapshot.counts}


def table(corpus: str, results: dict[str, dict]) -> list[str]:
    full = results.get("full")
    lines = [f"\n{corpus}: {next(iter(results.values()))['counts']}",
             f"{'strategy':14}{'trainable %':>12}{'test F1':>9}{'% of full':>10}{'time % of full':>15}"
             f"{'trials ok/pruned':>18}{'train s':>9}"]
    for name, r in results.items():
        share = f"{100 * r['test_macro_f1'] / full['test_macro_f1']:.1f}" if full else "-"
        time_share = f"{100 * r['train_s'] / full['train_s']:.0f}" if full else "-"
        lines.append(f"{name:14}{100 * r['trainable_share']:>12.2f}{r['test_macro_f1']:>9.3f}{share:>10}"
                     f"{time_share:>15}{r['complete']:>10}/{r['pruned']:<7}{r['train_s']:>9.0f}")
    base = next(iter(results.values()))["baseline_test_macro_f1"]
    base_share = f"{100 * base / full['test_macro_f1']:.1f}" if full else "-"
    lines.append(f"{'tfidf':14}{'-':>12}{base:>9.3f}{base_share:>10}")
    return lines


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def machine() -> dict:
    flags = sorted(train.cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu_model(), "flags": flags, "commit": commit,
            "cores": os.cpu_count()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", default="airline,movies")
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--minutes", type=float, default=10, help="tuning budget per strategy and corpus")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--strategies", default="full,lora,freeze,llrd")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()

    print(f"machine: {machine()}; budget {args.minutes} min or {args.trials} trials per strategy")
    everything: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for corpus in args.corpora.split(","):
            results = {}
            for strategy in args.strategies.split(","):
                print(f"running: {corpus} / {strategy} ...", flush=True)
                results[strategy] = run_strategy(Path(tmp) / corpus, CORPORA[corpus], args.rows, args.max_length,
                                                 strategy, args.minutes, args.trials)
            everything[corpus] = results
            print("\n".join(table(corpus, results)), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "args": vars(args) | {"json": str(args.json)},
                                         "results": everything}, indent=2, default=str))


if __name__ == "__main__":
    main()
