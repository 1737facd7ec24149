"""Inference benchmark on the real MiniLM and real airline tweets, in one run: PyTorch eager
vs every ONNX variant of `ftops.export`, on the same texts, with the same threads,
interleaved (each text goes through every runtime in turn, so machine noise hits all alike).

Prints batch-1 p50/p99 ms, batch-32 samples/s, the ratio vs PyTorch, and each variant's
parity figures and gate status. Target (issue "ONNX export, quantization and the parity
gate"): the best passing variant >= 4x faster than PyTorch eager at batch 1 (p50) with
<= 0.5 pt macro-F1 loss.

The model is MiniLM fully fine-tuned for 150 steps on the tweets (macro-F1 ~0.75), so that
labels depend on the text and quantisation errors can flip them: an untrained head predicts
one class and makes every variant look perfect. Fine-tuning takes 20 s to 8 min here
(depending on what else runs), so the candidate is kept in `--keep` and reused by later
runs with the same settings; `--candidate DIR` benchmarks another trained candidate folder.
With `--student-layers N` (default 3), a student of the candidate's first N layers is
distilled from it and exported too; its runtimes are timed in the same interleaved rounds
and judged against the teacher's PyTorch: speed-up, and the paired macro-F1 change on the
test texts with the export gate's non-inferiority rule (CI lower end >= -max_f1_loss).
Timings run once per thread count (default 1 and 2); the verdict takes each runtime at its
best thread count, because on 2 shared cores PyTorch's OpenMP pool can collapse at 2 threads
when another process is busy, which would flatter onnxruntime.

    python bench/inference.py [--rows 1700] [--test 500] [--steps 150] [--threads 1,2] [--student-layers 3]
                              [--student-steps 450]
                              [--keep DIR | --candidate DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from ftops import export, train
from ftops.artifacts.timing import measure_speed
from ftops.config import Config
from ftops.data import corpora
from ftops.export import runtime
from ftops.names import TOKENIZER_FILE

import report  # bench/report.py, beside this script

SOURCE = "builtin:tweets?domain=airline"


def load_texts(n_rows: int, n_test: int, seed: int = 13) -> dict:
    """Disjoint seeded train / validation (200) / test samples of the real airline tweets."""
    frame, _ = corpora.load_builtin(SOURCE)
    frame = frame.sample(n=min(len(frame), n_rows + n_test), random_state=seed).reset_index(drop=True)
    return {"test": frame.iloc[:n_test], "validation": frame.iloc[n_test:n_test + 200],
            "train": frame.iloc[n_test + 200:]}


class Rows:
    """The three splits as ftops.train expects a snapshot (labels + split(name))."""

    def __init__(self, frames: dict, labels: list[str]):
        self.frames, self.labels = frames, labels

    def split(self, name: str):
        return self.frames[name]


def fine_tune(folder: Path, frames: dict, labels: list[str], max_length: int, steps: int,
              layers: int | None = None, teacher: Path | None = None) -> Path:
    """Full fine-tuning of MiniLM with ftops defaults, capped at `steps` optimizer steps; with
    `layers` and `teacher`, a student of the first `layers` layers distilled from it."""
    candidate = {"name": "full", "strategy": "full", "max_steps": steps, "batch_size": 16,
                 "learning_rate": 1e-4, "warmup_share": 0.1, "evals_per_epoch": 1, "early_stopping_patience": 0}
    if layers:
        candidate.update(name="student", layers=layers, distillation={"temperature": 2.0, "alpha": 0.5})
    config = Config.model_validate({"project": {"dir": str(folder / "project")}, "model": {"max_length": max_length},
                                    "candidates": [candidate]})
    result = train.train_candidate(config, config.candidates[0], Rows(frames, labels), folder,
                                   retrain=train.RetrainSources(teacher_dir=teacher) if teacher else None)
    print(f"fine-tuned {candidate['name']} {result.global_step} steps in {result.wall_seconds:.0f} s: "
          f"test macro-F1 {result.test_macro_f1:.3f}, accuracy {result.test_accuracy:.3f}")
    return folder


def torch_runner(candidate: Path, threads: int):
    """The PyTorch model as decide.load gives it (adapters merged, default attention)."""
    import torch

    from ftops import decide

    torch.set_num_threads(threads)
    model = decide.load(decide.ModelRef("bench", candidate, None))[0]

    def run(feed):
        with torch.inference_mode():
            return model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits
    return run


def timing_feeds(result: export.ExportResult, texts: list[str]):
    tokenizer = runtime.load_tokenizer_json(result.out_dir / TOKENIZER_FILE)
    return runtime.speed_feeds(lambda chunk: runtime.encode_batch(tokenizer, chunk), texts)


def print_table(result: export.ExportResult, speed: dict[str, dict[str, float]], threads: int) -> list[dict]:
    """Prints one thread count's table; returns its rows for the report."""
    base = speed["pytorch"]
    rows = [{"threads": threads, "runtime": "pytorch", "status": "reference", **base, "x_p50": 1.0}]
    print(f"\n{threads} thread(s)\n{'runtime':<13}{'status':<16}{'MB':>7}{'p50 ms':>8}{'p99 ms':>8}{'b32 /s':>8}"
          f"{'x p50':>7}{'x b32':>7}{'max diff':>10}{'agree':>7}{'dF1 pt':>8}  reason")
    print(f"{'pytorch':<13}{'reference':<16}{'':>7}{base['p50_ms']:>8.2f}{base['p99_ms']:>8.2f}"
          f"{base['samples_per_s']:>8.0f}{1:>7.2f}{1:>7.2f}{'':>10}{'':>7}{'':>8}  "
          f"macro-F1 {result.reference['macro_f1']:.4f}")
    for name, variant in result.variants.items():
        f, s = variant.figures, speed.get(name)
        status = variant.status + ("*" if name == result.selected else "")
        if s is None:
            print(f"{name:<13}{status:<16}  {variant.reason}")
            continue
        rows.append({"threads": threads, "runtime": name, "status": status, **s,
                     "x_p50": base["p50_ms"] / s["p50_ms"], "agreement": f.get("agreement"),
                     "delta_macro_f1_pt": 100 * f.get("delta_macro_f1", float("nan"))})
        print(f"{name:<13}{status:<16}{f['size_mb']:>7.1f}{s['p50_ms']:>8.2f}{s['p99_ms']:>8.2f}"
              f"{s['samples_per_s']:>8.0f}{base['p50_ms'] / s['p50_ms']:>7.2f}"
              f"{s['samples_per_s'] / base['samples_per_s']:>7.2f}{f.get('max_abs_diff', float('nan')):>10.2e}"
              f"{f.get('agreement', float('nan')):>7.3f}{100 * f.get('delta_macro_f1', float('nan')):>+8.2f}"
              f"  {variant.reason}")
    return rows


