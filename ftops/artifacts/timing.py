"""The interleaved timer every stage that compares models' speed uses.

Every feed goes through every runner in turn (rather than one runner over all feeds, then
the next), so machine noise (another process, a frequency change) hits all runners alike
and their figures can be compared.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

WARMUP = 10  # untimed rounds before measure_speed's batch-1 timings


def interleaved(runners: dict[str, Callable[[Any], Any]], feeds: Sequence[Any],
                warmup: int = 0) -> dict[str, list[float]]:
    """Seconds each runner took on each feed, interleaved, after untimed rounds on the first
    `warmup` feeds."""
    for feed in feeds[:warmup]:
        for run in runners.values():
            run(feed)
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for feed in feeds:
        for name, run in runners.items():
            started = time.perf_counter()
            run(feed)
            seconds[name].append(time.perf_counter() - started)
    return seconds


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    """p50 and p99 in milliseconds."""
    ms = [1000 * s for s in seconds]
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def measure_speed(runners: dict[str, Callable[[dict[str, np.ndarray]], Any]], singles: list[dict[str, np.ndarray]],
                  batches: list[dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """Batch-1 p50/p99 ms (on `singles`) and samples/s (on `batches`) of each runner on the
    same feeds, interleaved."""
    single = interleaved(runners, singles, WARMUP)
    batch = interleaved(runners, batches)
    rows = sum(len(next(iter(f.values()))) for f in batches)  # rows of the first input
    speed = {}
    for name in runners:
        busy = sum(batch[name])
        speed[name] = {**percentiles_ms(single[name]), "samples_per_s": rows / busy if busy else 0.0}
    return speed
