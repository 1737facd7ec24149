"""The deploy gates a version on trial must pass before it serves: smoke parity (the
server's answers equal the exported ONNX run in-process, alone and in one batch) and the
P99 SLO under load.
"""

from __future__ import annotations

import numpy as np

from ftops.config import Config
from ftops.names import OUTPUT_NAME, TEXT_INPUT
from ftops.serve import loadtest
from ftops.serve.deploy.trial import Trial
from ftops.serve.deployable import Deployable, verified_bytes
from ftops.serve.runtime import Client, ServingError

SMOKE_TEXTS = 64
PROB_ATOL = 1e-5


def reference_probs(model: Deployable, texts: list[str]) -> np.ndarray:
    """The exported ONNX in-process (same tokenizer file, same max length), one text at a time.
    Both files are read once and held to the manifest's sha256, so the reference is the
    export as it was gated, not whatever the files hold now."""
    import onnxruntime as ort

    session = ort.InferenceSession(verified_bytes(model.onnx, model.onnx_sha256), providers=["CPUExecutionProvider"])
    encode = text_feed if model.text_input else token_feed(model)
    wanted = {i.name for i in session.get_inputs()}
    out = []
    for text in texts:
        feed = encode(text)
        logits = session.run([OUTPUT_NAME], {k: v for k, v in feed.items() if k in wanted})[0][0].astype(np.float64)
        exp = np.exp(logits - logits.max())
        out.append(exp / exp.sum())
    return np.array(out)


def text_feed(text: str) -> dict[str, np.ndarray]:
    return {TEXT_INPUT: np.array([[text]], dtype=object)}


def token_feed(model: Deployable):
    """text -> the three int64 inputs, by the export's tokenizer.json as verified."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(verified_bytes(model.tokenizer_json, model.tokenizer_sha256).decode("utf-8"))
    tokenizer.enable_truncation(model.max_length)
    tokenizer.no_padding()

    def feed(text: str) -> dict[str, np.ndarray]:
        enc = tokenizer.encode(text)
        return {"input_ids": np.array([enc.ids], dtype=np.int64),
                "attention_mask": np.array([enc.attention_mask], dtype=np.int64),
                "token_type_ids": np.array([enc.type_ids], dtype=np.int64)}

    return feed


def smoke(client: Client, model_name: str, model: Deployable, texts: list[str]) -> dict:
    """Triton's answers equal the exported model's, alone and in one batch."""
    reference = reference_probs(model, texts)
    alone = client.classify(texts, model_name, batch_size=1)
    batched = client.classify(texts, model_name, batch_size=16)
    result = {"n": len(texts)}
    for name, preds in (("alone", alone), ("batched", batched)):
        probs = np.array([p.probs for p in preds])
        labels = [p.label for p in preds]
        expected = [model.labels[i] for i in reference.argmax(axis=1)]
        result[f"{name}_label_agreement"] = float(np.mean([a == b for a, b in zip(labels, expected)]))
        result[f"{name}_max_prob_diff"] = float(np.abs(probs - reference).max())
    result["passed"] = (result["alone_label_agreement"] == 1.0 and result["alone_max_prob_diff"] <= PROB_ATOL
                        and (not model.batch_invariant or (result["batched_label_agreement"] == 1.0
                                                           and result["batched_max_prob_diff"] <= PROB_ATOL)))
    return result


def smoke_trial(trial: Trial, texts: list[str]) -> dict:
    """The smoke test of a version on trial, on the first SMOKE_TEXTS texts."""
    return smoke(trial.client, trial.route.ensemble, trial.model, texts[:SMOKE_TEXTS])


def run_gates(config: Config, trial: Trial, texts: list[str]) -> tuple[str | None, dict, loadtest.LoadResult | None]:
    """Load the version, then (why it failed, None if it passed; the smoke result; the load
    test). Triton refusing or failing to answer the new version fails the gate it happened in."""
    cfg, route = config.serving, trial.route
    try:
        trial.load()
    except ServingError as exc:
        return f"load failed: {exc}", {}, None
    try:
        check = smoke_trial(trial, texts)
    except ServingError as exc:
        return f"smoke test: Triton did not answer for the new version ({exc})", {}, None
    if not check["passed"]:
        return f"smoke test: Triton's answers differ from the exported model ({check})", check, None
    try:
        load = loadtest.run(trial.candidate.endpoint.url(cfg.protocol), route.ensemble, texts, cfg.load_concurrency,
                            cfg.load_requests, cfg.load_warmup, cfg.protocol, timeout_s=cfg.request_timeout_s)
    except ServingError as exc:
        return f"load test: Triton did not answer for the new version ({exc})", check, None
    reasons = []
    if load.p99_ms > config.gates.p99_ms:
        reasons.append(f"p99 {load.p99_ms:.1f} ms > SLO {config.gates.p99_ms:.1f} ms (gates.p99_ms) "
                       f"at concurrency {load.concurrency}")
    if load.error_rate > cfg.max_error_rate:
        reasons.append(f"error rate {load.error_rate:.3%} > {cfg.max_error_rate:.3%} ({load.first_error})")
    return "; ".join(reasons) or None, check, load
