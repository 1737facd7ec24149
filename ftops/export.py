"""The export stage: merge adapters, export to ONNX, build optimised / quantised variants,
hold every variant to a parity gate against the PyTorch model, and write a manifest that
serving reads.

An export folder (what the serving stage reads; paths relative to it):

    export.json            manifest: sha256 of every file, variants with figures, status and
                           reason, `selected`, max_length, inputs/outputs, source info
    labels.json            label names in id order (column i of `logits` is labels[i])
    tokenizer.json         fast tokenizer, truncation = max_length, pads to the batch's longest
    tokenizer_config.json  (+ vocab.txt when the model folder has one)
    model_card.md          source, labels, variants and their figures
    <variant>/model.onnx   fp32, optimized, int8_dynamic, int8_static, fp16 (bf16 if the EP has it)

Every model.onnx takes input_ids / attention_mask / token_type_ids (int64, [batch, sequence])
and returns `logits` (float32, [batch, labels]). A variant's status is `pass` (batch-
invariant: serve it with any batching), `unbatched_only` (parity holds one text per call,
but its answers change with the batch it is in: serve it without batching), `fail` (not
offered; the reason says which rule), `error` (it did not build) or `skipped` (the host
cannot run it).

The parity reference is the PyTorch model as trained (adapters unmerged, its own tokenizer),
and the variants are fed by the EXPORTED tokenizer.json, so the gate covers the merge, the
export and the tokenizer file that serving will use.

Writing: the folder is built as `.<name>.<pid>-<id>.partial` beside the final one (manifest
last, every file fsynced) and renamed into place only when complete, so a crash or a full
disk never leaves a folder with an export.json that is not a finished export; the partial
folder is removed on failure (and, after a kill, by the next export into the same parent).

Determinism: re-exporting the same model gives a byte-identical fp32 file (the legacy
exporter names nodes and initializers deterministically, and merged LoRA weights are a
deterministic sum); tests check it. Quantised files also depend on the calibration texts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ftops import atomic
from ftops.config import GatesSection
from ftops.errors import FtopsError

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "logits"
OPSET = 17
FORMAT = "ftops.export/1"
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "export.json"
LABELS_FILE = "labels.json"
CARD_FILE = "model_card.md"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
VOCAB_FILE = "vocab.txt"

PASS, UNBATCHED, FAIL, ERROR, SKIPPED = "pass", "unbatched_only", "fail", "error", "skipped"
UNSUPPORTED = "not supported by this host's execution provider"
PROVIDERS = ["CPUExecutionProvider"]

BATCH_SIZE = 32          # parity batches and the batch-32 throughput figure
SPEED_TEXTS = 200        # batch-1 latency texts (as decide.LATENCY_TEXTS)
INVARIANCE_TEXTS = 64    # texts run alone and inside one mixed-length batch
WARMUP = 10
PARTIAL = ".partial"      # suffix of an export folder being written
LOW_SPACE_BYTES = 1 << 20  # a failure with less free space than this is taken for a full disk


class ExportError(FtopsError):
    pass


class Unsupported(Exception):
    """A variant this host cannot run: recorded as skipped, never faked."""


# ---------------------------------------------------------------- results


@dataclass
class Rule:
    name: str
    value: float
    threshold: float
    passed: bool
    setting: str = ""    # the gates.* key holding the threshold
    batch: bool = False  # a batch-invariance rule: failing only these gives unbatched_only


@dataclass
class VariantReport:
    name: str
    status: str
    reason: str = ""
    file: str | None = None  # relative to the export folder
    exact: bool = True       # held to parity_atol; else to label agreement + F1 loss
    figures: dict[str, float] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def batch_invariant(self) -> bool | None:
        batch = [r for r in self.rules if r.batch]
        return all(r.passed for r in batch) if batch else None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "batch_invariant": self.batch_invariant}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VariantReport:
        data = {k: v for k, v in data.items() if k != "batch_invariant"}
        return cls(**{**data, "rules": [Rule(**r) for r in data.get("rules", [])]})


@dataclass
class ExportResult:
    out_dir: Path
    labels: list[str]
    max_length: int
    variants: dict[str, VariantReport]
    selected: str | None
    selection_reason: str
    reference: dict[str, float]  # the PyTorch model's figures on the parity texts
    source: dict[str, Any]

    def model_path(self, variant: str | None = None) -> Path:
        """model.onnx of `variant` (default: the selected one)."""
        name = variant or self.selected
        report = self.variants.get(name) if name else None
        if report is None or report.file is None:
            raise ExportError(f"Export {self.out_dir} has no built variant '{name}'. Built: "
                              f"{', '.join(v.name for v in self.variants.values() if v.file) or 'none'}.")
        return self.out_dir / report.file


# ---------------------------------------------------------------- the stage


@dataclass
class Build:
    """What a variant builder may use; `optimized` is set once that variant has built."""

    fp32: Path
    hf_config: Any
    calibration: list[dict[str, np.ndarray]]
    optimized: Path | None = None


@dataclass(frozen=True)
class Variant:
    name: str
    build: Callable[[Build, Path], list[str]] | None  # writes the target; returns notes (fp32: None)
    exact: bool
    description: str


def export_model(source_folder: Path, out_dir: Path, calibration_texts: list[str], max_length: int, *,
                 parity_texts: list[str], parity_labels: Sequence[int], gates: GatesSection | None = None,
                 source: dict[str, Any] | None = None, variants: Sequence[str] | None = None,
                 run_id: str | None = None, threads: int | None = None,
                 progress: Callable[[str], None] | None = None) -> ExportResult:
    """Export a trained candidate folder to ONNX variants, gate each against the PyTorch model
    on `parity_texts` (true label ids `parity_labels`), time them, select one, write the
    manifest, and log to MLflow when a run is active or `run_id` is given."""
    gates = gates or GatesSection()
    names = list(variants or VARIANTS)
    out_dir = Path(out_dir)
    check_request(names, parity_texts, parity_labels, out_dir)
    with staged(out_dir) as work:
        result = build_export(Path(source_folder), work, calibration_texts, max_length, parity_texts, parity_labels,
                              gates, dict(source or {}), names, threads or os.cpu_count() or 1,
                              progress or (lambda line: None))
    result.out_dir = out_dir
    log_to_mlflow(result, run_id)
    return result


def build_export(source_folder: Path, work: Path, calibration_texts: list[str], max_length: int,
                 parity_texts: list[str], parity_labels: Sequence[int], gates: GatesSection, source: dict[str, Any],
                 names: list[str], threads: int, say: Callable[[str], None]) -> ExportResult:
    """Everything of an export written into `work`, the manifest last."""
    model, tokenizer, labels = load_source(source_folder)
    write_tokenizer(tokenizer, source_folder, work, max_length)
    (work / LABELS_FILE).write_text(json.dumps(labels))
    # The reference is the model as trained (adapters unmerged), so the gate covers the merge too.
    reference = make_reference(model, tokenizer, work / "tokenizer.json", parity_texts,
                               parity_labels, len(labels), max_length)
    calibration = encode_each(work / "tokenizer.json", calibration_texts)
    reports = build_variants(prepare_for_onnx(model), tokenizer, work, names, calibration, say)
    del model  # the reference logits are all the gate needs from here on

    gate_and_time(reports, work, reference, gates, threads, say)
    selected, why = select(reports, gates)
    say(f"selected: {selected or 'none'} ({why})")
    result = ExportResult(work, labels, max_length, reports, selected, why,
                          {"macro_f1": reference.macro_f1, "n_texts": len(parity_texts)}, source)
    write_model_card(result)
    write_manifest(result, gates, threads)
    return result


@contextmanager
def staged(out_dir: Path):
    """A fresh folder beside `out_dir` to write the export into, renamed to `out_dir` when the
    block completes; on any failure it is removed, and a full disk becomes an ExportError that
    names the folder."""
    parent = out_dir.parent
    work = parent / f".{out_dir.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{PARTIAL}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned(parent)
        if out_dir.is_dir() and any(out_dir.iterdir()):
            raise ExportError(f"{out_dir} exists and is not empty, but holds no finished export ({MANIFEST_FILE}). "
                              "Choose a new folder, or delete that one first.")
        work.mkdir()
        yield work
        sync_tree(work)
        os.rename(work, out_dir)  # replaces an empty out_dir; readers see no export or a finished one
    except BaseException as exc:
        full = disk_full(exc, parent)
        shutil.rmtree(work, ignore_errors=True)
        if full:
            free = shutil.disk_usage(parent).free if parent.exists() else 0
            raise ExportError(
                f"No space left on the device holding {parent} while exporting to {out_dir} ({free / 2**20:.1f} MiB "
                f"free once the partial export was removed). Nothing was left that looks like an export; free space "
                f"there (e.g. old export folders no route serves) or export to another folder. "
                f"({str(exc).strip()[:200]})") from exc
        raise


def remove_abandoned(parent: Path) -> list[Path]:
    """Partial export folders whose writer is gone (killed mid-export); the ones removed."""
    import psutil

    removed = []
    for folder in parent.glob(f".*{PARTIAL}"):
        pid = folder.name.removesuffix(PARTIAL).rsplit(".", 1)[-1].split("-", 1)[0]
        if folder.is_dir() and pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def sync_tree(folder: Path) -> None:
    """fsync every file and folder, so the rename publishes bytes that are on disk."""
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True) + [folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def disk_full(exc: BaseException, folder: Path) -> bool:
    """ENOSPC / EDQUOT in the chain, a library's text for it (torch and onnx raise RuntimeError),
    or a failure that left almost no space on the folder's device."""
    if atomic.disk_full(exc):
        return True
    if isinstance(exc, (KeyboardInterrupt, ExportError)):
        return False
    try:
        return shutil.disk_usage(folder).free < LOW_SPACE_BYTES
    except OSError:
        return False


