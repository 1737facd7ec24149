"""A variant run the way serving runs it: texts encoded by the EXPORTED tokenizer.json, the
model in an onnxruntime CPU session. The parity gate, the timer and the benchmarks all feed
variants through here, so what they measure is what serving will see."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ftops.names import OUTPUT_NAME

PROVIDERS = ["CPUExecutionProvider"]
BATCH_SIZE = 32    # parity batches and the batch-32 throughput figure
SPEED_TEXTS = 200  # batch-1 latency texts (as decide.LATENCY_TEXTS)


def load_tokenizer_json(path: Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def to_feed(encodings) -> dict[str, np.ndarray]:
    """tokenizers encodings (already padded to one length) as the three int64 inputs."""
    return {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64)}


def encode_batch(tokenizer_json: Path | Any, texts: list[str]) -> dict[str, np.ndarray]:
    tok = load_tokenizer_json(tokenizer_json) if isinstance(tokenizer_json, Path) else tokenizer_json
    return to_feed(tok.encode_batch(texts))


def encode_each(tokenizer_json: Path, texts: list[str]) -> list[dict[str, np.ndarray]]:
    tok = load_tokenizer_json(tokenizer_json)
    return [to_feed([tok.encode(t)]) for t in texts]


def speed_feeds(encode: Callable[[list[str]], dict[str, np.ndarray]],
                texts: list[str]) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """The timer's feeds (`encode`: texts -> one feed): the first SPEED_TEXTS texts one per
    feed (batch-1 latency) and in batches of BATCH_SIZE (throughput)."""
    timed = texts[:SPEED_TEXTS]
    return [encode([t]) for t in timed], [encode(timed[i:i + BATCH_SIZE]) for i in range(0, len(timed), BATCH_SIZE)]


def make_session(path: Path, threads: int):
    """One onnxruntime CPU session: intra-op threads as given, one inter-op thread.
    Spinning is off: when variants are timed interleaved, a spinning pool of the variant
    just run steals the cores of the one being timed."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=PROVIDERS)


def ort_runner(path: Path, threads: int) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    session = make_session(path, threads)
    return lambda feed: session.run([OUTPUT_NAME], feed)[0]
