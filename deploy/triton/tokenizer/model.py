"""Triton python-backend step: text (BYTES) -> input_ids / attention_mask / token_type_ids.

Runs in the serving venv (numpy<2). Each request is padded to its own longest text only;
the classifier re-buckets rows across requests by length.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"]
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.max_length = int(params["max_length"])
        self.max_text_bytes = int(params["max_text_bytes"])
        # tokenizer.json keeps the truncation it was trained with (e.g. 64): set the serving
        # length explicitly, or long texts are silently cut shorter than the model expects.
        self.tokenizer.enable_truncation(self.max_length)
        self.tokenizer.no_padding()
        self.pad_id = int(params.get("pad_id", "0"))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                texts = self._texts(request)
            except ValueError as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
                continue
            encoded = self.tokenizer.encode_batch(texts)
            longest = max(len(e.ids) for e in encoded)
            ids = np.full((len(encoded), longest), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(encoded), longest), dtype=np.int64)
            types = np.zeros((len(encoded), longest), dtype=np.int64)
            for row, enc in enumerate(encoded):
                n = len(enc.ids)
                ids[row, :n], mask[row, :n], types[row, :n] = enc.ids, 1, enc.type_ids
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("input_ids", ids), pb_utils.Tensor("attention_mask", mask),
                pb_utils.Tensor("token_type_ids", types)]))
        return responses

    def _texts(self, request):
        """BYTES arrive as an object array of bytes: decode as UTF-8 (str() of bytes would
        feed "b'...'" to the tokenizer and flip labels with no error)."""
        raw = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
        texts = []
        for index, value in enumerate(raw):
            data = value if isinstance(value, bytes) else str(value).encode("utf-8")
            if len(data) > self.max_text_bytes:
                raise ValueError(f"text {index} is {len(data)} bytes; the limit is {self.max_text_bytes} "
                                 "(serving.max_text_bytes)")
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"text {index} is not valid UTF-8 (byte {exc.start})") from None
            if not text.strip():
                raise ValueError(f"text {index} is empty")
            texts.append(text)
        return texts
