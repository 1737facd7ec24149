"""The registry of ONNX variants: each entry is a builder of the same shape
`(Build, target) -> notes` that writes one model.onnx from the fp32 export, and whether the
variant is held to exact parity (parity_atol) or to label agreement and F1 loss.

fp32 is always built first (every other variant derives from it, and its failure is
raised); a variant that fails to build is recorded with the exception, not raised, and one
this host cannot run is skipped. A new variant is one builder plus one VARIANTS entry.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftops.artifacts.exported import OPSET
from ftops.export.results import ERROR, FAIL, SKIPPED, UNSUPPORTED, ExportError, Unsupported, VariantReport
from ftops.export.runtime import PROVIDERS
from ftops.export.source import export_fp32
from ftops.export.staging import disk_full
from ftops.names import ONNX_FILE


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


# ---------------------------------------------------------------- builders


def build_optimized(build: Build, target: Path) -> list[str]:
    """onnxruntime's transformer fusions (attention, embed/skip layer norm, bias-gelu),
    written offline so the fused graph is what is served and hashed."""
    fused = fuse(build, target)
    build.optimized = target
    return ["fused: " + ", ".join(f"{k} x{v}" for k, v in fused.items())] if fused else ["nothing fused"]


def fuse(build: Build, target: Path) -> dict[str, int]:
    """The fused graph written to `target`; returns how many of each fused op it has."""
    from onnxruntime.transformers.optimizer import optimize_model

    cfg = build.hf_config
    optimized = optimize_model(str(build.fp32), model_type="bert", num_heads=cfg.num_attention_heads,
                               hidden_size=cfg.hidden_size, opt_level=0)
    optimized.save_model_to_file(str(target))
    return {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}


def build_int8_dynamic(build: Build, target: Path) -> list[str]:
    """Weights int8 per channel, activations quantised at run time, on the un-fused graph
    (int8_fused is the same on the fused one)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(build.fp32), str(target), per_channel=True, weight_type=QuantType.QInt8)
    return ["activation scales computed per call over the whole batch"]


def build_int8_fused(build: Build, target: Path) -> list[str]:
    """Dynamic int8 on the fused graph, so that the fusions and int8 can add up: attention and
    the embedding LayerNorm stay fused ops while the weight MatMuls become MatMulInteger.
    Whether that beats int8_dynamic depends on the CPU (bench/inference.py shows it side by
    side); export times both and selects by measurement. Shape inference cannot type the
    fused ops' outputs, which makes plain quantize_dynamic fail on that graph;
    DefaultTensorType tells the quantiser they are fp32 (the fusions keep the precision)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fused = build.optimized
    with tempfile.TemporaryDirectory() as tmp:
        if fused is None:  # optimized not requested: fuse here, the same way
            fused = Path(tmp) / ONNX_FILE
            fuse(build, fused)
        quantize_dynamic(str(fused), str(target), per_channel=True, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    kinds = op_counts(target)
    return [f"from the fused graph: {', '.join(f'{k} x{v}' for k, v in kinds.items())}"]


def op_counts(path: Path, kinds: tuple[str, ...] = ("Attention", "MatMulInteger", "EmbedLayerNormalization",
                                                    "SkipLayerNormalization", "MatMul")) -> dict[str, int]:
    import onnx

    nodes = [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]
    return {k: nodes.count(k) for k in kinds if k in nodes}


def build_int8_static(build: Build, target: Path) -> list[str]:
    """QDQ int8 with activation scales fixed by calibration (so a text's answer does not depend
    on its batch), weights per channel. Only weight MatMuls are quantised (MatMulConstBOnly),
    and the feed-forward output MatMuls stay fp32: their inputs (after GELU) have outlier
    ranges that one static scale cannot cover. On a briefly fine-tuned MiniLM (500 tweets):
    all quantised 0.93 label agreement / -3.9 pt macro-F1 vs FFN outputs in fp32 0.99 /
    +0.9 pt. Keeping any single layer's FFN output in fp32 recovers little (0.93-0.95), and
    Percentile / Entropy calibration did not help (0.91-0.94)."""
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


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("fp32", None, True, "plain export from PyTorch (build_variants does it first)"),
    Variant("optimized", build_optimized, True, "fp32 with onnxruntime transformer fusions"),
    Variant("int8_dynamic", build_int8_dynamic, False, "int8 weights per channel, dynamic activations"),
    Variant("int8_fused", build_int8_fused, False, "int8 weights per channel on the fused graph, dynamic activations"),
    Variant("int8_static", build_int8_static, False, "int8 QDQ, calibrated activations, per-channel weights"),
    Variant("fp16", build_fp16, False, "fp16 weights and compute"),
    Variant("bf16", build_bf16, False, "bf16 weights and compute"),
)}


# ---------------------------------------------------------------- building them


def build_variants(model, tokenizer, out_dir: Path, names: list[str], calibration, say) -> dict[str, VariantReport]:
    """fp32 first (every other variant derives from it; its failure is raised), then the rest
    in order; a variant that fails to build is recorded with the exception, not raised."""
    fp32 = out_dir / "fp32" / ONNX_FILE
    started = time.perf_counter()
    export_fp32(model, tokenizer, fp32)
    build = Build(fp32, model.config, calibration)
    reports = {"fp32": built_report(VARIANTS["fp32"], out_dir, fp32, time.perf_counter() - started, [])}
    say(f"fp32: exported in {reports['fp32'].figures['build_s']:.1f} s, {reports['fp32'].figures['size_mb']:.1f} MB")
    for name in names:
        if name == "fp32":
            continue
        variant, target = VARIANTS[name], out_dir / name / ONNX_FILE
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