def check_request(names: list[str], parity_texts: list[str], parity_labels: Sequence[int], out_dir: Path) -> None:
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or "fp32" not in names:
        raise ExportError(f"Unknown or missing export variants {unknown or ['fp32 (required)']}; "
                          f"known: {', '.join(VARIANTS)}, and fp32 is always built (the others derive from it).")
    if len(parity_texts) != len(parity_labels) or not parity_texts:
        raise ExportError(f"The parity gate needs texts with their true label ids: got {len(parity_texts)} "
                          f"texts and {len(parity_labels)} labels. Pass the held-out test split.")
    if (out_dir / MANIFEST_FILE).exists():
        raise ExportError(f"{out_dir} already holds an export ({MANIFEST_FILE}). Choose a new folder "
                          "(exports are immutable once written) or delete that one first.")


def gate_and_time(reports: dict[str, VariantReport], out_dir: Path, reference: Reference, gates: GatesSection,
                  threads: int, say: Callable[[str], None]) -> None:
    """The parity gate for every built variant, then their speed, measured interleaved."""
    for report in reports.values():
        if report.file:
            gate_variant(report, out_dir / report.file, reference, gates, threads)
            say(f"{report.name}: {report.status}" + (f" ({report.reason})" if report.reason else ""))
    runnable = {n: r for n, r in reports.items() if r.file and r.status != ERROR}
    speed = measure_speed({n: ort_runner(out_dir / r.file, threads) for n, r in runnable.items()},
                          reference.speed_singles, reference.speed_batches)
    for name, figures in speed.items():
        reports[name].figures.update(figures)


