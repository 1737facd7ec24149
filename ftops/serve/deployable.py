"""What serving takes from an export folder: one ONNX variant and its tokenizer, each held
to the sha256 its manifest records before anything is copied or loaded.

A file that changed after the export is refused with the same words wherever it is read
(the deploy's copy, the smoke test's reference), so nothing unverified is ever served.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ftops.artifacts.exported import read_manifest, sha256
from ftops.names import LABELS_FILE, MANIFEST_FILE, ONNX_FILE, TOKENIZER_FILE
from ftops.serve.runtime import ServingError

# Export statuses (ftops.export): `pass` serves with any batching; `unbatched_only` passed
# parity one text at a time but answers differently inside a batch, so it runs text by text.
SERVABLE = ("pass", "unbatched_only")


@dataclass
class Deployable:
    """What the repository needs from an export: one ONNX variant and its tokenizer, with
    the sha256 the export's manifest gives them (checked when read)."""

    onnx: Path
    tokenizer_json: Path | None  # None: the model takes raw text (the TF-IDF baseline)
    labels: list[str]
    max_length: int
    batch_invariant: bool
    variant: str
    onnx_sha256: str
    tokenizer_sha256: str | None
    pad_id: int = 0
    batch_gain: float | None = None  # export's samples/s at batch 32 over batch-1's (1000 / p50_ms)

    @classmethod
    def from_export(cls, export_dir: Path, variant: str | None = None) -> Deployable:
        """Read an export folder's manifest (export.json); default: its selected variant.
        The files served are checked against the manifest's sha256 first."""
        export_dir = Path(export_dir)
        manifest_file = export_dir / MANIFEST_FILE
        if not manifest_file.is_file():
            raise ServingError(f"{export_dir} is not an export folder (no export.json). "
                               "Run `ftops export --model ...` first.")
        manifest = read_manifest(export_dir)
        name = variant or manifest.get("selected")
        if not name:
            raise ServingError(f"{manifest_file}: no variant passed the export gate; nothing to deploy.")
        info = manifest["variants"].get(name)
        if info is None or info.get("status") not in SERVABLE:
            raise ServingError(f"{manifest_file}: variant '{name}' is not offered for deployment "
                               f"({(info or {}).get('status', 'unknown variant')}: {(info or {}).get('reason', '')}).")
        onnx = info.get("file", f"{name}/{ONNX_FILE}")
        labels = verified_bytes(export_dir / LABELS_FILE, export_sha256(export_dir, manifest, LABELS_FILE))
        # a manifest says "tokenizer": null for a graph that takes text (the baseline)
        tokenizer = export_dir / TOKENIZER_FILE if manifest.get("tokenizer", {}) is not None else None
        return cls(onnx=export_dir / onnx, tokenizer_json=tokenizer,
                   labels=json.loads(labels), max_length=int(manifest["max_length"]),
                   batch_invariant=info["status"] == "pass", variant=name,
                   onnx_sha256=checked(export_dir / onnx, export_sha256(export_dir, manifest, onnx)),
                   tokenizer_sha256=None if tokenizer is None else checked(
                       tokenizer, export_sha256(export_dir, manifest, TOKENIZER_FILE)),
                   pad_id=int(manifest.get("pad_id", 0)), batch_gain=batch_gain(info.get("figures", {})))

    @property
    def text_input(self) -> bool:
        """The ONNX graph takes the texts themselves (the baseline): no tokenizer step."""
        return self.tokenizer_json is None


def batch_gain(figures: dict) -> float | None:
    """How much faster the variant ran in batches than text by text where it was exported."""
    p50, batched = figures.get("p50_ms"), figures.get("samples_per_s")
    return batched * p50 / 1000 if p50 and batched else None


def export_sha256(export_dir: Path, manifest: dict, name: str) -> str:
    expected = manifest.get("files", {}).get(name)
    if expected is None:
        raise ServingError(f"{export_dir / MANIFEST_FILE} lists no sha256 for {name}, so the file cannot be "
                           "verified and is not deployed. Re-export the model (`ftops export --model ...`).")
    return expected


def _mismatch(path: Path, expected: str, found: str | None) -> ServingError:
    what = "is missing" if found is None else f"has sha256 {found[:12]}..., not {expected[:12]}..."
    return ServingError(f"{path} {what} as export.json records: the file changed after the export. Nothing "
                        "was loaded; the champion keeps serving. Re-export the model (`ftops export --model ...`) "
                        "and deploy the new export folder.")


def checked(path: Path, expected: str) -> str:
    """`expected` if the file's sha256 is that, else a ServingError naming the file."""
    found = sha256(path) if path.is_file() else None
    if found != expected:
        raise _mismatch(path, expected, found)
    return expected


def verified_bytes(path: Path, expected: str) -> bytes:
    """A file's content read once and held to its sha256: what is used is what was checked."""
    data = path.read_bytes() if path.is_file() else None
    found = None if data is None else hashlib.sha256(data).hexdigest()
    if found != expected:
        raise _mismatch(path, expected, found)
    return data
