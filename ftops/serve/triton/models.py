"""The models of a deployed version: their names, their config.pbtxt and the files beside them.

Naming: every deployed version gets its own model names (`<project>-v3`,
`<project>-v3-tokenizer`, `<project>-v3-classifier`), each with version directory `1`.
Triton's config.pbtxt is per model, not per version, so one ensemble cannot pin two
versions of its steps at once; separate names let the new version load beside the
champion under explicit model control, and rollback is a re-route, not a reload.

A version is an ensemble with TEXT in and LABEL / PROBS out. Its steps and the
classifier's config come from a backend registry keyed by `serving.runtime` (same shape
for each): `python_onnxruntime` (python backend running onnxruntime; CPU hosts): one step,
the classifier tokenises itself (`serving.one_hop`, the default; always for the TF-IDF
baseline, whose graph takes the text), or `tokenizer -> classifier`; `onnxruntime_onnx` (Triton's own backend; GPU hosts and the official
containers): `tokenizer -> classifier -> postprocess`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ftops.config import ServingSection
from ftops.names import LABELS_FILE, ONNX_FILE, TOKENIZER_FILE
from ftops.serve.deployable import Deployable
from ftops.serve.runtime import ServingError

TEMPLATES = Path(__file__).resolve().parents[3] / "deploy" / "triton"


@dataclass
class ModelNames:
    ensemble: str
    tokenizer: str
    classifier: str
    postprocess: str

    @classmethod
    def for_tag(cls, project: str, tag: str) -> ModelNames:
        return cls.of(f"{project}-{tag}")

    @classmethod
    def of(cls, ensemble: str) -> ModelNames:
        return cls(ensemble, f"{ensemble}-tokenizer", f"{ensemble}-classifier", f"{ensemble}-postprocess")

    def all(self) -> tuple[str, ...]:
        return (self.ensemble, self.tokenizer, self.classifier, self.postprocess)

    def unload_order(self) -> tuple[str, ...]:
        """The ensemble before the steps it uses."""
        return (self.ensemble, self.classifier, self.tokenizer, self.postprocess)


def default_instances(cfg: ServingSection) -> tuple[int, int]:
    """(instances, threads) with instances x threads <= cores: more oversubscribes the CPU
    and is slower."""
    threads = cfg.threads or 1
    instances = cfg.instances or max(1, (os.cpu_count() or 1) // threads)
    return instances, threads


def _params(values: dict[str, object]) -> str:
    return "\n".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in values.items())


def batching(cfg: ServingSection, model: Deployable, gpu: bool = False) -> tuple[bool, str]:
    """Whether the classifier gets dynamic batching, and why (written into its config).
    Measured on AVX2 cores: batches of random-length texts ran slower per text than one at
    a time (their padding costs more than batching saves), so `auto` asks the export's figures."""
    if cfg.batching != "auto":
        return bool(cfg.batching), f"serving.batching is {str(cfg.batching).lower()}"
    if gpu:
        return True, "auto: a GPU runtime"
    if not model.batch_invariant:
        return False, "auto: the variant answers text by text"
    if model.batch_gain is None:
        return False, "auto: the export has no batch figures"
    on = model.batch_gain >= cfg.batching_min_gain
    return on, (f"auto: batch 32 ran x{model.batch_gain:.2f} the texts/s of batch 1 at export "
                f"({'>=' if on else '<'} serving.batching_min_gain {cfg.batching_min_gain})")


def _batching(on: bool, cfg: ServingSection) -> str:
    return f"dynamic_batching {{ max_queue_delay_microseconds: {cfg.max_queue_delay_us} }}" if on else ""


TEXT_INPUT = '{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }'


def _text_params(cfg: ServingSection, model: Deployable) -> dict[str, object]:
    return {"max_length": model.max_length, "max_text_bytes": cfg.max_text_bytes, "pad_id": model.pad_id}


def tokenizer_config(name: str, cfg: ServingSection, model: Deployable) -> str:
    return f"""name: "{name}"
backend: "python"
max_batch_size: {cfg.max_batch_size}
input [ {TEXT_INPUT} ]
output [
  {{ name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] }},
  {{ name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] }},
  {{ name: "token_type_ids" data_type: TYPE_INT64 dims: [ -1 ] }}
]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
{_params(_text_params(cfg, model))}
"""


class PythonOnnxRuntime:
    """Python backend running onnxruntime: the classifier emits PROBS and LABEL itself."""

    name = "python_onnxruntime"

    def steps(self, cfg: ServingSection, model: Deployable) -> tuple[str, ...]:
        return ("classifier",) if cfg.one_hop or model.text_input else ("tokenizer", "classifier")

    def classifier_config(self, name: str, cfg: ServingSection, model: Deployable) -> str:
        instances, threads = default_instances(cfg)
        batched, why = batching(cfg, model)
        params = {"threads": threads, "bucket_size": cfg.bucket_size if model.batch_invariant else 1,
                  "variant": model.variant, "batching": why}
        if self.steps(cfg, model) == ("classifier",):
            inputs, params = TEXT_INPUT, {**params, **_text_params(cfg, model)}
        else:
            ragged = " allow_ragged_batch: true" if batched else ""
            inputs = ",\n  ".join(f'{{ name: "{n}" data_type: TYPE_INT64 dims: [ -1 ]{ragged} }}'
                                   for n in ("input_ids", "attention_mask", "token_type_ids"))
        return f"""name: "{name}"
backend: "python"
max_batch_size: {cfg.max_batch_size}
input [
  {inputs}
]
output [
  {{ name: "PROBS" data_type: TYPE_FP32 dims: [ {len(model.labels)} ] }},
  {{ name: "LABEL" data_type: TYPE_STRING dims: [ 1 ] }}
]
instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
{_batching(batched, cfg)}
{_params(params)}
"""

    def files(self) -> dict[str, Path]:
        return {"classifier": TEMPLATES / "classifier" / "model.py"}


