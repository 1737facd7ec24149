"""The evaluation stage: metrics, slices, paired significance tests and the promotion decision.

Everything here is a pure function of predictions already made (no model loading, no
MLflow), so the gate that decides what reaches production is cheap to test exhaustively.
A Decision records every rule with its value and threshold, so a rejection explains itself.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binomtest
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support, roc_auc_score

from ftops.config import GatesSection
from ftops.errors import FtopsError

ECE_BINS = 15
MIN_SLICE_ROWS = 20  # smaller slices are noise: recorded as skipped, never gated on
MAX_CATEGORIES = 50  # more distinct values than this is an id or free text, not a slice
LENGTH_EDGES = (10, 20, 40)  # word counts; buckets <=10, 11-20, 21-40, >40
LENGTH_LABELS = ("<=10", "11-20", "21-40", ">40")
NOT_SLICED = ("text", "label", "row")
CHUNK = 500  # bootstrap resamples per vectorised batch: bounds memory at CHUNK x n ints


class EvaluationError(FtopsError):
    pass


@dataclass
class Predictions:
    """One model's class probabilities on evaluation rows; `frame` holds text, row and slices."""

    labels: list[str]
    y_true: np.ndarray
    probs: np.ndarray
    frame: pd.DataFrame

    def __post_init__(self) -> None:
        self.y_true = np.asarray(self.y_true, dtype=int)
        self.probs = np.asarray(self.probs, dtype=float)
        n, k = len(self.y_true), len(self.labels)
        if n == 0:
            raise EvaluationError("No predictions to evaluate: the evaluation rows are empty.")
        if self.probs.shape != (n, k) or len(self.frame) != n:
            raise EvaluationError(
                f"Predictions do not line up: {n} true labels, probabilities of shape "
                f"{self.probs.shape} and {len(self.frame)} frame rows for {k} labels. Expected "
                "probabilities of shape (rows, labels) and one frame row per prediction.")
        if not np.allclose(self.probs.sum(axis=1), 1.0, atol=1e-3):
            raise EvaluationError("Prediction probabilities do not sum to 1 per row; pass "
                                  "softmax outputs, not logits.")

    @property
    def y_pred(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


# ---------------------------------------------------------------- metrics


def metrics(pred: Predictions) -> dict[str, Any]:
    """Headline numbers, per-class precision/recall/F1 and calibration of one model."""
    y, p = pred.y_true, pred.y_pred
    ids = list(range(len(pred.labels)))
    precision, recall, f1, support = precision_recall_fscore_support(y, p, labels=ids,
                                                                     zero_division=0)
    per_class = {label: {"precision": float(precision[i]), "recall": float(recall[i]),
                         "f1": float(f1[i]), "support": int(support[i])}
                 for i, label in enumerate(pred.labels)}
    return {**headline(y, p), "roc_auc": roc_auc(y, pred.probs), "ece": ece(y, pred.probs),
            "per_class": per_class}


def headline(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """n, accuracy, macro- and weighted-F1. F1 averages over the classes seen in y or p
    (sklearn's default), so a slice is not penalised for classes it does not contain."""
    return {"n": int(len(y)), "accuracy": float(accuracy_score(y, p)),
            "macro_f1": float(f1_score(y, p, average="macro", zero_division=0)),
            "weighted_f1": float(f1_score(y, p, average="weighted", zero_division=0))}


def roc_auc(y: np.ndarray, probs: np.ndarray) -> float | None:
    """One-vs-rest macro AUC; None when a class has no true rows (its AUC is undefined)."""
    k = probs.shape[1]
    if len(np.unique(y)) < k:
        return None
    if k == 2:
        return float(roc_auc_score(y, probs[:, 1]))
    return float(roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=list(range(k))))


def ece(y: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top-class confidence."""
    # Guo et al. 2017: split (0, 1] into `bins` equal-width bins by confidence (bin i holds
    # (i/bins, (i+1)/bins]), then sum |accuracy - mean confidence| over bins, each weighted
    # by its share of rows. sklearn only has a binary calibration curve, hence by hand.
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges, right=True) - 1, 0, bins - 1)
    total = 0.0
    for b in np.unique(which):
        inside = which == b
        total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


# ---------------------------------------------------------------- slices


def slices(pred: Predictions, columns: list[str] | None = None) -> dict[str, dict[str, dict]]:
    """Headline metrics per text-length bucket and per value of each categorical column.

    Slices under MIN_SLICE_ROWS rows appear as {"n", "skipped"}: their numbers are noise.
    """
    y, p = pred.y_true, pred.y_pred
    return {name: {value: slice_metrics(y, p, mask) for value, mask in masks.items()}
            for name, masks in slice_masks(pred.frame, columns).items()}


def slice_metrics(y: np.ndarray, p: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    n = int(mask.sum())
    if n < MIN_SLICE_ROWS:
        return {"n": n, "skipped": f"fewer than {MIN_SLICE_ROWS} rows"}
    return headline(y[mask], p[mask])


def slice_masks(frame: pd.DataFrame, columns: list[str] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """{slice name: {value: boolean row mask}}; `length` always, then categorical columns."""
    words = frame["text"].fillna("").astype(str).str.split().str.len().to_numpy()
    buckets = np.array(LENGTH_LABELS, dtype=object)[np.searchsorted(LENGTH_EDGES, words)]
    out = {"length": {v: buckets == v for v in LENGTH_LABELS if (buckets == v).any()}}
    for column in categorical_columns(frame, columns):
        values = frame[column].astype("string").fillna("<missing>").to_numpy(dtype=object)
        out[column] = {str(v): values == v for v in sorted(set(values))}
    return out


def categorical_columns(frame: pd.DataFrame, only: list[str] | None = None) -> list[str]:
    """Text-like or category columns with few distinct values; `only` restricts them."""
    found = [c for c in frame.columns if c not in NOT_SLICED and _is_categorical(frame[c])]
    if only is None:
        return found
    wanted = [c for c in only if c != "length"]
    missing = [c for c in wanted if c not in found]
    if missing:
        raise EvaluationError(
            f"Cannot slice by {', '.join(missing)}: not a categorical column of the evaluation "
            f"rows (at most {MAX_CATEGORIES} distinct text values). Categorical columns found: "
            f"{', '.join(found) or 'none'}.")
    return wanted


def _is_categorical(series: pd.Series) -> bool:
    dtype = series.dtype
    texty = isinstance(dtype, pd.CategoricalDtype) or dtype == object or pd.api.types.is_string_dtype(dtype)
    return bool(texty) and series.nunique() <= MAX_CATEGORIES


# ---------------------------------------------------------------- paired tests


@dataclass
class BootstrapResult:
    metric: str
    delta: float  # metric(b) - metric(a) on all rows
    ci_low: float
    ci_high: float
    p_value: float  # one-sided: share of resamples with delta <= 0
    p_two_sided: float  # min(1, 2 * min(share <= 0, share >= 0))
    resamples: int
    alpha: float


def paired_bootstrap(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray,
                     metric: str = "macro_f1", resamples: int = 2000, seed: int = 0,
                     alpha: float = 0.05) -> BootstrapResult:
    """Percentile CI of metric(b) - metric(a), resampling the SAME rows for both models.

    Pairing cancels the row-to-row difficulty both models share, so the interval is far
    tighter than two independent ones. Resample r uses the rows
    `np.random.default_rng(seed).integers(0, n, size=(resamples, n))[r]` (drawn in chunks;
    the stream is the same). Each resample's confusion matrices come from one bincount.
    """
    if metric not in BATCH_METRICS:
        raise EvaluationError(f"Unknown bootstrap metric '{metric}'; use one of "
                              f"{', '.join(BATCH_METRICS)}.")
    y, a, b = (np.asarray(v, dtype=int) for v in (y_true, pred_a, pred_b))
    n, k = len(y), int(max(y.max(), a.max(), b.max())) + 1
    score = BATCH_METRICS[metric]
    codes_a, codes_b = y * k + a, y * k + b
    full = np.arange(n)[None, :]
    delta = float(score(_confusions(codes_b, full, k))[0] - score(_confusions(codes_a, full, k))[0])
    rng = np.random.default_rng(seed)
    deltas = []
    for start in range(0, resamples, CHUNK):
        idx = rng.integers(0, n, size=(min(CHUNK, resamples - start), n))
        deltas.append(score(_confusions(codes_b, idx, k)) - score(_confusions(codes_a, idx, k)))
    d = np.concatenate(deltas)
    low, high = np.quantile(d, [alpha / 2, 1 - alpha / 2])
    below, above = float(np.mean(d <= 0)), float(np.mean(d >= 0))
    return BootstrapResult(metric, delta, float(low), float(high), below,
                           min(1.0, 2 * min(below, above)), resamples, alpha)


def _confusions(codes: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    """(r, k, k) confusion matrices (true x predicted) of r resamples of row indices."""
    r = len(idx)
    offsets = (np.arange(r) * k * k)[:, None]
    return np.bincount((codes[idx] + offsets).ravel(), minlength=r * k * k).reshape(r, k, k)


def _batch_macro_f1(cm: np.ndarray) -> np.ndarray:
    """Macro-F1 over classes seen in truth or prediction, as sklearn's default does."""
    tp = np.diagonal(cm, axis1=1, axis2=2)
    seen = cm.sum(axis=2) + cm.sum(axis=1)  # 2tp + fp + fn
    f1 = 2 * tp / np.maximum(seen, 1)
    return f1.sum(axis=1) / (seen > 0).sum(axis=1)


def _batch_accuracy(cm: np.ndarray) -> np.ndarray:
    return np.trace(cm, axis1=1, axis2=2) / cm.sum(axis=(1, 2))


BATCH_METRICS = {"macro_f1": _batch_macro_f1, "accuracy": _batch_accuracy}


@dataclass
class McNemarResult:
    b01: int  # a right, b wrong
    b10: int  # a wrong, b right
    statistic: float  # min(b01, b10), as statsmodels reports for the exact test
    p_value: float


def mcnemar(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> McNemarResult:
    """Exact McNemar test. Only rows where exactly one model is right carry information;
    under H0 each favours either model with probability 1/2, so b10 ~ Bin(b01 + b10, 1/2)."""
    y = np.asarray(y_true)
    right_a, right_b = np.asarray(pred_a) == y, np.asarray(pred_b) == y
    b01, b10 = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    p = 1.0 if b01 + b10 == 0 else float(binomtest(b10, b01 + b10, 0.5).pvalue)
    return McNemarResult(b01, b10, float(min(b01, b10)), p)


# ---------------------------------------------------------------- decision


@dataclass
class Rule:
    name: str
    passed: bool
    value: float | None
    threshold: float | None
    detail: str


@dataclass
class Decision:
    outcome: str  # "promote" | "reject"
    mode: str  # "champion" | "no-champion-yet"
    summary: str
    rules: list[Rule]
    metrics: dict[str, dict | None]  # challenger, champion, baseline
    slices: dict[str, dict]  # "column=value" -> n, challenger, reference, delta (or skipped)
    reference: str | None  # what bootstrap, mcnemar and slices compare against
    bootstrap: BootstrapResult | None
    mcnemar: McNemarResult | None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    context: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=_json_default)

    def to_markdown(self) -> str:
        lines = [f"# Decision: {self.outcome}", "", self.summary, "",
                 "| rule | value | threshold | pass | detail |", "|---|---:|---:|:-:|---|"]
        lines += [f"| {r.name} | {_fmt(r.value)} | {_fmt(r.threshold)} | "
                  f"{'yes' if r.passed else 'NO'} | {_cell(r.detail)} |" for r in self.rules]
        if self.slices:
            lines += ["", f"## Slices (macro-F1, challenger vs {self.reference})", "",
                      f"| slice | n | challenger | {self.reference} | delta |", "|---|---:|---:|---:|---:|"]
            for key, s in self.slices.items():
                numbers = ["skipped", "", ""] if "skipped" in s else [
                    f"{s['challenger']:.4f}", f"{s['reference']:.4f}", f"{s['delta']:+.4f}"]
                lines.append(f"| {_cell(key)} | {s['n']} | " + " | ".join(numbers) + " |")
        if self.context:
            lines += ["", "## Context", ""] + [f"- {k}: {v}" for k, v in self.context.items()]
        return "\n".join(lines) + "\n"

    def write(self, folder: Path) -> tuple[Path, Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = folder / "decision.json", folder / "decision.md"
        paths[0].write_text(self.to_json() + "\n", encoding="utf-8")
        paths[1].write_text(self.to_markdown(), encoding="utf-8")
        return paths


def compare(challenger: Predictions, champion: Predictions | None, gates: GatesSection,
            protected: list[str] | None = None, baseline: Predictions | None = None,
            resamples: int = 2000, seed: int = 0, costs: dict[str, dict[str, float]] | None = None) -> Decision:
    """Promote or reject a challenger against the champion (or, for the first model, the
    baseline). Paired tests and slice deltas compare against that reference.

    A challenger wins on quality (effect and significance), or, when the paired test cannot
    tell it from the champion, on cost: non-inferior within gates.noninferiority_margin and
    gates.cheaper_share faster at batch 1 and smaller (`costs`: p50_ms and params per model).
    Between equals the cheaper model serves, and the record says which reason carried it."""
    for name, other in (("champion", champion), ("baseline", baseline)):
        if other is not None:
            check_same_rows(challenger, other, name)
    scores = {name: None if p is None else metrics(p)
              for name, p in (("challenger", challenger), ("champion", champion), ("baseline", baseline))}
    reference = "champion" if champion is not None else "baseline" if baseline is not None else None
    ref = champion if champion is not None else baseline
    boot = mc = None
    by_cost = False
    deltas: dict[str, dict] = {}
    if ref is not None:
        y = challenger.y_true
        boot = paired_bootstrap(y, ref.y_pred, challenger.y_pred, resamples=resamples, seed=seed,
                                alpha=gates.alpha)
        mc = mcnemar(y, ref.y_pred, challenger.y_pred)
        deltas = slice_deltas(challenger, ref, alpha=gates.alpha, seed=seed)
    f1 = {k: v["macro_f1"] for k, v in scores.items() if v is not None}
    if champion is None:
        rules = [_baseline_rule(f1, boot)]
    else:
        gain = [Rule("effect", boot.delta >= gates.min_effect, boot.delta, gates.min_effect,
                     f"challenger macro-F1 {f1['challenger']:.4f} vs champion {f1['champion']:.4f}"),
                _significance_rule(boot, mc, gates.alpha)]
        cost = _cost_rule(boot, costs or {}, gates)
        by_cost = cost.passed and not all(r.passed for r in gain)
        if all(r.passed for r in gain):
            cost = Rule(cost.name, True, cost.value, cost.threshold, f"not needed: the gain carries it ({cost.detail})")
        elif cost.passed:  # equal quality, cheaper: the gain is waived, and the record says why
            gain = [Rule(r.name, True, r.value, r.threshold, f"waived by the cost rule: {r.detail}") for r in gain]
        rules = [*gain, cost, _slices_rule(deltas, protected, gates.slice_tolerance)]
        if baseline is not None:
            rules.append(_baseline_rule(f1))
    outcome = "promote" if all(r.passed for r in rules) else "reject"
    mode = "no-champion-yet" if champion is None else "champion"
    summary = _summary(outcome, rules, f1, boot, mc, gates.alpha, reference, by_cost)
    context = {"test_rows_by_source": rows_by_source(challenger.frame)}
    return Decision(outcome, mode, summary, rules, scores, deltas, reference, boot, mc, context=context)


def rows_by_source(frame: pd.DataFrame) -> dict[str, int]:
    """Evaluation rows per `source` (original / feedback), so the record shows what the gate
    measured on; rows without a source column count as original."""
    if "source" not in frame:
        return {"original": int(len(frame))}
    return {str(k): int(v) for k, v in frame["source"].fillna("original").value_counts().items()}


def check_same_rows(challenger: Predictions, other: Predictions, name: str) -> None:
    """Paired tests are only valid when both models predicted the same rows in the same order."""
    problem = None
    if len(other.y_true) != len(challenger.y_true):
        problem = f"the challenger has {len(challenger.y_true)} rows, the {name} {len(other.y_true)}"
    elif list(other.labels) != list(challenger.labels):
        problem = f"the label order differs ({challenger.labels} vs {other.labels})"
    else:
        key = "row" if "row" in challenger.frame and "row" in other.frame else "text"
        ours, theirs = challenger.frame[key].to_numpy(), other.frame[key].to_numpy()
        differ = np.flatnonzero(ours != theirs)
        if len(differ):
            i = differ[0]
            problem = (f"{len(differ)} positions hold different rows, the first at position {i} "
                       f"({key} {ours[i]} vs {key} {theirs[i]})")
        elif not np.array_equal(challenger.y_true, other.y_true):
            problem = "the true labels differ"
    if problem:
        raise EvaluationError(
            f"Cannot compare the challenger with the {name}: {problem}. Paired tests need both "
            "models' predictions on the same evaluation rows in the same order; predict both "
            "on the same data snapshot's test split.")


def slice_deltas(challenger: Predictions, reference: Predictions, alpha: float = 0.05,
                 resamples: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Macro-F1 per slice of both models with a paired bootstrap CI of the delta; slices
    come from the challenger's frame (same rows)."""
    y, out = challenger.y_true, {}
    for column, masks in slice_masks(challenger.frame).items():
        for value, mask in masks.items():
            new = slice_metrics(y, challenger.y_pred, mask)
            if "skipped" in new:
                out[f"{column}={value}"] = new
                continue
            boot = paired_bootstrap(y[mask], reference.y_pred[mask], challenger.y_pred[mask],
                                    resamples=resamples, seed=seed, alpha=alpha)
            old = slice_metrics(y, reference.y_pred, mask)["macro_f1"]
            out[f"{column}={value}"] = {"n": new["n"], "challenger": new["macro_f1"], "reference": old,
                                        "delta": new["macro_f1"] - old,
                                        "ci_low": boot.ci_low, "ci_high": boot.ci_high}
    return out


def _significance_rule(boot: BootstrapResult, mc: McNemarResult, alpha: float) -> Rule:
    """Both tests must favour the challenger. The bootstrap tests macro-F1, the gated metric,
    which weighs rare classes equally; McNemar tests whether the rows the models disagree on
    favour the challenger (accuracy). Requiring both stops a macro-F1 gain resting on a few
    rows of a rare class, or an accuracy gain macro-F1 does not see, from promoting alone."""
    passed = boot.ci_low > 0 and mc.p_value < alpha and mc.b10 > mc.b01
    level = round(100 * (1 - alpha))
    detail = (f"{level}% bootstrap CI of delta macro-F1 [{boot.ci_low:+.4f}, {boot.ci_high:+.4f}] "
              f"must be above 0; McNemar exact p={mc.p_value:.3g} (challenger right/champion "
              f"wrong {mc.b10}, the reverse {mc.b01}) must be below alpha in the challenger's favour")
    return Rule("significance", passed, mc.p_value, alpha, detail)


def _cost_rule(boot: BootstrapResult, costs: dict[str, dict[str, float]], gates: GatesSection) -> Rule:
    """Non-inferior and cheaper: the CI's lower end above -margin (a loss larger than the
    margin is ruled out at 1 - alpha), a batch-1 p50 at most (1 - cheaper_share) of the
    champion's, and fewer parameters (so timing noise between two models of one size never
    counts as a saving). Without both models' costs nothing is cheaper."""
    margin, most = gates.noninferiority_margin, 1 - gates.cheaper_share
    mine, theirs = costs.get("challenger") or {}, costs.get("champion") or {}
    if not {"p50_ms", "params"} <= set(mine) & set(theirs):
        return Rule("cost", False, None, most, "no batch-1 latency and size of both models to compare")
    ratio = mine["p50_ms"] / theirs["p50_ms"]
    noninferior, smaller = boot.ci_low > -margin, mine["params"] < theirs["params"]
    detail = (f"batch-1 p50 {mine['p50_ms']:.2f} ms vs champion {theirs['p50_ms']:.2f} ms (x{ratio:.2f}, at most "
              f"x{most:.2f}); {mine['params'] / 1e6:.1f}M vs {theirs['params'] / 1e6:.1f}M parameters; CI low "
              f"{boot.ci_low:+.4f} {'above' if noninferior else 'not above'} -{margin:.4f} (gates.noninferiority_margin)")
    return Rule("cost", noninferior and smaller and ratio <= most, ratio, most, detail)


def _slices_rule(deltas: dict[str, dict], protected: list[str] | None, tolerance: float) -> Rule:
    """No protected slice may lose more than `tolerance` macro-F1: an overall gain must not
    hide a regression for one group of users. A slice fails when its drop is beyond the
    tolerance AND its paired bootstrap CI lies below 0: a 200-row slice's macro-F1 moves by
    about +-0.03 between equally good models, so the point estimate alone would reject
    good challengers by chance. Default: every categorical column's values."""
    keys, absent = _protected_keys(deltas, protected)
    checked = {k: deltas[k] for k in keys if "delta" in deltas[k]}
    failing = [f"{k} ({d['delta']:+.4f}, CI [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}])"
               for k, d in checked.items() if d["delta"] < -tolerance and d["ci_high"] < 0]
    notes = [f"failing: {', '.join(failing)}" if failing else f"{len(checked)} slices checked"]
    if skipped := [k for k in keys if "delta" not in deltas[k]]:
        notes.append(f"skipped (under {MIN_SLICE_ROWS} rows): {', '.join(skipped)}")
    if absent:
        notes.append(f"not present: {', '.join(absent)}")
    worst = min((d["delta"] for d in checked.values()), default=None)
    return Rule("slices", not failing, worst, -tolerance, "; ".join(notes))


def _protected_keys(deltas: dict[str, dict], protected: list[str] | None) -> tuple[list[str], list[str]]:
    columns = {k.partition("=")[0] for k in deltas}
    if protected is None:
        return [k for k in deltas if not k.startswith("length=")], []
    keys, absent = [], []
    for item in protected:
        column, _, value = item.partition("=")
        if column not in columns:
            raise EvaluationError(
                f"Protected slice '{item}': the evaluation rows have no categorical column "
                f"'{column}' to slice by. Slices available: {', '.join(sorted(columns))}. "
                "Fix the protected slice list, or keep that column in the test split.")
        matched = [k for k in deltas if (k == item if value else k.partition("=")[0] == column)]
        absent += [] if matched else [item]
        keys += [k for k in matched if k not in keys]
    return keys, absent


def _baseline_rule(f1: dict[str, float], boot: BootstrapResult | None = None) -> Rule:
    """The challenger must beat the baseline's macro-F1 (point estimate; a CI is recorded)."""
    if "baseline" not in f1:
        return Rule("baseline", True, None, None,
                    "nothing to compare against: no champion and no baseline")
    delta = f1["challenger"] - f1["baseline"]
    detail = f"challenger macro-F1 {f1['challenger']:.4f} vs baseline {f1['baseline']:.4f}"
    if boot is not None:
        detail += f"; bootstrap CI [{boot.ci_low:+.4f}, {boot.ci_high:+.4f}] recorded, not required"
        if boot.ci_low <= 0 <= boot.ci_high:
            detail += " (the paired test cannot tell the two apart: the first model is judged on its point estimate)"
    return Rule("baseline", delta > 0, delta, 0.0, detail)


def _summary(outcome: str, rules: list[Rule], f1: dict[str, float], boot: BootstrapResult | None,
             mc: McNemarResult | None, alpha: float, reference: str | None, by_cost: bool = False) -> str:
    failed = [r.name for r in rules if not r.passed]
    verdict = f"failed: {', '.join(failed)}" if failed else "all rules passed"
    if reference is None:
        return f"{outcome}: first model, nothing to compare against ({verdict})"
    text = (f"{outcome}: challenger macro-F1 {f1['challenger']:.4f} vs {reference} "
            f"{f1[reference]:.4f} (delta {boot.delta:+.4f}, CI [{boot.ci_low:+.4f}, "
            f"{boot.ci_high:+.4f}], McNemar p={mc.p_value:.3g})")
    if "significance" in failed:
        worse = boot.ci_high < 0 and mc.p_value < alpha and mc.b01 > mc.b10
        text += "; challenger significantly worse" if worse else "; no significant difference"
    if by_cost:
        text += "; no significant difference, and the challenger is cheaper: the cheaper model serves"
    return f"{text}; {verdict}"


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays (e.g. in `context`) as Python numbers and lists."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return str(value)


def _fmt(value: Any) -> str:
    return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")
