"""Triton's client: text in, label and probabilities out, over gRPC or HTTP (tritonclient),
with clear errors for the usual failures: server down, model not loaded, a bad text."""

from __future__ import annotations

import numpy as np

from ftops.serve.runtime import Prediction, ServingError


class TritonClient:
    """Every call has a time limit: inference `timeout_s`, model load / unload
    `control_timeout_s`, readiness probes `probe_timeout_s` (see the config's `timeouts`)."""

    def __init__(self, url: str, protocol: str = "grpc", timeout_s: float = 30.0,
                 control_timeout_s: float = 120.0, probe_timeout_s: float = 5.0):
        self.url, self.protocol, self.timeout_s = url, protocol, timeout_s
        self.control_timeout_s, self.probe_timeout_s = control_timeout_s, probe_timeout_s
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        self.module = module
        self.client = self._connect(timeout_s)
        self._control = self._probe = None

    @classmethod
    def for_config(cls, url: str, config) -> TritonClient:
        """A client with every limit taken from a project config."""
        return cls(url, config.serving.protocol, config.serving.request_timeout_s,
                   config.timeouts.triton_control_s, config.timeouts.triton_probe_s)

    def _connect(self, timeout_s: float):
        kwargs = {} if self.protocol == "grpc" else {"connection_timeout": min(timeout_s, 10.0),
                                                     "network_timeout": timeout_s}
        return self.module.InferenceServerClient(url=self.url, **kwargs)

    def _control_client(self):
        """gRPC takes a limit per call; the HTTP client has one per connection, so control
        calls (a load may take a minute) get a client of their own."""
        if self.protocol == "grpc":
            return self.client
        if self._control is None:
            self._control = self._connect(self.control_timeout_s)
        return self._control

    def _limit(self, seconds: float) -> dict:
        return {"client_timeout": seconds} if self.protocol == "grpc" else {}

    def close(self) -> None:
        """Close first: an open HTTP client makes tritonserver's SIGTERM wait its exit timeout."""
        for client in (self.client, self._control, self._probe):
            if client is not None:
                client.close()

    def load(self, model: str) -> None:
        """Load (or reload) a model; raises ServingError on refusal or when the limit passes."""
        self._control_call("load", model, lambda c: c.load_model(model, **self._limit(self.control_timeout_s)))

    def unload(self, model: str) -> bool:
        """Unload a model; False when it was not loaded or Triton did not answer (nothing to undo)."""
        try:
            self._control_call("unload", model,
                               lambda c: c.unload_model(model, **self._limit(self.control_timeout_s)))
        except ServingError:
            return False
        return True

    def _control_call(self, what: str, model: str, call) -> None:
        from tritonclient.utils import InferenceServerException

        try:
            call(self._control_client())
        except InferenceServerException as exc:
            raise ServingError(f"{what} of '{model}': {explain(exc, self.url, model)}") from None
        except OSError as exc:  # the HTTP client's socket errors (refused, reset, timed out)
            why = socket_error(exc, self.url, "timeouts.triton_control_s")
            raise ServingError(f"{what} of '{model}': {why}") from None

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
        try:
            result = self.client.infer(model, [tensor], outputs=outputs, **self._limit(self.timeout_s))
        except InferenceServerException as exc:
            raise ServingError(explain(exc, self.url, model)) from None
        except OSError as exc:  # the HTTP client's socket errors: the server is down or hung, not the request
            raise ServingError(socket_error(exc, self.url)) from None
        labels = result.as_numpy("LABEL").reshape(-1)
        probs = result.as_numpy("PROBS")
        return [Prediction(label.decode("utf-8"), [float(p) for p in row]) for label, row in zip(labels, probs)]

    def ready(self, model: str) -> bool:
        from tritonclient.utils import InferenceServerException

        try:
            if self.protocol == "grpc":
                return bool(self.client.is_model_ready(model, client_timeout=self.probe_timeout_s))
            return bool(self._probe_client().is_model_ready(model))
        except (InferenceServerException, OSError):
            return False

    def _probe_client(self):
        """HTTP: a client whose connection limit is the probe's, so a hung Triton costs a
        probe `probe_timeout_s`, not the inference limit."""
        if self._probe is None:
            self._probe = self._connect(self.probe_timeout_s)
        return self._probe

    def statistics(self, model: str) -> dict:
        """Server-side counts and cumulative durations of a model (for per-run deltas)."""
        stats = self.client.get_inference_statistics(model, as_json=True, client_timeout=self.timeout_s) \
            if self.protocol == "grpc" else self.client.get_inference_statistics(model)
        entry = stats["model_stats"][0]["inference_stats"]
        def part(key: str) -> tuple[int, int]:
            item = entry.get(key, {})
            return int(item.get("count", 0)), int(item.get("ns", 0))
        return {k: part(k) for k in ("success", "fail", "queue", "compute_infer", "compute_input", "compute_output")}


def socket_error(exc: OSError, url: str, limit: str = "serving.request_timeout_s") -> str:
    """An HTTP socket error in the words `explain` uses: a time limit (the setting `limit`),
    or a server not reachable."""
    if isinstance(exc, TimeoutError):
        return f"Triton at {url} did not answer in time ({exc or 'timed out'}); raise {limit} or lower the load."
    return f"Triton at {url} is not reachable ({exc}). Start it with `ftops serve up`."


def failure_kind(message: str) -> str:
    """What a ServingError message (from `explain` / `socket_error`) says went wrong:
    unreachable, not_loaded, timeout (the server cannot answer now: retry) or refused."""
    if "not reachable" in message:
        return "unreachable"
    if "not loaded" in message:
        return "not_loaded"
    if "in time" in message:
        return "timeout"
    return "refused"


# What a server that went away mid-call looks like (a kill -9 resets the open streams).
GONE = ("unavailable", "connection refused", "failed to connect", "stream removed", "connection reset",
        "socket closed", "broken pipe", "end of stream", "eof")


def explain(exc, url: str, model: str) -> str:
    message = str(exc.message() if hasattr(exc, "message") and callable(exc.message) else exc)
    lowered = message.lower()
    status = str(exc.status() if hasattr(exc, "status") and callable(exc.status) else "").upper()
    if "UNAVAILABLE" in status or any(sign in lowered for sign in GONE):
        return f"Triton at {url} is not reachable ({message}). Start it with `ftops serve up`."
    if "unknown model" in lowered or "not found" in lowered or "is not ready" in lowered or "unavailable model" in lowered:
        return f"Model '{model}' is not loaded on Triton at {url} ({message}). See `ftops serve status`."
    if "deadline" in lowered or "timed out" in lowered or "timeout" in lowered:
        return f"Triton at {url} did not answer in time ({message}); raise serving.request_timeout_s or lower the load."
    return f"Triton refused the request for '{model}': {message}"
