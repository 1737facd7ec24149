"""Triton python-backend step: text (BYTES) -> input_ids / attention_mask / token_type_ids.

Runs in the serving venv (numpy<2). Each request is padded to its own longest text only;
the classifier re-buckets rows across requests by length.
"""

import json
import sys
from pathlib import Path

import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).resolve().parent))  # textin.py is copied beside this file
from textin import TextIn, pad  # noqa: E402

OUTPUTS = ("input_ids", "attention_mask", "token_type_ids")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.text_in = TextIn(Path(args["model_repository"]) / args["model_version"], params)
        self.pad_id = int(params.get("pad_id", "0"))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                rows = self.text_in.rows(request)
            except ValueError as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
                continue
            batch = pad(rows, OUTPUTS, self.pad_id)
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, batch[name]) for name in OUTPUTS]))
        return responses
