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

Integrity: the export's files are held to the sha256 in its manifest before anything is
copied, and each model folder gets `<name>.sha256.json` beside it: the expected hash of
every file written (the manifest's for copied export files), so the repository copy can be
checked before any later load (rollback, a restart) without the export folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ftops import atomic
from ftops.config import ServingSection
from ftops.errors import FtopsError
from ftops.export import MANIFEST_FILE, sha256

TEMPLATES = Path(__file__).resolve().parent.parent.parent / "deploy" / "triton"
# Export statuses (ftops.export): `pass` serves with any batching; `unbatched_only` passed
# parity one text at a time but answers differently inside a batch, so it runs text by text.
SERVABLE = ("pass", "unbatched_only")
HASHES = ".sha256.json"   # beside each model folder: the sha256 of every file it should hold
PENDING = ".pending"      # beside a version being deployed: pruning leaves it alone ...
PENDING_MAX_S = 6 * 3600  # ... unless the deploy died long ago (longer than any gate takes)


class ServingError(FtopsError):
    pass


@dataclass
class Deployable:
    """What the repository needs from an export: one ONNX variant and its tokenizer, with
    the sha256 the export's manifest gives them (checked when read)."""

    onnx: Path
    tokenizer_json: Path
    labels: list[str]
    max_length: int
    batch_invariant: bool
    variant: str
    onnx_sha256: str
    tokenizer_sha256: str
    pad_id: int = 0

    @classmethod
    def from_export(cls, export_dir: Path, variant: str | None = None) -> Deployable:
        """Read an export folder's manifest (export.json); default: its selected variant.
        The files served are checked against the manifest's sha256 first."""
        export_dir = Path(export_dir)
        manifest_file = export_dir / MANIFEST_FILE
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
        onnx = info.get("file", f"{name}/model.onnx")
        labels = verified_bytes(export_dir / "labels.json", export_sha256(export_dir, manifest, "labels.json"))
        return cls(onnx=export_dir / onnx, tokenizer_json=export_dir / "tokenizer.json",
                   labels=json.loads(labels), max_length=int(manifest["max_length"]),
                   batch_invariant=info["status"] == "pass", variant=name,
                   onnx_sha256=checked(export_dir / onnx, export_sha256(export_dir, manifest, onnx)),
                   tokenizer_sha256=checked(export_dir / "tokenizer.json",
                                            export_sha256(export_dir, manifest, "tokenizer.json")),
                   pad_id=int(manifest.get("pad_id", 0)))


# ---------------------------------------------------------------- integrity


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


def _hashes_file(repo: Path, name: str) -> Path:
    return repo / f"{name}{HASHES}"


def _record(repo: Path, name: str, files: dict[str, str]) -> None:
    atomic.write_text(_hashes_file(repo, name), json.dumps(
        {"model": name, "written": datetime.now(UTC).isoformat(timespec="seconds"), "files": files}, indent=2))


def _actual(folder: Path) -> dict[str, str]:
    """sha256 of the files in a model folder; __pycache__ is the python backend's own."""
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and "__pycache__" not in p.relative_to(folder).parts}


def model_problems(repo: Path, name: str) -> list[str]:
    """What in one model folder differs from its record: changed, missing or extra files."""
    record = _hashes_file(repo, name)
    if not record.is_file():
        return [f"{name}: no {record.name} (no record of what was deployed)"]
    expected = json.loads(record.read_text())["files"]
    actual = _actual(repo / name) if (repo / name).is_dir() else {}
    problems = []
    for file in sorted(set(expected) | set(actual)):
        if file not in actual:
            problems.append(f"{name}/{file} is missing")
        elif file not in expected:
            problems.append(f"{name}/{file} was not deployed")
        elif actual[file] != expected[file]:
            problems.append(f"{name}/{file} has sha256 {actual[file][:12]}..., deployed {expected[file][:12]}...")
    return problems


def version_problems(repo: Path, names: ModelNames) -> list[str]:
    """Every difference between a version's models in the repository and what was written."""
    if not (repo / names.ensemble).is_dir():
        return [f"{names.ensemble} is not in the model repository {repo}"]
    optional = names.postprocess  # only the onnxruntime_onnx runtime has one
    present = [n for n in names.all() if n != optional or (repo / n).exists() or _hashes_file(repo, n).exists()]
    return [p for n in present for p in model_problems(repo, n)]


def verify_version(repo: Path, names: ModelNames, hint: str) -> None:
    """Refuse to load a version whose repository copy differs from what was deployed."""
    problems = version_problems(repo, names)
    if problems:
        raise ServingError(f"Triton's copy of {names.ensemble} in {repo} is not what was deployed: "
                           f"{'; '.join(problems)}. {hint}")


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


