"""A bounded load generator against Triton on loopback: concurrency, request count, a
duration cap and a warm-up; reports throughput, p50/p95/p99 and the error rate, and
cross-checks with the server's own statistics (deltas over the run, since the metrics
endpoint's quantiles are a rolling window that survives reloads)."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ftops.serve.client import TritonClient


@dataclass
class LoadResult:
    model: str
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    throughput: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    server_avg_ms: float | None = None  # queue + compute per request, from the server
    first_error: str | None = None
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def error_rate(self) -> float:
        return self.errors / max(1, self.requests)

    def summary(self) -> dict:
        out = asdict(self)
        out.pop("latencies_ms")
        out["error_rate"] = self.error_rate
        return out


def run(url: str, model: str, texts: list[str], concurrency: int = 4, requests: int = 1000,
        warmup: int = 50, protocol: str = "grpc", max_seconds: float = 120.0,
        timeout_s: float = 30.0) -> LoadResult:
    """One text per request, `concurrency` threads each with its own client, until
    `requests` are sent or `max_seconds` pass."""
    with TritonClient(url, protocol, timeout_s) as probe:
        for text in itertools.islice(itertools.cycle(texts), warmup):
            probe.classify([text], model)
        before = probe.statistics(model)
    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + max_seconds

    def worker() -> None:
        with TritonClient(url, protocol, timeout_s) as client:
            while time.monotonic() < deadline:
                index = next(counter)
                if index >= requests:
                    return
                text = texts[index % len(texts)]
                started = time.perf_counter()
                try:
                    client.classify([text], model)
                except Exception as exc:  # every failure counts; the first is reported
                    with lock:
                        errors.append(str(exc))
                    continue
                elapsed = 1000 * (time.perf_counter() - started)
                with lock:
                    latencies.append(elapsed)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    with TritonClient(url, protocol, timeout_s) as probe:
        after = probe.statistics(model)
    done = after["success"][0] - before["success"][0]
    server_ms = None
    if done:
        busy = (after["queue"][1] - before["queue"][1]) + (after["compute_infer"][1] - before["compute_infer"][1])
        server_ms = busy / done / 1e6
    sent = len(latencies) + len(errors)
    p50, p95, p99 = (np.percentile(latencies, q) if latencies else float("nan") for q in (50, 95, 99))
    return LoadResult(model, concurrency, sent, len(errors), wall, len(latencies) / wall,
                      float(p50), float(p95), float(p99), server_ms, errors[0] if errors else None, latencies)


def plot(result: LoadResult, path: Path, slo_ms: float | None = None) -> Path:
    """Latency histogram with p50/p99 (and the SLO) marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(result.latencies_ms, bins=60, color="tab:blue", alpha=0.8)
    for value, name, colour in ((result.p50_ms, "p50", "tab:green"), (result.p99_ms, "p99", "tab:orange")):
        ax.axvline(value, color=colour, linestyle="--", label=f"{name} {value:.1f} ms")
    if slo_ms is not None:
        ax.axvline(slo_ms, color="tab:red", label=f"SLO p99 {slo_ms:.0f} ms")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("requests")
    ax.set_title(f"{result.model}: {result.requests} requests at concurrency {result.concurrency}, "
                 f"{result.throughput:.0f} req/s")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