# ---------------------------------------------------------------- model and tokenizer


def load_source(source_folder: Path):
    """(model, tokenizer, labels) of a trained candidate folder, as trained, in eval mode;
    prompt-tuning models are refused here, before anything is written."""
    from ftops.train import load_trained

    if not (source_folder / "model" / "ftops.json").is_file():
        raise ExportError(f"{source_folder} is not a trained candidate folder (no model/ftops.json). "
                          "Pass the folder `ftops train` wrote for a candidate, or a registry alias/version.")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a "Loading weights" bar per load is noise in CLI output
    model, tokenizer, labels = load_trained(source_folder)
    config = peft_config(model)
    if config is not None and config.is_prompt_learning:
        raise ExportError(
            f"The model in {source_folder} is a prompt-tuning model ({config.peft_type.value}): peft "
            "prepends its learned soft prompt to every input at run time, and that cannot be merged "
            "into the weights, so prompt-tuning models are not exportable to ONNX. Export a candidate "
            "trained with full, freeze, llrd, lora, ia3 or bottleneck, or serve this one with PyTorch.")
    return model.float().eval(), tokenizer, labels


def peft_config(model):
    """The active adapter's peft config, or None for a plain model."""
    try:
        from peft import PeftModel
    except ImportError:  # no peft: the folder cannot hold an adapter model either
        return None
    return model.peft_config[model.active_adapter] if isinstance(model, PeftModel) else None


def prepare_for_onnx(model):
    """LoRA / IA3 adapters merged into plain weights (merge_and_unload), and eager attention:
    onnxruntime's fusion recognises the eager attention graph, not the SDPA one."""
    if peft_config(model) is not None:
        model = model.merge_and_unload()
    model.set_attn_implementation("eager")
    return model.eval()


def load_for_export(source_folder: Path):
    """(model ready for torch.onnx.export, tokenizer, labels)."""
    model, tokenizer, labels = load_source(source_folder)
    return prepare_for_onnx(model), tokenizer, labels


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
    vocab = source_folder / "model" / VOCAB_FILE
    if vocab.is_file():
        shutil.copy(vocab, out_dir / VOCAB_FILE)


def export_fp32(model, tokenizer, target: Path) -> None:
    """torch.onnx.export with the legacy TorchScript exporter (dynamo=False). Measured here on
    MiniLM-L6: 0.8-1.1 s vs 4-6 s for the dynamo exporter, parity ~4e-8 for both, both
    byte-deterministic; dynamo also needs onnxscript and silently moves opset 17 to 18."""
    import warnings

    import torch

    sample = tokenizer(["a short text", "a somewhat longer text in the second row"], padding=True,
                       return_tensors="pt")
    sample.setdefault("token_type_ids", torch.zeros_like(sample["input_ids"]))
    dynamic = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES} | {OUTPUT_NAME: {0: "batch"}}
    target.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about python-side shape checks
        torch.onnx.export(model, tuple(sample[n] for n in INPUT_NAMES), str(target), dynamo=False,
                          input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                          dynamic_axes=dynamic, opset_version=OPSET, do_constant_folding=True)


# ---------------------------------------------------------------- variants


def build_optimized(build: Build, target: Path) -> list[str]:
    """onnxruntime's transformer fusions (attention, embed/skip layer norm, bias-gelu),
    written offline so the fused graph is what is served and hashed."""
    from onnxruntime.transformers.optimizer import optimize_model

    cfg = build.hf_config
    optimized = optimize_model(str(build.fp32), model_type="bert", num_heads=cfg.num_attention_heads,
                               hidden_size=cfg.hidden_size, opt_level=0)
    optimized.save_model_to_file(str(target))
    build.optimized = target
    fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    return ["fused: " + ", ".join(f"{k} x{v}" for k, v in fused.items())] if fused else ["nothing fused"]


