"""Triton python-backend step for the onnxruntime_onnx runtime: logits -> PROBS, LABEL.

Triton's own onnxruntime backend returns raw logits; this step adds the softmax and the
label names so both runtimes answer the same way.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        folder = Path(args["model_repository"]) / args["model_version"]
        self.labels = json.loads((folder / "labels.json").read_text())

    def execute(self, requests):
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, "logits").as_numpy().astype(np.float32)
            logits = logits - logits.max(axis=1, keepdims=True)
            probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
            labels = np.array([[self.labels[i].encode("utf-8")] for i in probs.argmax(axis=1)], dtype=object)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("PROBS", probs.astype(np.float32)), pb_utils.Tensor("LABEL", labels)]))
        return responses
