"""The Triton model repository: one exported model version becomes an ensemble
`tokenizer -> classifier (-> postprocess)` with TEXT in and LABEL / PROBS out.

Naming: every deployed version gets its own model names (`<project>-v3`,
`<project>-v3-tokenizer`, `<project>-v3-classifier`), each with version directory `1`.
Triton's config.pbtxt is per model, not per version, so one ensemble cannot pin two
versions of its steps at once; separate names let the new version load beside the
champion under explicit model control, and rollback is a re-route, not a reload.

The classifier's config comes from a runtime registry (same shape for each runtime):
`python_onnxruntime` (python backend running onnxruntime; CPU hosts, this machine) and
`onnxruntime_onnx` (Triton's own backend; GPU hosts and the official containers).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ftops.config import ServingSection
from ftops.errors import FtopsError

TEMPLATES = Path(__file__).resolve().parent.parent.parent / "deploy" / "triton"
# Export statuses (ftops.export): `pass` serves with any batching; `unbatched_only` passed
# parity one text at a time but answers differently inside a batch, so it runs text by text.
SERVABLE = ("pass", "unbatched_only")


class ServingError(FtopsError):
    pass


@dataclass
class Deployable:
    """What the repository needs from an export: one ONNX variant and its tokenizer."""

    onnx: Path
    tokenizer_json: Path
    labels: list[str]
    max_length: int
    batch_invariant: bool
    variant: str
    pad_id: int = 0

    @classmethod
    def from_export(cls, export_dir: Path, variant: str | None = None) -> Deployable:
        """Read an export folder's manifest (export.json); default: its selected variant."""
        manifest_file = Path(export_dir) / "export.json"
        if not manifest_file.is_file():
            raise ServingError(f"{export_dir} is not an export folder (no export.json). "
                               "Run `ftops export --model ...` first.")
        manifest = json.loads(manifest_file.read_text())
        name = variant or manifest.get("selected")
        if not name:
            raise ServingError(f"{manifest_file}: no variant passed the export gate; nothing to deploy.")
        info = manifest["variants"].get(name)
        if info is None or info.get("status") not in SERVABLE:
            raise ServingError(f"{manifest_file}: variant '{name}' is not offered for deployment "
                               f"({(info or {}).get('status', 'unknown variant')}: {(info or {}).get('reason', '')}).")
        return cls(onnx=Path(export_dir) / info.get("file", f"{name}/model.onnx"),
                   tokenizer_json=Path(export_dir) / "tokenizer.json",
                   labels=json.loads((Path(export_dir) / "labels.json").read_text()),
                   max_length=int(manifest["max_length"]),
                   batch_invariant=info["status"] == "pass",
                   variant=name, pad_id=int(manifest.get("pad_id", 0)))


@dataclass
class ModelNames:
    ensemble: str
    tokenizer: str
    classifier: str
    postprocess: str

    @classmethod
    def for_tag(cls, project: str, tag: str) -> ModelNames:
        base = f"{project}-{tag}"
        return cls(base, f"{base}-tokenizer", f"{base}-classifier", f"{base}-postprocess")


def default_instances(cfg: ServingSection) -> tuple[int, int]:
    """(instances, threads) with instances x threads <= cores: more oversubscribes the CPU,
    measured as the slowest setting on 2 cores."""
    threads = cfg.threads or 1
    instances = cfg.instances or max(1, (os.cpu_count() or 1) // threads)
    return instances, threads


def _params(values: dict[str, object]) -> str:
    return "\n".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in values.items())


def _batching(cfg: ServingSection) -> str:
    if not cfg.batching:
        return ""
    return f"dynamic_batching {{ max_queue_delay_microseconds: {cfg.max_queue_delay_us} }}"


def tokenizer_config(name: str, cfg: ServingSection, model: Deployable) -> str:
    return f"""name: "{name}"
backend: "python"
max_batch_size: {cfg.max_batch_size}
input [ {{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [
  {{ name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] }},
  {{ name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] }},
  {{ name: "token_type_ids" data_type: TYPE_INT64 dims: [ -1 ] }}
]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
{_params({"max_length": model.max_length, "max_text_bytes": cfg.max_text_bytes, "pad_id": model.pad_id})}
"""


class PythonOnnxRuntime:
    """Python backend running onnxruntime: the classifier emits PROBS and LABEL itself."""

    name = "python_onnxruntime"
    steps = ("tokenizer", "classifier")

    def classifier_config(self, name: str, cfg: ServingSection, model: Deployable) -> str:
        instances, threads = default_instances(cfg)
        ragged = " allow_ragged_batch: true" if cfg.batching else ""
        bucket = cfg.bucket_size if model.batch_invariant else 1
        return f"""name: "{name}"
backend: "python"
max_batch_size: {cfg.max_batch_size}
input [
  {{ name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ]{ragged} }},
  {{ name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ]{ragged} }},
  {{ name: "token_type_ids" data_type: TYPE_INT64 dims: [ -1 ]{ragged} }}
]
output [
  {{ name: "PROBS" data_type: TYPE_FP32 dims: [ {len(model.labels)} ] }},
  {{ name: "LABEL" data_type: TYPE_STRING dims: [ 1 ] }}
]
instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
{_batching(cfg)}
{_params({"threads": threads, "bucket_size": bucket, "variant": model.variant})}
"""

    def files(self) -> dict[str, Path]:
        return {"classifier": TEMPLATES / "classifier" / "model.py"}