def build_int8_dynamic(build: Build, target: Path) -> list[str]:
    """Weights int8 per channel, activations quantised at run time. On the un-fused graph:
    quantize_dynamic fails on the fused one (shape inference cannot type the fused ops)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(build.fp32), str(target), per_channel=True, weight_type=QuantType.QInt8)
    return ["activation scales computed per call over the whole batch"]


def build_int8_static(build: Build, target: Path) -> list[str]:
    """QDQ int8 with activation scales fixed by calibration (so a text's answer does not depend
    on its batch), weights per channel. Only weight MatMuls are quantised (MatMulConstBOnly),
    and the feed-forward output MatMuls stay fp32: their inputs (after GELU) have outlier
    ranges that one static scale cannot cover. Measured on a briefly fine-tuned MiniLM, 500
    tweets: all quantised 0.93 label agreement / -3.9 pt macro-F1 vs FFN outputs in fp32
    0.99 / +0.9 pt, at 2.8 vs 3.9 ms batch-1 p50 (fp32 5.9 ms, 1 thread). Keeping any single
    layer's FFN output in fp32 recovers little (0.93-0.95), and Percentile / Entropy
    calibration did not help (0.91-0.94)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not build.calibration:
        raise ExportError("int8_static needs calibration texts; none were given.")
    cfg = build.hf_config
    keep_fp32 = ffn_output_matmuls(build.fp32, cfg.intermediate_size, cfg.hidden_size)
    quantize_static(str(build.fp32), str(target), CalibrationReader(build.calibration),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=keep_fp32,
                    calibrate_method=CalibrationMethod.MinMax, extra_options={"MatMulConstBOnly": True},
                    calibration_providers=PROVIDERS)
    return [f"calibrated on {len(build.calibration)} texts (MinMax)",
            f"{len(keep_fp32)} feed-forward output MatMuls kept in fp32"]


def ffn_output_matmuls(path: Path, intermediate: int, hidden: int) -> list[str]:
    """Names of the MatMuls whose weight is [intermediate, hidden]: the second feed-forward
    projection of each encoder layer, found by shape so that any BERT-like naming works."""
    import onnx

    model = onnx.load(str(path))
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and shapes.get(n.input[1]) == [intermediate, hidden]]


def build_fp16(build: Build, target: Path) -> list[str]:
    """fp16 weights and compute (inputs/outputs stay int64/fp32), from the fused graph when
    it built. onnxruntime inserts Casts around ops without fp16 CPU kernels: noted."""
    import onnx
    from onnx import TensorProto
    from onnxruntime.transformers.onnx_model import OnnxModel

    probe_precision(TensorProto.FLOAT16, "float16")
    model = OnnxModel(onnx.load(str(build.optimized or build.fp32)))
    model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(target))
    return [f"built from {'optimized' if build.optimized else 'fp32'}",
            f"onnxruntime added {inserted_casts(target)} Cast nodes (ops without fp16 CPU kernels run in fp32)"]


def build_bf16(build: Build, target: Path) -> list[str]:
    """bf16 only where the execution provider has bf16 kernels; onnxruntime's CPU provider
    has none for MatMul, so the probe skips it here."""
    from onnx import TensorProto

    probe_precision(TensorProto.BFLOAT16, "bfloat16")
    raise ExportError("this execution provider has bf16 MatMul kernels, but ftops has no bf16 graph "
                      "converter yet (onnxruntime's converter is fp16-only)")


def probe_precision(elem_type: int, label: str) -> None:
    """Create a one-MatMul session in `elem_type` on the CPU provider: Unsupported if it has
    no kernel. This is the honest check; nothing is emulated to make it pass."""
    import onnxruntime as ort
    from onnx import helper

    value = [helper.make_tensor_value_info(n, elem_type, [2, 2]) for n in ("a", "b", "y")]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "probe", value[:2], value[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    try:
        ort.InferenceSession(model.SerializeToString(), providers=PROVIDERS)
    except Exception as exc:  # onnxruntime raises its own NOT_IMPLEMENTED exception type
        kind = "has no" if "NOT_IMPLEMENTED" in str(exc) else f"failed ({str(exc).strip()[:120]}) on a"
        raise Unsupported(f"{UNSUPPORTED}: {PROVIDERS[0]} {kind} {label} MatMul kernel") from None


def inserted_casts(path: Path) -> int:
    """Cast nodes onnxruntime adds when it loads the model (its optimised graph vs the file)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3  # the "hardware specific optimizations" warning is expected
        ort.InferenceSession(str(path), options, providers=PROVIDERS)
        after = onnx.load(options.optimized_model_filepath, load_external_data=False)
    before = onnx.load(str(path), load_external_data=False)
    count = lambda m: sum(n.op_type == "Cast" for n in m.graph.node)  # noqa: E731
    return count(after) - count(before)


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("fp32", None, True, "plain export from PyTorch (build_variants does it first)"),
    Variant("optimized", build_optimized, True, "fp32 with onnxruntime transformer fusions"),
    Variant("int8_dynamic", build_int8_dynamic, False, "int8 weights per channel, dynamic activations"),
    Variant("int8_static", build_int8_static, False, "int8 QDQ, calibrated activations, per-channel weights"),
    Variant("fp16", build_fp16, False, "fp16 weights and compute"),
    Variant("bf16", build_bf16, False, "bf16 weights and compute"),
)}


def build_variants(model, tokenizer, out_dir: Path, names: list[str], calibration, say) -> dict[str, VariantReport]:
    """fp32 first (every other variant derives from it; its failure is raised), then the rest
    in order; a variant that fails to build is recorded with the exception, not raised."""
    fp32 = out_dir / "fp32" / MODEL_FILE
    started = time.perf_counter()
    export_fp32(model, tokenizer, fp32)
    build = Build(fp32, model.config, calibration)
    reports = {"fp32": built_report(VARIANTS["fp32"], out_dir, fp32, time.perf_counter() - started, [])}
    say(f"fp32: exported in {reports['fp32'].figures['build_s']:.1f} s, {reports['fp32'].figures['size_mb']:.1f} MB")
    for name in names:
        if name == "fp32":
            continue
        variant, target = VARIANTS[name], out_dir / name / MODEL_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            with quiet_root_logger():
                notes = variant.build(build, target)
        except Unsupported as exc:
            reports[name] = VariantReport(name, SKIPPED, str(exc), exact=variant.exact)
        except Exception as exc:  # recorded, not raised: one broken variant must not sink the export
            if disk_full(exc, out_dir):
                raise  # ... but a full disk sinks every variant after it: the export fails as a whole
            reports[name] = VariantReport(name, ERROR, f"{type(exc).__name__}: {exc}"[:500], exact=variant.exact)
        else:
            reports[name] = built_report(variant, out_dir, target, time.perf_counter() - started, notes)
        if not reports[name].file:
            shutil.rmtree(target.parent, ignore_errors=True)
        report = reports[name]
        say(f"{name}: " + (f"built in {report.figures['build_s']:.1f} s, {report.figures['size_mb']:.1f} MB"
                           if report.file else f"{report.status}: {report.reason}"))
    return reports


@contextmanager
def quiet_root_logger():
    """onnxruntime.quantization logs advice ("consider pre-processing", per-channel axis notes)
    on the root logger for every model; it would bury the progress lines."""
    import logging

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def built_report(variant: Variant, out_dir: Path, target: Path, seconds: float, notes: list[str]) -> VariantReport:
    return VariantReport(variant.name, FAIL, "not gated yet", str(target.relative_to(out_dir)), variant.exact,
                         {"size_mb": target.stat().st_size / 1e6, "build_s": seconds}, notes=notes)


class CalibrationReader:
    """onnxruntime's CalibrationDataReader protocol over pre-tokenised single texts (no
    padding, so pad tokens do not widen the activation ranges)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.feeds = feeds
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self.feeds)


