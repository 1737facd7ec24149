"""Text in for the python-backend models: BYTES decoded and checked, then tokenised.

Shared by the tokenizer step (two-hop ensembles, the onnxruntime_onnx runtime) and the
one-hop classifier, which tokenises and runs its session in the same process, so a
request crosses the python backend once. Copied beside each model.py that imports it.
"""

from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer


class TextIn:
    def __init__(self, folder: Path, params: dict[str, str]):
        self.max_text_bytes = int(params["max_text_bytes"])
        self.tokenizer = None  # a graph that takes the text itself (the TF-IDF baseline) has none
        if (folder / "tokenizer.json").is_file():
            self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
            # tokenizer.json keeps the truncation it was trained with (e.g. 64): set the serving
            # length explicitly, or long texts are silently cut shorter than the model expects.
            self.tokenizer.enable_truncation(int(params["max_length"]))
            self.tokenizer.no_padding()

    def rows(self, request) -> list[dict[str, np.ndarray]]:
        """One unpadded row (input_ids, attention_mask, token_type_ids) per text of the
        request, or {"text": the text} for a graph without a tokenizer; ValueError names the
        text that is refused."""
        if self.tokenizer is None:
            return [{"text": text} for text in self.texts(request)]
        return [{"input_ids": np.array(e.ids, dtype=np.int64),
                 "attention_mask": np.ones(len(e.ids), dtype=np.int64),
                 "token_type_ids": np.array(e.type_ids, dtype=np.int64)}
                for e in self.tokenizer.encode_batch(self.texts(request))]

    def texts(self, request) -> list[str]:
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


def pad(rows: list[dict[str, np.ndarray]], names, pad_id: int = 0) -> dict[str, np.ndarray]:
    """Rows padded to the longest of them: input_ids with pad_id, the rest with 0."""
    longest = max(len(row["input_ids"]) for row in rows)
    batch = {}
    for name in names:
        array = np.full((len(rows), longest), pad_id if name == "input_ids" else 0, dtype=np.int64)
        for i, row in enumerate(rows):
            array[i, :len(row[name])] = row[name]
        batch[name] = array
    return batch
