"""The trained model going in: loaded as trained (the parity reference), then made ready for
ONNX (adapters merged into plain weights, eager attention) and exported to the fp32 file
every other variant derives from."""

from __future__ import annotations

from pathlib import Path

from ftops import strategies
from ftops.artifacts.exported import INPUT_NAMES, OPSET
from ftops.export.results import ExportError
from ftops.names import META_FILE, MODEL_DIR, OUTPUT_NAME


def load_source(source_folder: Path):
    """(model, tokenizer, labels) of a trained candidate folder, as trained, in eval mode; a
    model whose strategy is not `exportable` is refused here, before anything is written."""
    from ftops.artifacts.candidate import load_trained

    if not (source_folder / MODEL_DIR / META_FILE).is_file():
        raise ExportError(f"{source_folder} is not a trained candidate folder (no model/ftops.json). "
                          "Pass the folder `ftops train` wrote for a candidate, or a registry alias/version.")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a "Loading weights" bar per load is noise in CLI output
    model, tokenizer, labels = load_trained(source_folder)
    strategy = strategies.holding(model)
    if not strategy.exportable:
        exportable = ", ".join(s.name for s in strategies.STRATEGIES.values() if s.exportable)
        raise ExportError(
            f"The model in {source_folder} was trained with {strategy.name}, whose trained form cannot "
            f"be folded into plain encoder weights (e.g. a soft prompt peft prepends to every input at "
            f"run time), so it is not exportable to ONNX. Export a candidate trained with {exportable}, "
            "or serve this one with PyTorch.")
    return model.float().eval(), tokenizer, labels


def prepare_for_onnx(model):
    """Adapters merged into plain weights (the strategy's `merge`), and eager attention:
    onnxruntime's fusion recognises the eager attention graph, not the SDPA one."""
    model = strategies.holding(model).merge(model)
    model.set_attn_implementation("eager")
    return model.eval()


def load_for_export(source_folder: Path):
    """(model ready for torch.onnx.export, tokenizer, labels)."""
    model, tokenizer, labels = load_source(source_folder)
    return prepare_for_onnx(model), tokenizer, labels


def export_fp32(model, tokenizer, target: Path) -> None:
    """torch.onnx.export with the legacy TorchScript exporter (dynamo=False): several times
    faster than the dynamo exporter at the same parity, byte-deterministic, and it needs no
    onnxscript; dynamo also silently moves opset 17 to 18."""
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