def version_files(names: ModelNames, model: Deployable, cfg: ServingSection, runtime) -> dict[str, dict]:
    """Each model folder of a version and its files: bytes to write, or (export file, its
    verified sha256) to copy."""
    labels = json.dumps(model.labels).encode()
    models = {
        names.tokenizer: {"config.pbtxt": tokenizer_config(names.tokenizer, cfg, model).encode(),
                          "1/model.py": (TEMPLATES / "tokenizer" / "model.py").read_bytes(),
                          "1/tokenizer.json": (model.tokenizer_json, model.tokenizer_sha256)},
        names.classifier: {"config.pbtxt": runtime.classifier_config(names.classifier, cfg, model).encode(),
                           "1/model.onnx": (model.onnx, model.onnx_sha256), "1/labels.json": labels},
    }
    if "classifier" in runtime.files():
        models[names.classifier]["1/model.py"] = runtime.files()["classifier"].read_bytes()
    if "postprocess" in runtime.steps:
        models[names.postprocess] = {
            "config.pbtxt": runtime.postprocess_config(names.postprocess, cfg, model).encode(),
            "1/model.py": runtime.files()["postprocess"].read_bytes(), "1/labels.json": labels}
    models[names.ensemble] = {"config.pbtxt": ensemble_config(names, cfg, model, runtime).encode()}
    return models


def write_version(repo: Path, project: str, tag: str, model: Deployable, cfg: ServingSection) -> ModelNames:
    """Write the models of one version with their sha256 records, then check the copies
    against them; a half-written or mismatching version is removed, never served."""
    runtime = RUNTIMES[cfg.runtime]
    names = ModelNames.for_tag(project, tag)
    written: list[Path] = []
    try:
        for name, files in version_files(names, model, cfg, runtime).items():
            folder = _model_dir(repo, name, written)
            _record(repo, name, {rel: _put(folder / rel, source) for rel, source in files.items()})
        verify_version(repo, names, "It was removed, nothing was loaded; the champion keeps serving. Deploy "
                       f"again; if it repeats, check the disk of {repo}.")
    except BaseException:
        for folder in written:
            shutil.rmtree(folder, ignore_errors=True)
            _hashes_file(repo, folder.name).unlink(missing_ok=True)
        raise
    return names


def _put(target: Path, source: bytes | tuple[Path, str]) -> str:
    """Write or copy one file; the sha256 it must have in the repository."""
    if isinstance(source, bytes):
        target.write_bytes(source)
        return hashlib.sha256(source).hexdigest()
    path, expected = source
    shutil.copyfile(path, target)
    return expected


def _model_dir(repo: Path, name: str, written: list[Path]) -> Path:
    folder = repo / name
    if folder.exists():
        shutil.rmtree(folder)  # a redeploy of the same tag replaces it whole
    (folder / "1").mkdir(parents=True)
    written.append(folder)
    return folder


def remove_version(repo: Path, names: ModelNames) -> None:
    for name in names.all():
        shutil.rmtree(repo / name, ignore_errors=True)
        _hashes_file(repo, name).unlink(missing_ok=True)
    (repo / f"{names.ensemble}{PENDING}").unlink(missing_ok=True)


# ---------------------------------------------------------------- what the repository holds


def versions(repo: Path, project: str) -> dict[str, ModelNames]:
    """This project's versions in a (possibly shared) repository, by tag (`v3`, `x1a2b3c4d`):
    folders and records named `<project>-<tag>[-step]`; other projects' are not matched."""
    pattern = re.compile(rf"^{re.escape(project)}-(v[0-9A-Za-z_]+|x[0-9a-f]{{8}})"
                         rf"(?:-tokenizer|-classifier|-postprocess)?(?:{re.escape(HASHES)}|{re.escape(PENDING)})?$")
    found = {}
    for entry in repo.iterdir() if repo.is_dir() else ():
        match = pattern.match(entry.name)
        if match:
            found[match.group(1)] = ModelNames.for_tag(project, match.group(1))
    return found


def mark_pending(repo: Path, names: ModelNames) -> None:
    atomic.write_text(repo / f"{names.ensemble}{PENDING}", f"{os.getpid()}\n")


def clear_pending(repo: Path, names: ModelNames) -> None:
    (repo / f"{names.ensemble}{PENDING}").unlink(missing_ok=True)


def pending(repo: Path, names: ModelNames) -> bool:
    """A deploy of this version is under way (or died less than PENDING_MAX_S ago)."""
    try:
        return time.time() - (repo / f"{names.ensemble}{PENDING}").stat().st_mtime < PENDING_MAX_S
    except FileNotFoundError:
        return False
