"""The parity gate: every built variant is held to the PyTorch model as trained (adapters
unmerged, its own tokenizer), fed by the EXPORTED tokenizer.json, so the gate covers the
merge, the export and the tokenizer file that serving will use. A variant also has to give
each text the same answer alone and inside a mixed-length batch (batch invariance)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftops.artifacts.batches import length_sorted
from ftops.config import GatesSection
from ftops.evaluate.stats import paired_bootstrap
from ftops.export.results import ERROR, FAIL, PASS, UNBATCHED, ExportError, Rule, VariantReport
from ftops.export.runtime import BATCH_SIZE, encode_batch, load_tokenizer_json, ort_runner, speed_feeds

INVARIANCE_TEXTS = 64  # texts run alone and inside one mixed-length batch

BOOTSTRAP_RESAMPLES = 2000  # as many as the offline A/B gate draws by default


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
    chunks = length_sorted(texts, BATCH_SIZE)
    order = np.concatenate(chunks) if chunks else np.zeros(0, dtype=int)
    batches, logits = [], np.zeros((len(texts), n_labels), dtype=np.float32)
    with torch.inference_mode():
        for idx in chunks:
            chunk = [texts[i] for i in idx]
            feed = encode_batch(tok, chunk)
            check_tokenizer(tokenizer, chunk, feed, max_length, tokenizer_json)
            batches.append(feed)
            logits[idx] = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.float().numpy()
    y_true = np.asarray(labels, dtype=int)
    few = texts[:INVARIANCE_TEXTS]
    return Reference(batches, order, logits, y_true, macro_f1(y_true, logits.argmax(-1), n_labels),
                     [encode_batch(tok, [t]) for t in few], encode_batch(tok, few), *speed_feeds(lambda chunk: encode_batch(tok, chunk), texts))


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
    report.figures.update({
        "max_abs_diff": float(np.abs(logits - ref.logits).max()),
        **f1_figures(ref.y_true, ref.logits.argmax(-1), logits.argmax(-1), ref.logits.shape[1], gates.alpha),
        "batch_label_agreement": float((alone.argmax(-1) == together.argmax(-1)).mean()),
        "batch_max_prob_diff": float(np.abs(softmax(alone) - softmax(together)).max()),
    })
    report.rules = parity_rules(report, gates)
    report.status, report.reason = verdict(report.rules)
    return report


def f1_figures(y_true: np.ndarray, reference: np.ndarray, variant: np.ndarray, n_labels: int,
               alpha: float) -> dict[str, float]:
    """Label agreement and the variant's macro-F1 change vs PyTorch with its paired bootstrap
    CI: the same rows resampled for both, so the few texts where they differ decide it."""
    variant_f1 = macro_f1(y_true, variant, n_labels)
    paired = paired_bootstrap(y_true, reference, variant, "macro_f1", resamples=BOOTSTRAP_RESAMPLES, alpha=alpha)
    return {"agreement": float((variant == reference).mean()), "macro_f1": variant_f1,
            "delta_macro_f1": variant_f1 - macro_f1(y_true, reference, n_labels),
            "delta_macro_f1_ci_low": paired.ci_low, "delta_macro_f1_ci_high": paired.ci_high}


def parity_rules(report: VariantReport, gates: GatesSection) -> list[Rule]:
    f = report.figures
    if report.exact:
        rules = [Rule("max_abs_diff", f["max_abs_diff"], gates.parity_atol,
                      f["max_abs_diff"] <= gates.parity_atol, "parity_atol")]
    else:
        rules = [Rule("agreement", f["agreement"], gates.parity_min_agreement,
                      f["agreement"] >= gates.parity_min_agreement, "parity_min_agreement"),
                 # non-inferiority, as the A/B gate's cost rule judges a cheaper challenger: the
                 # paired CI's lower end, not the point delta a few hundred texts cannot resolve
                 Rule("delta_macro_f1_ci_low", f["delta_macro_f1_ci_low"], -gates.max_f1_loss,
                      f["delta_macro_f1_ci_low"] >= -gates.max_f1_loss, "max_f1_loss")]
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