def verdict(result: export.ExportResult, speeds: dict[int, dict[str, dict[str, float]]]) -> str:
    """The target, with every runtime at its best thread count: on a shared 2-core machine
    PyTorch's 2-thread figure can be a contention artefact that would flatter onnxruntime."""
    best = {name: min(speed[name]["p50_ms"] for speed in speeds.values()) for name in speeds[min(speeds)]}
    lines = []
    for label, statuses in (("batch-invariant", (export.PASS,)),
                            ("served one text per call (gates.unbatched_ok)", (export.PASS, export.UNBATCHED))):
        # the gate (status) already holds each variant to gates.max_f1_loss, paired
        passing = [n for n, r in result.variants.items() if r.status in statuses and n in best]
        if not passing:
            lines.append(f"{label}: target NOT met, no variant passed the gate")
            continue
        top = min(passing, key=lambda n: best[n])
        ratio = best["pytorch"] / best[top]
        delta = 100 * result.variants[top].figures["delta_macro_f1"]
        lines.append(f"{label}: target (>= 4x PyTorch at batch-1 p50, <= 0.5 pt F1 loss, each runtime at its best "
                     f"thread count) {'met' if ratio >= 4 else 'NOT met'}: best {top} {best[top]:.2f} ms vs PyTorch "
                     f"{best['pytorch']:.2f} ms = {ratio:.2f}x, {delta:+.2f} pt")
    return "\n".join(lines)