# ---------------------------------------------------------------- encoding


def load_tokenizer_json(path: Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def to_feed(encodings) -> dict[str, np.ndarray]:
    """tokenizers encodings (already padded to one length) as the three int64 inputs."""
    return {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64)}


def encode_batch(tokenizer_json: Path | Any, texts: list[str]) -> dict[str, np.ndarray]:
    tok = load_tokenizer_json(tokenizer_json) if isinstance(tokenizer_json, Path) else tokenizer_json
    return to_feed(tok.encode_batch(texts))


def encode_each(tokenizer_json: Path, texts: list[str]) -> list[dict[str, np.ndarray]]:
    tok = load_tokenizer_json(tokenizer_json)
    return [to_feed([tok.encode(t)]) for t in texts]


# ---------------------------------------------------------------- the parity gate


@dataclass
class Reference:
    """The PyTorch model's answers that every variant is held to, and the feeds (from the
    EXPORTED tokenizer.json, as serving will encode) that produce them."""

    batches: list[dict[str, np.ndarray]]  # length-sorted batches of the parity texts
    order: np.ndarray                     # text index of each row of the concatenated batches
    logits: np.ndarray                    # PyTorch fp32 logits, in text order
    y_true: np.ndarray
    macro_f1: float
    singles: list[dict[str, np.ndarray]]  # INVARIANCE_TEXTS texts, one per feed
    mixed: dict[str, np.ndarray]          # the same texts as one mixed-length batch
    speed_singles: list[dict[str, np.ndarray]]
    speed_batches: list[dict[str, np.ndarray]]


def make_reference(model, tokenizer, tokenizer_json: Path, texts: list[str], labels: Sequence[int],
                   n_labels: int, max_length: int) -> Reference:
    """PyTorch logits on length-sorted batches; the exported tokenizer must encode every text
    exactly as the model's own tokenizer does, else the export is broken (ExportError)."""
    import torch

    tok = load_tokenizer_json(tokenizer_json)
    order = np.argsort([len(t) for t in texts], kind="stable")
    batches, logits = [], np.zeros((len(texts), n_labels), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), BATCH_SIZE):
            idx = order[start:start + BATCH_SIZE]
            chunk = [texts[i] for i in idx]
            feed = encode_batch(tok, chunk)
            check_tokenizer(tokenizer, chunk, feed, max_length, tokenizer_json)
            batches.append(feed)
            logits[idx] = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.float().numpy()
    y_true = np.asarray(labels, dtype=int)
    few = texts[:INVARIANCE_TEXTS]
    timed = texts[:SPEED_TEXTS]
    return Reference(batches, order, logits, y_true, macro_f1(y_true, logits.argmax(-1), n_labels),
                     [encode_batch(tok, [t]) for t in few], encode_batch(tok, few),
                     [encode_batch(tok, [t]) for t in timed],
                     [encode_batch(tok, timed[i:i + BATCH_SIZE]) for i in range(0, len(timed), BATCH_SIZE)])


