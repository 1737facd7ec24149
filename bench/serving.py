"""Serving benchmark on the real MiniLM (fp32 ONNX) and real tweets, in one run:

1. Batch-1 latency at concurrency 1, each text through every way in turn: in-process
   tokenizers + onnxruntime (one thread) vs the Triton ensemble with one hop (the
   classifier tokenises itself, `serving.one_hop`, the default) vs two hops (a tokenizer
   step, then the classifier), over gRPC; the figure is the median of the rounds' p50s,
   with the server's own queue + compute time per request beside the client's.
2. Throughput and p50/p99 at concurrency 1 / 4 / 8, dynamic batching off vs on (one hop),
   against the best in-process throughput of texts in arrival order (batch 1, or batches
   of 8) on the same share of the CPU; batches sorted by length over the whole set, which
   only an offline job can form, are shown beside.
3. The gateway (HTTP text in, routed, logged to the prediction log) vs Triton alone on the
   same deployed champion, each text to both in turn at concurrency 1, with the gateway
   process's own CPU ms per request.

CPU share: with 2 or more cores, Triton and its python-backend processes are pinned to all
cores but the last (taskset), this process (the load generator and the in-process
baseline) to the last one, so client and server do not take each other's time; the
classifier gets one instance per server core. The table says which cores each side had.

Targets (issue "Inference at the limit of the CPU"): one-hop p50 minus in-process p50
<= 1.0 ms at concurrency 1; p99 <= 3x p50 at concurrency 4; throughput at concurrency 8
>= 90% of the best in-process throughput; gateway p50 minus Triton p50 <= 1.5 ms.

    python bench/serving.py [--rounds 5] [--requests 300] [--load-requests 600]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil

from ftops import export, models, train
from ftops.config import Config
from ftops.data import corpora
from ftops.export import runtime
from ftops.serve import deploy, gateway, loadtest
from ftops.serve.deployable import Deployable
from ftops.serve.triton import repository, server
from ftops.serve.triton.client import TritonClient

import report  # bench/report.py, beside this script


def candidate_folder(root: Path, labels: list[str], max_length: int) -> Path:
    """The real MiniLM with a classification head: speed does not depend on training."""
    model = models.build_classifier("minilm-l6", labels)
    tokenizer = models.load_tokenizer("minilm-l6", max_length)
    train.save_trained(model, tokenizer, labels, "minilm-l6", root)
    return root


def cpu_share() -> tuple[list[int], list[int]]:
    """(server cores, client cores): the last core for this process when there are two or more."""
    cores = sorted(os.sched_getaffinity(0))
    return (cores[:-1], cores[-1:]) if len(cores) >= 2 else (cores, cores)


def pin(pid: int, cores: list[int]) -> None:
    """Every thread of a process and of its children (the python-backend stubs) onto `cores`."""
    mask = ",".join(map(str, cores))
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        subprocess.run(["taskset", "-a", "-cp", mask, str(proc.pid)], check=True, capture_output=True)


class InProcess:
    """The same export in this process, the way export times it (ftops.export.runtime: the
    export's tokenizer.json, one onnxruntime thread): what a user would run instead of a server."""

    def __init__(self, model: Deployable):
        self.tokenizer = runtime.load_tokenizer_json(model.tokenizer_json)
        self.run = runtime.ort_runner(model.onnx, threads=1)

    def classify(self, texts: list[str]) -> np.ndarray:
        return self.run(runtime.encode_batch(self.tokenizer, texts))

    def throughput(self, texts: list[str], batch: int, by_length: bool = False) -> float:
        """Texts per second in batches of `batch`, in arrival order (what a server gets) or
        sorted by length over the whole set (only an offline job can)."""
        ordered = sorted(texts, key=lambda t: len(self.tokenizer.encode(t).ids)) if by_length else texts
        started = time.perf_counter()
        for start in range(0, len(ordered), batch):
            self.classify(ordered[start:start + batch])
        return len(ordered) / (time.perf_counter() - started)


def deploy_versions(info: server.ServerInfo, model: Deployable, base: Config) -> dict[str, str]:
    """The ensembles compared: one hop with batching off / on, two hops with batching on."""
    shapes = {"one hop, batching off": {"one_hop": True, "batching": False},
              "one hop": {"one_hop": True, "batching": True},
              "two hops": {"one_hop": False, "batching": True}}
    ensembles = {}
    with TritonClient(info.grpc_url) as client:
        for tag, (label, update) in zip(("v1", "v2", "v3"), shapes.items()):
            names = repository.write_version(Path(info.repository), "bench", tag, model,
                                             base.serving.model_copy(update=update))
            client.load(names.ensemble)
            ensembles[label] = names.ensemble
    return ensembles


def paired_ms(ways: dict[str, Callable[[str], object]], texts: list[str]) -> dict[str, list[float]]:
    """Every text through every way in turn, the order rotating from text to text, so that
    the drift of a shared machine lands on all ways alike: in blocks of a few hundred
    requests per way, the same way's p50 moved by 2 ms between blocks on a 2-core VM."""
    order, times = list(ways), {way: [] for way in ways}
    for i, text in enumerate(texts):
        for way in order[i % len(order):] + order[:i % len(order)]:
            started = time.perf_counter()
            ways[way](text)
            times[way].append(1000 * (time.perf_counter() - started))
    return times


def latency_rounds(info, ensembles, local: InProcess, texts: list[str], rounds: int, requests: int) -> list[dict]:
    """Rounds at concurrency 1, each text through every way in turn (`paired_ms`); per way
    the median over rounds of p50 / p99, and of the server's queue + compute ms."""
    ensembles = {"Triton one hop": ensembles["one hop"], "Triton two hops": ensembles["two hops"]}
    seen: dict[str, list[tuple[float, float, float | None]]] = {way: [] for way in ("in-process ORT", *ensembles)}
    with TritonClient(info.grpc_url) as client:
        ways = {"in-process ORT": lambda text: local.classify([text]),
                **{way: (lambda text, e=e: client.classify([text], e)) for way, e in ensembles.items()}}
        paired_ms(ways, texts[:20])  # warm-up
        for r in range(rounds):
            before = {way: client.statistics(e) for way, e in ensembles.items()}
            times = paired_ms(ways, texts[r * requests:(r + 1) * requests])
            for way, values in times.items():
                server = (loadtest.server_ms(before[way], client.statistics(ensembles[way]))
                          if way in ensembles else None)
                seen[way].append((float(np.percentile(values, 50)), float(np.percentile(values, 99)), server))
            print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{w} {v[-1][0]:.2f} ms" for w, v in seen.items()))
    rows, local_p50 = [], statistics.median(v[0] for v in seen["in-process ORT"])
    for way, values in seen.items():
        servers = [v[2] for v in values if v[2] is not None]
        p50 = statistics.median(v[0] for v in values)
        rows.append({"part": "latency c1", "way": way, "p50_ms": p50,
                     "p99_ms": statistics.median(v[1] for v in values),
                     "server_ms": statistics.median(servers) if servers else None,
                     "over_in_process_ms": p50 - local_p50})
    return rows


def load_rows(info, ensembles, texts: list[str], requests: int, best_local: float) -> list[dict]:
    rows = []
    for concurrency in (1, 4, 8):
        for label in ("one hop, batching off", "one hop"):
            r = loadtest.run(info.grpc_url, ensembles[label], texts, concurrency=concurrency,
                             requests=requests, warmup=30)
            rows.append({"part": "load", "way": label, "concurrency": concurrency, "req_s": r.throughput,
                         "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "p99_over_p50": r.p99_ms / r.p50_ms,
                         "server_ms": r.server_avg_ms, "of_best_in_process": r.throughput / best_local,
                         "errors": r.errors})
            print(f"  concurrency {concurrency}, {label}: {r.throughput:.0f} req/s, p50 {r.p50_ms:.1f} ms")
    return rows


def gateway_rounds(config: Config, exported: Path, texts: list[str], rounds: int, requests: int,
                   cores: list[int]) -> list[dict]:
    """The export deployed as champion behind the gateway; each text to the gateway and to
    Triton alone in turn (`paired_ms`); per way the median over rounds of p50, and the
    gateway's own CPU ms per request (its process's CPU time over the round: a figure the
    machine's noise moves far less than wall time)."""
    import httpx

    result = deploy.deploy(config, exported, texts[:64])
    if result.outcome != "promoted":
        raise SystemExit(f"the deploy for the gateway part was not promoted: {result.reason}")
    info = gateway.start(config)
    triton = server.status(config)
    pin(info.pid, cores)
    pin(triton.pid, cores)  # the deploy loaded new python-backend stubs
    champion = deploy.champion_model(config)
    process = psutil.Process(info.pid)
    seen: dict[str, list[float]] = {"gateway (HTTP, logged)": [], "Triton alone (gRPC)": [], "gateway cpu": []}

    def via_gateway(text: str) -> None:
        answer = web.post("/predict", json={"text": text})
        if answer.status_code != 200:
            raise SystemExit(f"the gateway answered HTTP {answer.status_code}: {answer.text[:300]}")

    try:
        with httpx.Client(base_url=info.url, timeout=30) as web, TritonClient(triton.grpc_url) as alone:
            ways = {"gateway (HTTP, logged)": via_gateway,
                    "Triton alone (gRPC)": lambda text: alone.classify([text], champion)}
            paired_ms(ways, texts[:20])  # warm-up
            for r in range(rounds):
                sample = texts[r * requests:(r + 1) * requests]
                cpu = sum(process.cpu_times()[:2])
                times = paired_ms(ways, sample)
                seen["gateway cpu"].append(1000 * (sum(process.cpu_times()[:2]) - cpu) / len(sample))
                for way, values in times.items():
                    seen[way].append(float(np.percentile(values, 50)))
                print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{w} {v[-1]:.2f} ms" for w, v in seen.items()))
    finally:
        gateway.stop(config)
    triton_p50 = statistics.median(seen["Triton alone (gRPC)"])
    rows = [{"part": "gateway c1", "way": way, "p50_ms": statistics.median(seen[way]),
             "over_triton_ms": statistics.median(seen[way]) - triton_p50}
            for way in ("gateway (HTTP, logged)", "Triton alone (gRPC)")]
    rows[0]["gateway_cpu_ms"] = statistics.median(seen["gateway cpu"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300, help="per way and round at concurrency 1")
    parser.add_argument("--load-requests", type=int, default=600, help="per concurrency and batching setting")
    parser.add_argument("--max-length", type=int, default=64)
    args = parser.parse_args()
    frame, _ = corpora.load_builtin("builtin:tweets?domain=airline")
    texts = list(frame["text"].sample(n=min(len(frame), max(2000, args.rounds * args.requests)), random_state=0))
    labels = sorted(frame["label"].unique())
    server_cores, client_cores = cpu_share()
    os.sched_setaffinity(0, client_cores)
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
                                      "serving": {"http_port": 0, "grpc_port": 0, "metrics_port": 0,
                                                  "gateway_port": 0, "instances": len(server_cores),
                                                  "threads": 1, "load_requests": 100},
                                      "gates": {"p99_ms": 10000}})
        info = server.start(base)
        try:
            ensembles = deploy_versions(info, model, base)
            pin(info.pid, server_cores)
            local = InProcess(model)
            print(f"1. latency at concurrency 1: {args.rounds} interleaved rounds of {args.requests} texts")
            rows = latency_rounds(info, ensembles, local, texts, args.rounds, args.requests)
            offline = {f"batch {b}{' by length' if by_length else ''}": local.throughput(texts[:600], b, by_length)
                       for b, by_length in ((1, False), (8, False), (8, True))}
            best_local = max(offline["batch 1"], offline["batch 8"])  # what a server of arrivals could do
            rows += [{"part": "in-process throughput", "way": way, "req_s": v} for way, v in offline.items()]
            print("2. load by concurrency")
            rows += load_rows(info, ensembles, texts, args.load_requests, best_local)
            print("3. the gateway vs Triton alone at concurrency 1")
            rows += gateway_rounds(base, exported.out_dir, texts, args.rounds, args.requests, server_cores)
        finally:
            server.stop(base)
    print_verdict(rows, best_local, server_cores, client_cores)
    report.write("serving", rows, {**{k: str(v) for k, v in vars(args).items()},
                                   "server_cores": server_cores, "client_cores": client_cores,
                                   "best_in_process_req_s": best_local},
                 notes=[f"Triton on cores {server_cores} ({len(server_cores)} classifier instance(s) x 1 thread); "
                        f"load generator and in-process baseline on cores {client_cores}"])


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_verdict(rows: list[dict], best_local: float, server_cores, client_cores) -> None:
    print(f"\nmachine: {report.stamp(report.machine())}")
    print(f"Triton on cores {server_cores}, load generator + in-process on {client_cores}; fp32 MiniLM-L6")
    print(f"\n{'':24}{'p50 ms':>8}{'p99 ms':>8}{'server ms':>10}{'over ORT':>9}")
    for row in (r for r in rows if r["part"] == "latency c1"):
        print(f"{row['way']:24}{row['p50_ms']:>8.2f}{_ms(row['p99_ms']):>8}{_ms(row['server_ms']):>10}"
              f"{row['over_in_process_ms']:>+9.2f}")
    offline = ", ".join(f"{r['way']} {r['req_s']:.0f}" for r in rows if r["part"] == "in-process throughput")
    print(f"\nin-process texts/s: {offline}; best in arrival order: {best_local:.0f}")
    print(f"{'concurrency':>11} {'way':<22}{'req/s':>7}{'p50':>7}{'p99':>7}{'p99/p50':>8}{'of best':>8}")
    for r in (r for r in rows if r["part"] == "load"):
        print(f"{r['concurrency']:>11} {r['way']:<22}{r['req_s']:>7.0f}{r['p50_ms']:>7.1f}{r['p99_ms']:>7.1f}"
              f"{r['p99_over_p50']:>8.2f}{r['of_best_in_process']:>8.0%}")
    print(f"\n{'':24}{'p50 ms':>8}{'over Triton':>12}{'own CPU ms':>11}")
    for row in (r for r in rows if r["part"] == "gateway c1"):
        print(f"{row['way']:24}{row['p50_ms']:>8.2f}{row['over_triton_ms']:>+12.2f}"
              f"{_ms(row.get('gateway_cpu_ms')):>11}")
    gate = next(r for r in rows if r["way"] == "gateway (HTTP, logged)")
    one = next(r for r in rows if r["way"] == "Triton one hop")
    c4 = next(r for r in rows if r["part"] == "load" and r["way"] == "one hop" and r["concurrency"] == 4)
    c8 = max((r for r in rows if r["part"] == "load" and r["concurrency"] == 8), key=lambda r: r["req_s"])
    print(f"\none hop over in-process p50: {one['over_in_process_ms']:+.2f} ms (target <= 1.0); "
          f"p99/p50 at concurrency 4: {c4['p99_over_p50']:.2f} (target <= 3); "
          f"concurrency 8 throughput: {c8['of_best_in_process']:.0%} of in-process (target >= 90%); "
          f"gateway over Triton p50: {gate['over_triton_ms']:+.2f} ms (target <= 1.5)")


if __name__ == "__main__":
    main()
