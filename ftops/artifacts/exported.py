"""The export folder: what the export stage writes and serving reads, in one place, so the
writer and the readers cannot drift apart.

Layout (paths relative to the folder):

    export.json            manifest: sha256 of every file, variants with figures, status and
                           reason, `selected`, max_length, inputs/outputs, source info
    labels.json            label names in id order (column i of `logits` is labels[i])
    tokenizer.json         fast tokenizer, truncation = max_length, pads to the batch's longest
    tokenizer_config.json  (+ vocab.txt when the model folder has one)
    model_card.md          source, labels, variants and their figures
    <variant>/model.onnx   one folder per built variant

Every model.onnx takes input_ids / attention_mask / token_type_ids (int64, [batch, sequence])
and returns `logits` (float32, [batch, labels]); the TF-IDF baseline's takes raw text instead
(`text`, string, [batch, 1]) and has no tokenizer files. The manifest is written last and lists the
sha256 of every other file, so a reader can hold each file to what the export wrote.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ftops import atomic
from ftops.names import (EXPORT_FORMAT, LABELS_FILE, MANIFEST_FILE, MODEL_DIR, OUTPUT_NAME, TEXT_INPUT,
                         TOKENIZER_FILE, VOCAB_FILE)

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OPSET = 17
TOKENIZER_FILES = (TOKENIZER_FILE, "tokenizer_config.json")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_hashes(out_dir: Path) -> dict[str, str]:
    """sha256 of every file in the export except the manifest itself."""
    return {str(p.relative_to(out_dir)): sha256(p) for p in sorted(out_dir.rglob("*"))
            if p.is_file() and p.name != MANIFEST_FILE}


# ---------------------------------------------------------------- writing


def write_labels(out_dir: Path, labels: list[str]) -> None:
    (out_dir / LABELS_FILE).write_text(json.dumps(labels))


def write_tokenizer(tokenizer, source_folder: Path, out_dir: Path, max_length: int) -> None:
    """tokenizer.json set up for serving: truncation at max_length (the saved file keeps the
    training setting otherwise) and padding to each batch's longest text."""
    tokenizer.model_max_length = max_length
    backend = tokenizer.backend_tokenizer
    backend.enable_truncation(max_length)
    backend.enable_padding(pad_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        for name in TOKENIZER_FILES:
            shutil.copy(Path(tmp) / name, out_dir / name)
    vocab = source_folder / MODEL_DIR / VOCAB_FILE
    if vocab.is_file():
        shutil.copy(vocab, out_dir / VOCAB_FILE)


def pad_id(tokenizer_json: Path) -> int:
    """The id the exported tokenizer pads with (serving pads ragged batches with it)."""
    return int(json.loads(tokenizer_json.read_text())["padding"]["pad_id"])


def interface(out_dir: Path, labels: list[str], max_length: int) -> dict[str, Any]:
    """The manifest's description of how to feed the folder's models and read their answers."""
    outputs = [{"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", len(labels)]}]
    if not (out_dir / TOKENIZER_FILE).is_file():  # raw text in: the baseline
        return {"labels": labels, "labels_file": LABELS_FILE, "max_length": max_length, "tokenizer": None,
                "inputs": [{"name": TEXT_INPUT, "dtype": "string", "shape": ["batch", 1]}],
                "outputs": outputs, "opset": OPSET}
    return {
        "labels": labels,
        "labels_file": LABELS_FILE,
        "max_length": max_length,
        "tokenizer": {"file": TOKENIZER_FILE, "truncation": max_length, "padding": "longest in batch",
                      "files": [n for n in (*TOKENIZER_FILES, VOCAB_FILE) if (out_dir / n).is_file()]},
        "pad_id": pad_id(out_dir / TOKENIZER_FILE),
        "inputs": [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"]} for n in INPUT_NAMES],
        "outputs": outputs,
        "opset": OPSET,
    }


def write_manifest(out_dir: Path, content: dict[str, Any]) -> dict[str, Any]:
    """export.json: the format, `content`, and the sha256 of every file already in the folder
    (so it is written last), replaced atomically."""
    manifest = {"format": EXPORT_FORMAT, **content, "files": file_hashes(out_dir)}
    atomic.write_text(out_dir / MANIFEST_FILE, json.dumps(manifest, indent=2), mode=0o644)
    return manifest


# ---------------------------------------------------------------- reading


def read_manifest(out_dir: Path) -> dict[str, Any]:
    """An export folder's export.json (callers check that it exists, with their own error)."""
    return json.loads((Path(out_dir) / MANIFEST_FILE).read_text())


def verify_files(out_dir: Path) -> list[str]:
    """Files whose sha256 differs from the manifest, or that are missing or unlisted."""
    listed = read_manifest(out_dir)["files"]
    actual = file_hashes(Path(out_dir))
    return sorted(n for n in set(listed) | set(actual) if listed.get(n) != actual.get(n))