def check_tokenizer(tokenizer, texts: list[str], feed: dict[str, np.ndarray], max_length: int, path: Path) -> None:
    expected = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    if not np.array_equal(expected["input_ids"], feed["input_ids"]):
        raise ExportError(f"The exported {path} encodes some texts differently from the model's own "
                          f"tokenizer (e.g. {texts[0][:60]!r}), so serving would not see what the model was "
                          "gated on. This is a bug in the export stage; please report it with the model folder.")


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, labels=list(range(n_labels)), average="macro", zero_division=0))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def make_session(path: Path, threads: int):
    """One onnxruntime CPU session: intra-op threads as given, one inter-op thread.
    Spinning is off: when variants are timed interleaved, a spinning pool of the variant
    just run steals the cores of the one being timed."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=PROVIDERS)


def ort_runner(path: Path, threads: int) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    session = make_session(path, threads)
    return lambda feed: session.run([OUTPUT_NAME], feed)[0]


def gate_variant(report: VariantReport, path: Path, ref: Reference, gates: GatesSection, threads: int) -> VariantReport:
    """Run one built variant on the parity texts and set its figures, rules and status."""
    try:
        run = ort_runner(path, threads)
        logits = np.zeros_like(ref.logits)
        rows = np.concatenate([run(feed) for feed in ref.batches]).astype(np.float32)
        logits[ref.order] = rows
        alone = np.concatenate([run(feed) for feed in ref.singles])
        together = run(ref.mixed)
    except Exception as exc:  # a file onnxruntime cannot load or run is a failed variant
        report.status, report.reason = ERROR, f"onnxruntime could not run it: {type(exc).__name__}: {exc}"[:500]
        return report
    n_labels = ref.logits.shape[1]
    variant_f1 = macro_f1(ref.y_true, logits.argmax(-1), n_labels)
    report.figures.update({
        "max_abs_diff": float(np.abs(logits - ref.logits).max()),
        "agreement": float((logits.argmax(-1) == ref.logits.argmax(-1)).mean()),
        "macro_f1": variant_f1,
        "delta_macro_f1": variant_f1 - ref.macro_f1,
        "batch_label_agreement": float((alone.argmax(-1) == together.argmax(-1)).mean()),
        "batch_max_prob_diff": float(np.abs(softmax(alone) - softmax(together)).max()),
    })
    report.rules = parity_rules(report, gates)
    report.status, report.reason = verdict(report.rules)
    return report


def parity_rules(report: VariantReport, gates: GatesSection) -> list[Rule]:
    f = report.figures
    if report.exact:
        rules = [Rule("max_abs_diff", f["max_abs_diff"], gates.parity_atol,
                      f["max_abs_diff"] <= gates.parity_atol, "parity_atol")]
    else:
        rules = [Rule("agreement", f["agreement"], gates.parity_min_agreement,
                      f["agreement"] >= gates.parity_min_agreement, "parity_min_agreement"),
                 Rule("delta_macro_f1", f["delta_macro_f1"], -gates.max_f1_loss,
                      f["delta_macro_f1"] >= -gates.max_f1_loss, "max_f1_loss")]
    return rules + [
        Rule("batch_label_agreement", f["batch_label_agreement"], gates.batch_label_agreement,
             f["batch_label_agreement"] >= gates.batch_label_agreement, "batch_label_agreement", batch=True),
        Rule("batch_max_prob_diff", f["batch_max_prob_diff"], gates.batch_prob_atol,
             f["batch_max_prob_diff"] <= gates.batch_prob_atol, "batch_prob_atol", batch=True),
    ]


def verdict(rules: list[Rule]) -> tuple[str, str]:
    """fail when a parity rule fails; unbatched_only when only batch invariance fails."""
    failed = [r for r in rules if not r.passed]
    reason = "; ".join(f"{r.name} {r.value:.4g} {'below minimum' if r.value < r.threshold else 'above maximum'} "
                       f"{r.threshold:.4g} (gates.{r.setting})" for r in failed)
    if any(not r.batch for r in failed):
        return FAIL, reason
    if failed:
        return UNBATCHED, f"{reason}: answers change with the batch, serve one text per call"
    return PASS, ""


# ---------------------------------------------------------------- speed


def measure_speed(runners: dict[str, Callable[[dict[str, np.ndarray]], Any]], singles: list[dict[str, np.ndarray]],
                  batches: list[dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """Batch-1 p50/p99 ms and batch-32 samples/s of each runner on the same feeds, interleaved
    (every feed goes through every runner in turn) so machine noise hits all alike."""
    for feed in singles[:WARMUP]:
        for run in runners.values():
            run(feed)
    timings: dict[str, list[float]] = {name: [] for name in runners}
    for feed in singles:
        for name, run in runners.items():
            started = time.perf_counter()
            run(feed)
            timings[name].append(1000 * (time.perf_counter() - started))
    busy = dict.fromkeys(runners, 0.0)
    for feed in batches:
        for name, run in runners.items():
            started = time.perf_counter()
            run(feed)
            busy[name] += time.perf_counter() - started
    rows = sum(len(f["input_ids"]) for f in batches)
    return {name: {"p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99)),
                   "samples_per_s": rows / busy[name] if busy[name] else 0.0} for name, t in timings.items()}


# ---------------------------------------------------------------- selection


def select(reports: dict[str, VariantReport], gates: GatesSection) -> tuple[str | None, str]:
    """Default objective: the fastest batch-1 p50 among batch-invariant passing variants
    whose macro-F1 loss is within gates.max_f1_loss."""
    eligible = [r for r in reports.values()
                if r.status == PASS and r.figures.get("delta_macro_f1", -1.0) >= -gates.max_f1_loss]
    if not eligible:
        return None, "no variant passed the parity gate with batch invariance: nothing is offered for serving"
    best = min(eligible, key=lambda r: r.figures.get("p50_ms", float("inf")))
    why = (f"fastest batch-1 p50 ({best.figures['p50_ms']:.2f} ms) among passing variants "
           f"({', '.join(r.name for r in eligible)}) with macro-F1 loss <= {gates.max_f1_loss}")
    faster = [r for r in reports.values() if r.status == UNBATCHED
              and r.figures.get("p50_ms", float("inf")) < best.figures["p50_ms"]]
    if faster:
        why += "; faster but unbatched_only: " + ", ".join(f"{r.name} ({r.figures['p50_ms']:.2f} ms)" for r in faster)
    return best.name, why


# ---------------------------------------------------------------- manifest, card, MLflow


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


def write_manifest(result: ExportResult, gates: GatesSection, threads: int) -> dict[str, Any]:
    import onnx
    import onnxruntime
    import torch

    from ftops.train import cpu_flags

    manifest = {
        "format": FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": result.source,
        "labels": result.labels,
        "labels_file": LABELS_FILE,
        "max_length": result.max_length,
        "tokenizer": {"file": "tokenizer.json", "truncation": result.max_length, "padding": "longest in batch",
                      "files": [n for n in (*TOKENIZER_FILES, VOCAB_FILE) if (result.out_dir / n).is_file()]},
        "pad_id": pad_id(result.out_dir / "tokenizer.json"),
        "inputs": [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"]} for n in INPUT_NAMES],
        "outputs": [{"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", len(result.labels)]}],
        "opset": OPSET,
        "selected": result.selected,
        "selected_file": result.variants[result.selected].file if result.selected else None,
        "selection": {"objective": "fastest batch-1 p50 with macro-F1 loss <= gates.max_f1_loss, batch-invariant",
                      "reason": result.selection_reason},
        "reference": result.reference,
        "gates": {k: getattr(gates, k) for k in ("parity_atol", "parity_min_agreement", "max_f1_loss",
                                                 "batch_label_agreement", "batch_prob_atol")},
        "variants": {name: report.to_json() for name, report in result.variants.items()},
        "measured": {"threads": threads, "providers": PROVIDERS, "batch_size": BATCH_SIZE,
                     "cpu_flags": sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx", "avx2")))},
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "files": file_hashes(result.out_dir),
    }
    atomic.write_text(result.out_dir / MANIFEST_FILE, json.dumps(manifest, indent=2), mode=0o644)
    return manifest


def pad_id(tokenizer_json: Path) -> int:
    """The id the exported tokenizer pads with (serving pads ragged batches with it)."""
    return int(json.loads(tokenizer_json.read_text())["padding"]["pad_id"])


def load_export(out_dir: Path) -> ExportResult:
    """An export folder's manifest as an ExportResult (the inverse of write_manifest)."""
    path = Path(out_dir) / MANIFEST_FILE
    if not path.is_file():
        raise ExportError(f"{out_dir} is not an export folder: it has no {MANIFEST_FILE}. Run `ftops export` first.")
    data = json.loads(path.read_text())
    variants = {n: VariantReport.from_json(v) for n, v in data["variants"].items()}
    return ExportResult(Path(out_dir), data["labels"], data["max_length"], variants, data["selected"],
                        data["selection"]["reason"], data["reference"], data["source"])


