"""Text in, label and probabilities out, over gRPC or HTTP (tritonclient), with clear
errors for the usual failures: server down, model not loaded, a bad text."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ftops.serve.repository import ServingError


@dataclass
class Prediction:
    label: str
    probs: list[float]

    @property
    def confidence(self) -> float:
        return max(self.probs)


class TritonClient:
    def __init__(self, url: str, protocol: str = "grpc", timeout_s: float = 30.0):
        self.url, self.protocol, self.timeout_s = url, protocol, timeout_s
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        self.module = module
        kwargs = {} if protocol == "grpc" else {"connection_timeout": timeout_s, "network_timeout": timeout_s}
        self.client = module.InferenceServerClient(url=url, **kwargs)

    def close(self) -> None:
        """Close first: an open HTTP client makes tritonserver's SIGTERM wait its exit timeout."""
        self.client.close()

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def classify(self, texts: list[str | bytes], model: str, batch_size: int = 32) -> list[Prediction]:
        out: list[Prediction] = []
        for start in range(0, len(texts), batch_size):
            out.extend(self._classify(texts[start:start + batch_size], model))
        return out

    def _classify(self, texts: list[str | bytes], model: str) -> list[Prediction]:
        from tritonclient.utils import InferenceServerException

        data = np.array([[t.encode("utf-8") if isinstance(t, str) else t] for t in texts], dtype=object)
        tensor = self.module.InferInput("TEXT", list(data.shape), "BYTES")
        tensor.set_data_from_numpy(data)
        outputs = [self.module.InferRequestedOutput("LABEL"), self.module.InferRequestedOutput("PROBS")]
        kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        try:
            result = self.client.infer(model, [tensor], outputs=outputs, **kwargs)
        except InferenceServerException as exc:
            raise ServingError(explain(exc, self.url, model)) from None
        labels = result.as_numpy("LABEL").reshape(-1)
        probs = result.as_numpy("PROBS")
        return [Prediction(label.decode("utf-8"), [float(p) for p in row]) for label, row in zip(labels, probs)]

    def ready(self, model: str) -> bool:
        from tritonclient.utils import InferenceServerException

        try:
            return bool(self.client.is_model_ready(model))
        except InferenceServerException:
            return False

    def statistics(self, model: str) -> dict:
        """Server-side counts and cumulative durations of a model (for per-run deltas)."""
        stats = self.client.get_inference_statistics(model, as_json=True) if self.protocol == "grpc" \
            else self.client.get_inference_statistics(model)
        entry = stats["model_stats"][0]["inference_stats"]
        def part(key: str) -> tuple[int, int]:
            item = entry.get(key, {})
            return int(item.get("count", 0)), int(item.get("ns", 0))
        return {k: part(k) for k in ("success", "fail", "queue", "compute_infer", "compute_input", "compute_output")}


def explain(exc, url: str, model: str) -> str:
    message = str(exc.message() if hasattr(exc, "message") and callable(exc.message) else exc)
    lowered = message.lower()
    if "unavailable" in lowered or "connection refused" in lowered or "failed to connect" in lowered:
        return f"Triton at {url} is not reachable ({message}). Start it with `ftops serve up`."
    if "unknown model" in lowered or "not found" in lowered or "is not ready" in lowered or "unavailable model" in lowered:
        return f"Model '{model}' is not loaded on Triton at {url} ({message}). See `ftops serve status`."
    if "deadline" in lowered or "timed out" in lowered or "timeout" in lowered:
        return f"Triton at {url} did not answer in time ({message}); raise serving.request_timeout_s or lower the load."
    return f"Triton refused the request for '{model}': {message}"