def student_verdict(rows: list[dict], layers: int) -> str:
    """The fastest student runtime that the paired rule keeps non-inferior to the teacher."""
    kept = [r for r in rows if r["runtime"].startswith("student-") and r.get("non_inferior")
            and r["status"] in (export.PASS, export.UNBATCHED)]  # what export would serve
    if not kept:
        return f"student ({layers} layers): no runtime is non-inferior to the teacher's PyTorch (paired, max_f1_loss)"
    top = max(kept, key=lambda r: r["x_p50"])
    return (f"student ({layers} layers): fastest non-inferior runtime {top['runtime']} at {top['threads']} thread(s): "
            f"{top['x_p50']:.2f}x the teacher's PyTorch, {top['delta_macro_f1_pt']:+.2f} pt "
            f"(CI low {top['delta_ci_low_pt']:+.2f}); target 4x {'met' if top['x_p50'] >= 4 else 'NOT met'}")


def cached_candidate(args, frames: dict, layers: int | None = None, teacher: Path | None = None) -> Path:
    """The fine-tuned candidate (or student), reused from `--keep` when a run with the same
    settings made it: fine-tuning is most of this benchmark's time on 2 shared cores."""
    kind, steps = (f"student{layers}", args.student_steps) if layers else ("full", args.steps)
    # --test changes which tweets train (one seeded sample is split), so it is part of the key
    folder = args.keep / f"minilm-{kind}-{args.rows}-{args.test}-{steps}-{args.max_length}"
    if (folder / "model" / "ftops.json").is_file():
        print(f"reusing the fine-tuned {kind} in {folder} (delete it to retrain)")
        return folder
    labels = sorted(frames["train"]["label"].unique())
    return fine_tune(folder, frames, labels, args.max_length, steps, layers, teacher)


def export_candidate(candidate: Path, out: Path, frames: dict, args, threads: int) -> export.ExportResult:
    labels = json.loads((candidate / "model" / "ftops.json").read_text())["labels"]
    test = frames["test"]
    return export.export_model(
        candidate, out, list(frames["train"]["text"].sample(n=200, random_state=0)), args.max_length,
        parity_texts=list(test["text"]), parity_labels=[labels.index(l) for l in test["label"]],
        threads=threads, progress=lambda line: print("  " + line))


def student_figures(teacher: Path, student: Path, exported: export.ExportResult, frames: dict) -> dict[str, dict]:
    """The paired macro-F1 change of each student runtime against the teacher's PyTorch on
    the test texts (what the A/B gate would judge when the student challenges it). Labels
    do not depend on the thread count: computed once, one text at a time."""
    from ftops.export import parity

    labels = json.loads((teacher / "model" / "ftops.json").read_text())["labels"]
    y = np.array([labels.index(l) for l in frames["test"]["label"]])
    tokenizer = runtime.load_tokenizer_json(exported.out_dir / TOKENIZER_FILE)
    singles = [runtime.encode_batch(tokenizer, [t]) for t in frames["test"]["text"]]

    def labels_of(run) -> np.ndarray:
        return np.array([int(np.asarray(run(f)).argmax()) for f in singles])

    reference = labels_of(torch_runner(teacher, 1))
    runs = {"student-pytorch": (torch_runner(student, 1), "student")}
    runs.update({f"student-{n}": (runtime.ort_runner(exported.out_dir / r.file, 1), r.status)
                 for n, r in exported.variants.items() if r.file and r.status != export.ERROR})
    gates = Config().gates
    figures = {}
    for key, (run, status) in runs.items():
        f = parity.f1_figures(y, reference, labels_of(run), len(labels), alpha=gates.alpha)
        figures[key] = {"status": status, "agreement": f["agreement"], "macro_f1": f["macro_f1"],
                        "delta_macro_f1_pt": 100 * f["delta_macro_f1"],
                        "delta_ci_low_pt": 100 * f["delta_macro_f1_ci_low"],
                        "non_inferior": f["delta_macro_f1_ci_low"] >= -gates.max_f1_loss}
    return figures