def verify_files(out_dir: Path) -> list[str]:
    """Files whose sha256 differs from the manifest, or that are missing or unlisted."""
    listed = json.loads((Path(out_dir) / MANIFEST_FILE).read_text())["files"]
    actual = file_hashes(Path(out_dir))
    return sorted(n for n in set(listed) | set(actual) if listed.get(n) != actual.get(n))


def figure_text(report: VariantReport) -> dict[str, str]:
    """The figures as short strings, shared by the model card and the CLI table."""
    f = report.figures

    def fmt(key: str, spec: str) -> str:
        return format(f[key], spec) if key in f else "-"

    return {"size_mb": fmt("size_mb", ".1f"), "p50_ms": fmt("p50_ms", ".2f"), "p99_ms": fmt("p99_ms", ".2f"),
            "samples_per_s": fmt("samples_per_s", ".0f"), "max_abs_diff": fmt("max_abs_diff", ".2e"),
            "agreement": fmt("agreement", ".4f"), "delta_macro_f1": fmt("delta_macro_f1", "+.4f"),
            "batch_label_agreement": fmt("batch_label_agreement", ".3f")}


def write_model_card(result: ExportResult) -> None:
    source = "\n".join(f"- {k}: {v}" for k, v in result.source.items()) or "- (not given)"
    rows = []
    for report in result.variants.values():
        t = figure_text(report)
        mark = " (selected)" if report.name == result.selected else ""
        rows.append(f"| {report.name}{mark} | {t['size_mb']} | {t['p50_ms']} | {t['p99_ms']} | {t['samples_per_s']} "
                    f"| {t['max_abs_diff']} | {t['agreement']} | {t['delta_macro_f1']} | {report.status} "
                    f"| {report.reason.replace('|', '/')} |")
    notes = "\n".join(f"- {r.name}: {'; '.join(r.notes)}" for r in result.variants.values() if r.notes)
    text = f"""# Exported classifier

## Source
{source}

## Labels (id order)
{", ".join(f"{i}: {label}" for i, label in enumerate(result.labels))}

## Inputs and outputs
input_ids, attention_mask, token_type_ids (int64, [batch, sequence]) -> logits (float32,
[batch, {len(result.labels)}]). Tokenize with tokenizer.json (truncation at {result.max_length}
tokens, padding to the longest text of the batch).

## Variants
PyTorch fp32 reference: macro-F1 {result.reference.get('macro_f1', float('nan')):.4f} on
{result.reference.get('n_texts')} held-out texts. Latency is batch 1 (ms); throughput batch 32.

| variant | MB | p50 ms | p99 ms | samples/s | max diff | agreement | delta F1 | status | reason |
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

{notes}

Selected: **{result.selected or 'none'}**: {result.selection_reason}.
`unbatched_only` variants answer differently depending on the batch they are in: serve
them one text per inference call, or not at all.
"""
    (result.out_dir / CARD_FILE).write_text(text)


