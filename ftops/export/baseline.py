"""The TF-IDF baseline exported for serving: skl2onnx converts the pipeline (the converter
the field keeps up; the baseline's shape is chosen so that it converts exactly, see
ftops.train.baseline), and the graph ends in `logits` = log of the probabilities in the
labels' id order. Serving softmaxes `logits`, and softmax(log p) = p, so the baseline has
the output of every other export and only its input differs: raw text (`text`, string,
[batch, 1]) instead of token ids. The parity gate holds it to scikit-learn's own
probabilities, alone and in mixed batches, as a transformer's variants are held to PyTorch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ftops.artifacts import exported
from ftops.artifacts.batches import length_sorted
from ftops.config import GatesSection
from ftops.export.card import write_manifest, write_model_card
from ftops.export.parity import INVARIANCE_TEXTS, Reference, macro_f1
from ftops.export.publish import log_to_mlflow
from ftops.export.results import FAIL, ExportResult, VariantReport
from ftops.export.runtime import BATCH_SIZE, speed_feeds
from ftops.export.select import select
from ftops.export.stage import check_request, gate_and_time
from ftops.export.staging import staged
from ftops.names import ONNX_FILE, OUTPUT_NAME, TEXT_INPUT
from ftops.train.baseline import BaselineModel, load_baseline

VARIANT = "fp32"
# The StringNormalizer lowercases in this locale; the token pattern is ASCII, so any UTF-8
# locale folds the same letters, and C.UTF-8 is built into glibc (en_US.UTF-8 often is not
# installed on servers, and onnxruntime then refuses to load the graph).
LOCALE = "C.UTF-8"
# Log of 0 would be -inf; no logistic regression gives a probability this small.
FLOOR = 1e-30
PROBABILITIES = "probabilities"  # skl2onnx's name for a classifier's probability output


def export_baseline(source_folder: Path, out_dir: Path, *, parity_texts: list[str], parity_labels: Sequence[int],
                    gates: GatesSection | None = None, source: dict[str, Any] | None = None,
                    run_id: str | None = None, threads: int | None = None,
                    progress: Callable[[str], None] | None = None) -> ExportResult:
    """A logged baseline folder (model/baseline.json) to an export folder serving reads."""
    gates, say = gates or GatesSection(), progress or (lambda line: None)
    out_dir, threads = Path(out_dir), threads or os.cpu_count() or 1
    check_request([VARIANT], parity_texts, parity_labels, out_dir)
    model = load_baseline(Path(source_folder))
    with staged(out_dir) as work:
        exported.write_labels(work, model.labels)
        target = work / VARIANT / ONNX_FILE
        convert(model, target)
        size_mb = target.stat().st_size / 1e6
        say(f"{VARIANT}: converted with skl2onnx, {size_mb:.1f} MB")
        reference = text_reference(model, parity_texts, parity_labels)
        reports = {VARIANT: VariantReport(VARIANT, FAIL, "not gated yet", f"{VARIANT}/{ONNX_FILE}", True,
                                          {"size_mb": size_mb})}
        gate_and_time(reports, work, reference, gates, threads, say)
        selected, why = select(reports, gates)
        say(f"selected: {selected or 'none'} ({why})")
        result = ExportResult(work, model.labels, 0, reports, selected, why,
                              {"macro_f1": reference.macro_f1, "n_texts": len(parity_texts)},
                              {**(source or {}), "kind": "baseline"})
        write_model_card(result)
        write_manifest(result, gates, threads)
    result.out_dir = out_dir
    log_to_mlflow(result, run_id)
    return result


def convert(model: BaselineModel, target: Path) -> None:
    """skl2onnx's graph, then Gather (labels' id order) -> Max(FLOOR) -> Log as `logits`."""
    import onnx
    from onnx import TensorProto, helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import StringTensorType

    vectorizer, classifier = model.pipeline[0], model.pipeline[-1]
    graph = convert_sklearn(
        model.pipeline, initial_types=[(TEXT_INPUT, StringTensorType([None, 1]))],
        options={id(classifier): {"zipmap": False},
                 id(vectorizer): {"tokenexp": vectorizer.token_pattern, "locale": LOCALE}},
        target_opset={"": exported.OPSET, "ai.onnx.ml": 3})
    columns = helper.make_tensor("ftops_columns", TensorProto.INT64, [len(model.columns)], model.columns)
    floor = helper.make_tensor("ftops_floor", TensorProto.FLOAT, [], [FLOOR])
    graph.graph.initializer.extend([columns, floor])
    graph.graph.node.extend([
        helper.make_node("Gather", [PROBABILITIES, "ftops_columns"], ["ftops_ordered"], axis=1),
        helper.make_node("Max", ["ftops_ordered", "ftops_floor"], ["ftops_floored"]),
        helper.make_node("Log", ["ftops_floored"], [OUTPUT_NAME]),
    ])
    del graph.graph.output[:]
    graph.graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT,
                                                            [None, len(model.labels)]))
    onnx.checker.check_model(graph)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(graph.SerializeToString())


def text_feed(texts: list[str]) -> dict[str, np.ndarray]:
    return {TEXT_INPUT: np.array(texts, dtype=object).reshape(-1, 1)}


def text_reference(model: BaselineModel, texts: list[str], labels: Sequence[int]) -> Reference:
    """scikit-learn's log-probabilities on length-sorted batches, and the feeds that give them."""
    chunks = length_sorted(texts, BATCH_SIZE)
    order = np.concatenate(chunks) if chunks else np.zeros(0, dtype=int)
    logits = np.log(np.maximum(model.probs(texts), FLOOR)).astype(np.float32)
    y_true = np.asarray(labels, dtype=int)
    few = texts[:INVARIANCE_TEXTS]
    return Reference([text_feed([texts[i] for i in idx]) for idx in chunks], order, logits, y_true,
                     macro_f1(y_true, logits.argmax(-1), len(model.labels)),
                     [text_feed([t]) for t in few], text_feed(few), *speed_feeds(text_feed, texts))