def student_rows(figures: dict[str, dict], speed: dict, threads: int, layers: int) -> list[dict]:
    """The student's runtimes at one thread count: speed-up over the teacher's PyTorch, and their F1 figures."""
    base = speed["pytorch"]["p50_ms"]
    rows = []
    print(f"\nstudent: the first {layers} layers, distilled; vs the teacher's PyTorch ({threads} thread(s))")
    print(f"{'runtime':<22}{'p50 ms':>8}{'x p50':>7}{'macro-F1':>9}{'dF1 pt':>8}{'CI low':>8}  non-inferior")
    for key, f in figures.items():
        rows.append({"threads": threads, "runtime": key, **speed[key], "x_p50": base / speed[key]["p50_ms"], **f})
        print(f"{key:<22}{speed[key]['p50_ms']:>8.2f}{base / speed[key]['p50_ms']:>7.2f}{f['macro_f1']:>9.3f}"
              f"{f['delta_macro_f1_pt']:>+8.2f}{f['delta_ci_low_pt']:>+8.2f}  {'yes' if f['non_inferior'] else 'no'}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1700, help="tweets for training (+200 validation)")
    parser.add_argument("--test", type=int, default=500, help="held-out tweets for parity and timing")
    parser.add_argument("--steps", type=int, default=150, help="fine-tuning optimizer steps (batch 16)")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts to time")
    parser.add_argument("--student-layers", type=int, default=3,
                        help="also distil a student of the first N layers from the candidate (0: none)")
    parser.add_argument("--student-steps", type=int, default=450,
                        help="the student's optimizer steps (a shallower model needs more; 150: -14.8 pt)")
    parser.add_argument("--candidate", type=Path, help="a trained candidate folder instead of fine-tuning")
    parser.add_argument("--keep", type=Path, default=Path(tempfile.gettempdir()) / "ftops-bench-inference",
                        help="where the fine-tuned candidate is kept and reused across runs")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    thread_counts = [int(t) for t in args.threads.split(",")]
    print(f"machine: {report.stamp(report.machine())}")
    started = time.perf_counter()
    frames = load_texts(args.rows, args.test)
    candidate = args.candidate or cached_candidate(args, frames)
    student = cached_candidate(args, frames, args.student_layers, candidate) if args.student_layers else None
    test = frames["test"]
    with tempfile.TemporaryDirectory() as tmp:
        result = export_candidate(candidate, Path(tmp) / "export", frames, args, max(thread_counts))
        students = figures = None
        if student is not None:
            students = export_candidate(student, Path(tmp) / "student-export", frames, args, max(thread_counts))
            figures = student_figures(candidate, student, students, frames)
        feeds = timing_feeds(result, list(test["text"]))
        speeds, rows = {}, []
        for threads in thread_counts:
            runners = {"pytorch": torch_runner(candidate, threads)}
            runners.update({n: runtime.ort_runner(result.out_dir / r.file, threads)
                            for n, r in result.variants.items() if r.file and r.status != export.ERROR})
            if students is not None:
                runners["student-pytorch"] = torch_runner(student, threads)
                runners.update({f"student-{n}": runtime.ort_runner(students.out_dir / r.file, threads)
                                for n, r in students.variants.items() if r.file and r.status != export.ERROR})
            speeds[threads] = measure_speed(runners, *feeds)
            rows += print_table(result, speeds[threads], threads)
            if students is not None:
                rows += student_rows(figures, speeds[threads], threads, args.student_layers)
    print("(* = selected by export; x = speed-up vs PyTorch eager at that thread count; "
          "dF1 = macro-F1 change vs PyTorch, points)")
    judged = verdict(result, speeds)
    if students is not None:
        judged += "\n" + student_verdict(rows, args.student_layers)
    print(judged)
    report.write("inference", rows, {k: str(v) for k, v in vars(args).items()},
                 notes=[*judged.splitlines(), f"selected by export: {result.selected}"])
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