def log_to_mlflow(result: ExportResult, run_id: str | None = None) -> bool:
    """Every built variant as an MLflow onnx model, its figures as `export.<variant>.*`
    metrics, and export.json as an artifact, into the active run or `run_id`. Without
    either nothing is imported: export works with no MLflow at all."""
    mlflow = sys.modules.get("mlflow")  # no active run is possible when mlflow was never imported
    active = mlflow.active_run() if mlflow is not None else None
    if active is None and run_id is None:
        return False
    import mlflow
    import onnx
    import onnxruntime

    same = active is not None and (run_id is None or active.info.run_id == run_id)
    with nullcontext() if same else mlflow.start_run(run_id=run_id, nested=active is not None):
        for name, report in result.variants.items():
            metrics = {f"export.{name}.{k}": float(v) for k, v in report.figures.items()}
            metrics[f"export.{name}.passed"] = float(report.status == PASS)
            mlflow.log_metrics(metrics)
            if report.file:
                mlflow.onnx.log_model(onnx.load(str(result.out_dir / report.file)), name=name,
                                      onnx_execution_providers=PROVIDERS,
                                      pip_requirements=[f"onnxruntime=={onnxruntime.__version__}",
                                                        f"onnx=={onnx.__version__}"])
        mlflow.set_tag("ftops.export.selected", result.selected or "none")
        mlflow.log_artifact(str(result.out_dir / MANIFEST_FILE), artifact_path="export")
        mlflow.log_artifact(str(result.out_dir / CARD_FILE), artifact_path="export")
    return True


# ---------------------------------------------------------------- from a registry version


def export_ref(config, ref, snapshot, out_dir: Path | None = None,
               progress: Callable[[str], None] | None = None) -> ExportResult:
    """Export a resolved model (ftops.decide.ModelRef) with the snapshot's texts:
    calibration from its train split, the parity gate on its test split."""
    from ftops import registry

    labels = json.loads((ref.folder / "model" / "ftops.json").read_text())["labels"]
    if labels != snapshot.labels:
        raise ExportError(f"Model '{ref.label}' predicts labels {labels} but snapshot {snapshot.id} has "
                          f"{snapshot.labels}: the parity gate needs the model's own label set. "
                          "Use a snapshot with the same labels.")
    run_id = registry.get(config, ref.version).run_id if ref.version else None
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    name = f"v{ref.version}" if ref.version else Path(ref.folder).name
    target = out_dir or config.resolved().project.dir / "exports" / f"{name}-{stamp}"
    train_texts, test = snapshot.split("train")["text"], snapshot.split("test")
    label2id = {label: i for i, label in enumerate(labels)}
    result_file = Path(ref.folder) / "result.json"
    metrics = {}
    if result_file.is_file():
        saved = json.loads(result_file.read_text())
        metrics = {k: saved[k] for k in ("val_macro_f1", "test_macro_f1", "test_accuracy") if k in saved}
    manifest = json.loads((snapshot.path / "manifest.json").read_text())
    source = {"model": ref.label, "folder": str(ref.folder), "registry_version": ref.version, "run_id": run_id,
              "snapshot": snapshot.id, "data_sha256": manifest.get("sha256"), "metrics": metrics}
    calibration = list(train_texts.sample(n=min(200, len(train_texts)), random_state=config.data.seed))
    return export_model(ref.folder, target, calibration, config.model.max_length,
                        parity_texts=list(test["text"]), parity_labels=[label2id[l] for l in test["label"]],
                        gates=config.gates, source=source, run_id=run_id, progress=progress)


def export_version(config, version: str, snapshot, run_id: str | None = None,
                   progress: Callable[[str], None] | None = None) -> ExportResult:
    """Export a registry version (what the lifecycle flow calls after an A/B win)."""
    from ftops import decide, registry

    ref = decide.ModelRef(f"v{version}", registry.download(config, version), version)
    return export_ref(config, ref, snapshot, progress=progress)
