"""Triton python-backend classifier: onnxruntime on CPU, length-aware batching.

One hop (a TEXT input in its config): it tokenises the texts itself (textin.py, copied
beside this file), so a request crosses the python backend once instead of twice; else it
takes the tokenizer step's input_ids / attention_mask / token_type_ids.

Rows of all requests in a dynamic batch are sorted by length, cut into buckets of
`bucket_size`, padded per bucket and run together; outputs go back to their request in the
original order. Naive cross-request padding cancelled batching's gain on 2 cores; sorted
buckets keep the padding small. A variant that is not batch-invariant (dynamic int8:
activation scales per batch) is served with bucket_size 1, so every text runs alone.
A graph whose input is a string tensor (the TF-IDF baseline) is fed the texts themselves.
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).resolve().parent))
from textin import TextIn, pad  # noqa: E402

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"]
        self.labels = json.loads((folder / "labels.json").read_text())
        self.bucket = int(params["bucket_size"])
        one_hop = any(i["name"] == "TEXT" for i in config["input"])
        self.text_in = TextIn(folder, params) if one_hop else None
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params["threads"])
        options.inter_op_num_threads = 1
        # Spinning threads of several instances fight for the same cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(folder / "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        self.wanted = [name for name in INPUTS if name in {i.name for i in inputs}]
        self.text_input = inputs[0].name if inputs[0].type == "tensor(string)" else None

    def execute(self, requests):
        rows, owner, refused = [], [], {}  # unpadded rows, the request of each, errors by request
        for r, request in enumerate(requests):
            try:
                mine = self._rows(request)
            except ValueError as exc:
                refused[r] = str(exc)
                continue
            rows.extend(mine)
            owner.extend([r] * len(mine))
        probs = np.empty((len(rows), len(self.labels)), dtype=np.float32)
        order = sorted(range(len(rows)), key=lambda k: len(next(iter(rows[k].values()))))
        for start in range(0, len(order), self.bucket):
            chunk = order[start:start + self.bucket]
            probs[chunk] = self._run([rows[k] for k in chunk])
        owner = np.array(owner, dtype=np.int64)
        responses = []
        for r in range(len(requests)):
            if r in refused:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(refused[r])))
                continue
            part = probs[owner == r]
            labels = np.array([[self.labels[i].encode("utf-8")] for i in part.argmax(axis=1)], dtype=object)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("PROBS", part), pb_utils.Tensor("LABEL", labels)]))
        return responses

    def _rows(self, request):
        if self.text_in is not None:
            return self.text_in.rows(request)
        arrays = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in INPUTS}
        lengths = arrays["attention_mask"].sum(axis=1)
        return [{name: a[i, :n] for name, a in arrays.items()} for i, n in enumerate(lengths)]

    def _run(self, rows):
        if self.text_input is not None:
            feed = {self.text_input: np.array([[row["text"]] for row in rows], dtype=object)}
        else:
            feed = pad(rows, self.wanted)
        logits = self.session.run(["logits"], feed)[0].astype(np.float32)
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)