class OnnxRuntimeBackend:
    """Triton's onnxruntime backend (GPU hosts, official containers): raw logits, then a
    python postprocess step adds PROBS and LABEL. Not available in the nvidia-pytriton
    binary used on CPU hosts here."""

    name = "onnxruntime_onnx"

    def steps(self, cfg: ServingSection, model: Deployable) -> tuple[str, ...]:
        return ("tokenizer", "classifier", "postprocess")

    def classifier_config(self, name: str, cfg: ServingSection, model: Deployable) -> str:
        instances, _ = default_instances(cfg)
        if model.text_input:
            raise ServingError(f"{model.onnx} takes raw text (the TF-IDF baseline); the onnxruntime_onnx "
                               "runtime feeds token ids. Serve it with serving.runtime: python_onnxruntime.")
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
{_batching(batching(cfg, model, gpu=True)[0], cfg)}
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


BACKENDS = {b.name: b for b in (PythonOnnxRuntime(), OnnxRuntimeBackend())}  # by serving.runtime


# Each step's tensor maps inside the ensemble: (input_map, output_map) as step key -> ensemble tensor.
_TOKENS = {"input_ids": "ids", "attention_mask": "mask", "token_type_ids": "types"}
_ANSWER = {"PROBS": "PROBS", "LABEL": "LABEL"}


def _step_maps(steps: tuple[str, ...]) -> list[tuple[str, dict[str, str], dict[str, str]]]:
    """(step, inputs, outputs) of each ensemble step; the classifier reads TEXT when it is first."""
    maps = []
    for step in steps:
        if step == "tokenizer":
            maps.append((step, {"TEXT": "TEXT"}, _TOKENS))
        elif step == "classifier":
            inputs = {"TEXT": "TEXT"} if steps[0] == "classifier" else _TOKENS
            maps.append((step, inputs, {"logits": "logits"} if "postprocess" in steps else _ANSWER))
        else:  # postprocess
            maps.append((step, {"logits": "logits"}, _ANSWER))
    return maps


def ensemble_config(names: ModelNames, cfg: ServingSection, model: Deployable, backend) -> str:
    k = len(model.labels)
    steps = []
    for step, inputs, outputs in _step_maps(backend.steps(cfg, model)):
        lines = [f'      input_map {{ key: "{a}" value: "{b}" }}' for a, b in inputs.items()]
        lines += [f'      output_map {{ key: "{a}" value: "{b}" }}' for a, b in outputs.items()]
        body = "\n".join(lines)
        steps.append(f'    {{ model_name: "{getattr(names, step)}" model_version: -1\n{body}\n    }}')
    steps = ",\n".join(steps)
    return f"""name: "{names.ensemble}"
platform: "ensemble"
max_batch_size: {cfg.max_batch_size}
input [ {TEXT_INPUT} ]
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


TEXT_IN = TEMPLATES / "common" / "textin.py"  # imported by the python models that take TEXT


def version_files(names: ModelNames, model: Deployable, cfg: ServingSection, backend) -> dict[str, dict]:
    """Each model folder of a version and its files: bytes to write, or (export file, its
    verified sha256) to copy."""
    labels = json.dumps(model.labels).encode()
    steps = backend.steps(cfg, model)
    tokenizer = {} if model.text_input else {f"1/{TOKENIZER_FILE}": (model.tokenizer_json, model.tokenizer_sha256)}
    text_in = TEXT_IN.read_bytes()
    models = {}
    if "tokenizer" in steps:
        models[names.tokenizer] = {"config.pbtxt": tokenizer_config(names.tokenizer, cfg, model).encode(),
                                   "1/model.py": (TEMPLATES / "tokenizer" / "model.py").read_bytes(),
                                   "1/textin.py": text_in, **tokenizer}
    models[names.classifier] = {"config.pbtxt": backend.classifier_config(names.classifier, cfg, model).encode(),
                                f"1/{ONNX_FILE}": (model.onnx, model.onnx_sha256), f"1/{LABELS_FILE}": labels}
    if "classifier" in backend.files():  # a python classifier: it imports textin.py
        models[names.classifier].update({"1/model.py": backend.files()["classifier"].read_bytes(),
                                         "1/textin.py": text_in})
        if steps[0] == "classifier":  # one hop: it tokenises the texts itself
            models[names.classifier].update(tokenizer)
    if "postprocess" in steps:
        models[names.postprocess] = {
            "config.pbtxt": backend.postprocess_config(names.postprocess, cfg, model).encode(),
            "1/model.py": backend.files()["postprocess"].read_bytes(), f"1/{LABELS_FILE}": labels}
    models[names.ensemble] = {"config.pbtxt": ensemble_config(names, cfg, model, backend).encode()}
    return models
