"""Serving benchmark on the real MiniLM (fp32 ONNX) and real tweets, in one run:

1. p50 overhead of the Triton ensemble (tokenizer + classifier, gRPC) over in-process
   tokenizers + onnxruntime on the same texts, batch 1, one request at a time.
2. Throughput and p50/p99 at concurrency 1 / 4 / 8 with dynamic batching off vs on
   (length-aware buckets inside the classifier).

Targets (issue "Triton serving"): <= 1.5 ms p50 overhead over in-process ORT; batching on
>= 1.2x batching off at concurrency 8; p99 <= 3x p50 at concurrency 4.

    python bench/serving.py [--requests 1500]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from ftops import export, models, train
from ftops.config import Config
from ftops.data import corpora
from ftops.serve import loadtest
from ftops.serve.deployable import Deployable
from ftops.serve.triton import models as triton_models, repository, server
from ftops.serve.triton.client import TritonClient


def candidate_folder(root: Path, labels: list[str], max_length: int) -> Path:
    """The real MiniLM with a classification head: speed does not depend on training."""
    model = models.build_classifier("minilm-l6", labels)
    tokenizer = models.load_tokenizer("minilm-l6", max_length)
    train.save_trained(model, tokenizer, labels, "minilm-l6", root)
    return root


def in_process_p50(model: Deployable, texts: list[str], threads: int) -> tuple[float, float]:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model.tokenizer_json))
    tokenizer.enable_truncation(model.max_length)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model.onnx), options, providers=["CPUExecutionProvider"])
    times = []
    for i, text in enumerate(texts):
        started = time.perf_counter()
        enc = tokenizer.encode(text)
        feed = {"input_ids": np.array([enc.ids]), "attention_mask": np.array([enc.attention_mask]),
                "token_type_ids": np.array([enc.type_ids])}
        session.run(["logits"], feed)
        if i >= 20:
            times.append(1000 * (time.perf_counter() - started))
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--max-length", type=int, default=64)
    args = parser.parse_args()
    frame, _ = corpora.load_builtin("builtin:tweets?domain=airline")
    texts = list(frame["text"].sample(n=2000, random_state=0))
    labels = sorted(frame["label"].unique())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = candidate_folder(root / "candidate", labels, args.max_length)
        parity = frame.sample(n=200, random_state=1)
        exported = export.export_model(source, root / "export", texts[:100], args.max_length,
                                       parity_texts=list(parity["text"]),
                                       parity_labels=[labels.index(l) for l in parity["label"]],
                                       variants=["fp32"])
        model = Deployable.from_export(exported.out_dir, "fp32")
        base = Config.model_validate({"project": {"dir": str(root / "proj"), "name": "bench"},
                                      "serving": {"http_port": 0, "grpc_port": 0, "metrics_port": 0}})
        info = server.start(base)
        try:
            repo = Path(info.repository)
            variants = {}
            for batching in (False, True):
                cfg = base.serving.model_copy(update={"batching": batching})
                names = repository.write_version(repo, "bench", "on" if batching else "off", model, cfg)
                with TritonClient(info.grpc_url) as client:
                    client.client.load_model(names.ensemble)
                variants[batching] = names.ensemble
            instances, threads = triton_models.default_instances(base.serving)
            p50_local, p99_local = in_process_p50(model, texts[:400], threads)
            single = loadtest.run(info.grpc_url, variants[False], texts, concurrency=1, requests=400, warmup=50)
            rows = []
            for concurrency in (1, 4, 8):
                for batching in (False, True):
                    result = loadtest.run(info.grpc_url, variants[batching], texts, concurrency=concurrency,
                                          requests=args.requests, warmup=50)
                    rows.append((concurrency, batching, result))
        finally:
            server.stop(base)

    print(f"\nclassifier: {instances} instance(s) x {threads} thread(s); fp32 MiniLM-L6, max_length {args.max_length}")
    print("\n1. batch-1 latency, one request at a time")
    print(f"{'':28}{'p50 ms':>8}{'p99 ms':>8}")
    print(f"{'in-process ORT':28}{p50_local:>8.2f}{p99_local:>8.2f}")
    print(f"{'Triton ensemble (gRPC)':28}{single.p50_ms:>8.2f}{single.p99_ms:>8.2f}")
    print(f"overhead p50: {single.p50_ms - p50_local:+.2f} ms (target <= 1.5 ms)")
    print("\n2. throughput by concurrency, dynamic batching off vs on")
    print(f"{'concurrency':>11}{'batching':>10}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'p99/p50':>8}{'errors':>7}")
    for concurrency, batching, r in rows:
        print(f"{concurrency:>11}{'on' if batching else 'off':>10}{r.throughput:>8.0f}{r.p50_ms:>8.1f}"
              f"{r.p99_ms:>8.1f}{r.p99_ms / r.p50_ms:>8.2f}{r.errors:>7}")
    by = {(c, b): r for c, b, r in rows}
    print(f"\nbatching on / off at concurrency 8: x{by[(8, True)].throughput / by[(8, False)].throughput:.2f} "
          f"(target >= 1.2); p99/p50 at concurrency 4 (on): {by[(4, True)].p99_ms / by[(4, True)].p50_ms:.2f} "
          "(target <= 3)")


if __name__ == "__main__":
    main()