class OnnxRuntimeBackend:
    """Triton's onnxruntime backend (GPU hosts, official containers): raw logits, then a
    python postprocess step adds PROBS and LABEL. Not available in the nvidia-pytriton
    binary used on CPU hosts here."""

    name = "onnxruntime_onnx"
    steps = ("tokenizer", "classifier", "postprocess")

    def classifier_config(self, name: str, cfg: ServingSection, model: Deployable) -> str:
        instances, _ = default_instances(cfg)
        if not model.batch_invariant:
            raise ServingError(f"Variant {model.variant} is not batch-invariant; Triton's onnxruntime "
                               "backend batches across requests. Deploy a batch-invariant variant (fp32).")
        return f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {cfg.max_batch_size}
input [
  {{ name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] }},
  {{ name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] }},
  {{ name: "token_type_ids" data_type: TYPE_INT64 dims: [ -1 ] }}
]
output [ {{ name: "logits" data_type: TYPE_FP32 dims: [ {len(model.labels)} ] }} ]
instance_group [ {{ count: {instances} kind: KIND_GPU }} ]
{_batching(cfg)}
"""

    def postprocess_config(self, name: str, cfg: ServingSection, model: Deployable) -> str:
        return f"""name: "{name}"
backend: "python"
max_batch_size: {cfg.max_batch_size}
input [ {{ name: "logits" data_type: TYPE_FP32 dims: [ {len(model.labels)} ] }} ]
output [
  {{ name: "PROBS" data_type: TYPE_FP32 dims: [ {len(model.labels)} ] }},
  {{ name: "LABEL" data_type: TYPE_STRING dims: [ 1 ] }}
]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""

    def files(self) -> dict[str, Path]:
        return {"postprocess": TEMPLATES / "postprocess" / "model.py"}


RUNTIMES = {r.name: r for r in (PythonOnnxRuntime(), OnnxRuntimeBackend())}


def ensemble_config(names: ModelNames, cfg: ServingSection, model: Deployable, runtime) -> str:
    k = len(model.labels)
    tokens = """      input_map { key: "TEXT" value: "TEXT" }
      output_map { key: "input_ids" value: "ids" }
      output_map { key: "attention_mask" value: "mask" }
      output_map { key: "token_type_ids" value: "types" }"""
    feed = """      input_map { key: "input_ids" value: "ids" }
      input_map { key: "attention_mask" value: "mask" }
      input_map { key: "token_type_ids" value: "types" }"""
    if "postprocess" in runtime.steps:
        steps = f"""    {{ model_name: "{names.tokenizer}" model_version: -1
{tokens}
    }},
    {{ model_name: "{names.classifier}" model_version: -1
{feed}
      output_map {{ key: "logits" value: "logits" }}
    }},
    {{ model_name: "{names.postprocess}" model_version: -1
      input_map {{ key: "logits" value: "logits" }}
      output_map {{ key: "PROBS" value: "PROBS" }}
      output_map {{ key: "LABEL" value: "LABEL" }}
    }}"""
    else:
        steps = f"""    {{ model_name: "{names.tokenizer}" model_version: -1
{tokens}
    }},
    {{ model_name: "{names.classifier}" model_version: -1
{feed}
      output_map {{ key: "PROBS" value: "PROBS" }}
      output_map {{ key: "LABEL" value: "LABEL" }}
    }}"""
    return f"""name: "{names.ensemble}"
platform: "ensemble"
max_batch_size: {cfg.max_batch_size}
input [ {{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [
  {{ name: "LABEL" data_type: TYPE_STRING dims: [ 1 ] }},
  {{ name: "PROBS" data_type: TYPE_FP32 dims: [ {k} ] }}
]
ensemble_scheduling {{
  step [
{steps}
  ]
}}
"""


def write_version(repo: Path, project: str, tag: str, model: Deployable, cfg: ServingSection) -> ModelNames:
    """Write the models of one version; a half-written version is removed, never served."""
    runtime = RUNTIMES[cfg.runtime]
    names = ModelNames.for_tag(project, tag)
    written: list[Path] = []
    try:
        tok = _model_dir(repo, names.tokenizer, written)
        (tok / "config.pbtxt").write_text(tokenizer_config(names.tokenizer, cfg, model))
        shutil.copy(TEMPLATES / "tokenizer" / "model.py", tok / "1" / "model.py")
        shutil.copy(model.tokenizer_json, tok / "1" / "tokenizer.json")

        cls = _model_dir(repo, names.classifier, written)
        (cls / "config.pbtxt").write_text(runtime.classifier_config(names.classifier, cfg, model))
        shutil.copy(model.onnx, cls / "1" / "model.onnx")
        (cls / "1" / "labels.json").write_text(json.dumps(model.labels))
        if "classifier" in runtime.files():
            shutil.copy(runtime.files()["classifier"], cls / "1" / "model.py")

        if "postprocess" in runtime.steps:
            post = _model_dir(repo, names.postprocess, written)
            (post / "config.pbtxt").write_text(runtime.postprocess_config(names.postprocess, cfg, model))
            shutil.copy(runtime.files()["postprocess"], post / "1" / "model.py")
            (post / "1" / "labels.json").write_text(json.dumps(model.labels))

        ens = _model_dir(repo, names.ensemble, written)
        (ens / "config.pbtxt").write_text(ensemble_config(names, cfg, model, runtime))
    except BaseException:
        for folder in written:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return names


def _model_dir(repo: Path, name: str, written: list[Path]) -> Path:
    folder = repo / name
    if folder.exists():
        shutil.rmtree(folder)  # a redeploy of the same tag replaces it whole
    (folder / "1").mkdir(parents=True)
    written.append(folder)
    return folder


def remove_version(repo: Path, names: ModelNames) -> None:
    for name in (names.ensemble, names.tokenizer, names.classifier, names.postprocess):
        shutil.rmtree(repo / name, ignore_errors=True)
