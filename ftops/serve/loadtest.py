"""Bounded load generators: concurrency, a request count, a duration cap and a warm-up;
throughput, p50/p95/p99 and the errors. One engine (`_drive`: threads with a client each)
behind two targets:

- `run`: Triton itself on loopback (the deploy gate, `ftops loadtest`, the serving bench),
  cross-checked with the server's own statistics (deltas over the run, since the metrics
  endpoint's quantiles are a rolling window that survives reloads);
- `gateway`: the gateway's `/predict` (`ftops gateway loadtest`, the gateway's fault tests),
  with sticky user keys, a share of `/feedback`, and the answered requests' ids and times
  kept, to compare with the prediction log after a fault.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ftops.serve.triton.client import TritonClient


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


@dataclass
class GatewayLoad:
    requests: int
    concurrency: int
    errors: int
    wall_s: float
    throughput: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    statuses: dict[int, int]
    routes: dict[str, int]
    feedback: int
    first_error: str | None = None
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    request_ids: list[str] = field(default_factory=list, repr=False)  # of the answered (200) requests
    answered_at: list[float] = field(default_factory=list, repr=False)  # their time.monotonic(), same order

    def summary(self) -> dict:
        out = asdict(self)
        out.pop("latencies_ms")
        out.pop("request_ids")
        out.pop("answered_at")
        return out


def _drive(open_client: Callable[[], Any], one: Callable[[Any, int], None], requests: int, concurrency: int,
           max_seconds: float, stop: threading.Event | None = None) -> float:
    """`concurrency` threads, each with its own client from `open_client()`, call
    `one(client, i)` for i = 0, 1, ... until `requests` are sent, `max_seconds` pass or
    `stop` is set; returns the wall time in seconds."""
    counter = itertools.count()
    deadline = time.monotonic() + max_seconds

    def worker() -> None:
        with open_client() as client:
            while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
                i = next(counter)
                if i >= requests:
                    return
                one(client, i)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def _percentiles(latencies: list[float]) -> tuple[float, float, float]:
    """p50, p95, p99 (NaN when nothing was answered)."""
    p50, p95, p99 = (float(np.percentile(latencies, q)) if latencies else float("nan") for q in (50, 95, 99))
    return p50, p95, p99


def run(url: str, model: str, texts: list[str], concurrency: int = 4, requests: int = 1000,
        warmup: int = 50, protocol: str = "grpc", max_seconds: float = 120.0,
        timeout_s: float = 30.0) -> LoadResult:
    """One text per request, `concurrency` threads each with its own client, until
    `requests` are sent or `max_seconds` pass."""
    with TritonClient(url, protocol, timeout_s) as probe:
        for text in itertools.islice(itertools.cycle(texts), warmup):
            probe.classify([text], model)
        before = probe.statistics(model)
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []

    def one(client: TritonClient, index: int) -> None:
        text = texts[index % len(texts)]
        started = time.perf_counter()
        try:
            client.classify([text], model)
        except Exception as exc:  # every failure counts; the first is reported
            with lock:
                errors.append(str(exc))
            return
        elapsed = 1000 * (time.perf_counter() - started)
        with lock:
            latencies.append(elapsed)

    wall = _drive(lambda: TritonClient(url, protocol, timeout_s), one, requests, concurrency, max_seconds)
    with TritonClient(url, protocol, timeout_s) as probe:
        after = probe.statistics(model)
    sent = len(latencies) + len(errors)
    p50, p95, p99 = _percentiles(latencies)
    return LoadResult(model, concurrency, sent, len(errors), wall, len(latencies) / wall,
                      p50, p95, p99, server_ms(before, after), errors[0] if errors else None, latencies)


def server_ms(before: dict, after: dict) -> float | None:
    """Queue + compute ms per request that succeeded between two `TritonClient.statistics`."""
    done = after["success"][0] - before["success"][0]
    if not done:
        return None
    busy = (after["queue"][1] - before["queue"][1]) + (after["compute_infer"][1] - before["compute_infer"][1])
    return busy / done / 1e6


def gateway(url: str, texts: list[str], requests: int = 500, concurrency: int = 4, max_seconds: float = 60.0,
            users: int = 0, labels: list[str] | None = None, feedback_share: float = 0.0, warmup: int = 10,
            timeout_s: float = 30.0, token: str | None = None,
            stop: threading.Event | None = None) -> GatewayLoad:
    """One text per POST /predict, `concurrency` threads each with a keep-alive httpx
    client, until `requests` are sent, `max_seconds` pass or `stop` is set. With `users`,
    requests carry one of that many user keys (sticky A/B arms); with `labels` (the texts'
    true labels), a `feedback_share` of answered requests also gets /feedback (not timed;
    with `token` as its bearer token when the gateway has tokens). The answered requests'
    ids and times are kept, to compare with the log after a fault."""
    import httpx

    with httpx.Client(base_url=url, timeout=timeout_s) as client:
        for text in itertools.islice(itertools.cycle(texts), warmup):
            client.post("/predict", json={"text": text})
    lock = threading.Lock()
    tally: dict[str, Any] = {"lat": [], "errors": [], "statuses": {}, "routes": {}, "feedback": 0,
                             "ids": [], "at": []}

    def one(client: httpx.Client, i: int) -> None:
        body = {"text": texts[i % len(texts)]}
        if users:
            body["user"] = f"user-{i % users}"
        started = time.perf_counter()
        try:
            resp = client.post("/predict", json=body)
        except httpx.HTTPError as exc:
            with lock:
                tally["errors"].append(f"{type(exc).__name__}: {exc}")
            return
        elapsed = 1000 * (time.perf_counter() - started)
        with lock:
            tally["statuses"][resp.status_code] = tally["statuses"].get(resp.status_code, 0) + 1
            if resp.status_code != 200:
                tally["errors"].append(f"HTTP {resp.status_code}: {resp.text[:300]}")
                return
            tally["lat"].append(elapsed)
            tally["ids"].append(resp.json()["request_id"])
            tally["at"].append(time.monotonic())
            route = resp.json()["route"]
            tally["routes"][route] = tally["routes"].get(route, 0) + 1
        if labels and (i * 2654435761 % 2 ** 32) / 2 ** 32 < feedback_share:  # a fixed, spread-out share
            answer = client.post("/feedback", json={"request_id": resp.json()["request_id"],
                                                    "label": labels[i % len(labels)]},
                                 headers={"Authorization": f"Bearer {token}"} if token else None)
            with lock:
                tally["feedback"] += answer.status_code == 200

    wall = _drive(lambda: httpx.Client(base_url=url, timeout=timeout_s), one, requests, concurrency, max_seconds, stop)
    lat = tally["lat"]
    p50, p95, p99 = _percentiles(lat)
    return GatewayLoad(len(lat) + len(tally["errors"]), concurrency, len(tally["errors"]), wall, len(lat) / wall,
                       p50, p95, p99, tally["statuses"], tally["routes"], tally["feedback"],
                       tally["errors"][0] if tally["errors"] else None, lat, tally["ids"], tally["at"])


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
