"""The promotion decision: a challenger against the champion (or, for the first model, the
baseline), by effect, significance, cost and protected slices. A pure function of
predictions already made, so the gate that decides what reaches production is cheap to
test exhaustively.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ftops.config import GatesSection
from ftops.evaluate.metrics import (MIN_SLICE_ROWS, EvaluationError, Predictions, metrics, slice_masks,
                                    slice_metrics)
from ftops.evaluate.record import Decision, Rule
from ftops.evaluate.stats import BootstrapResult, McNemarResult, mcnemar, paired_bootstrap


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
        rules = [_baseline_rule(f1, boot, tie_to_baseline=gates.baseline_serves == "when_tied")]
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


def baseline_serves(rejected: Decision, candidate: str) -> Decision | None:
    """The record of the TF-IDF baseline taking the first model's place: `rejected` is the
    decision that found no champion and a best candidate (`candidate`) not beating the
    baseline. Its tests are read from the baseline's side (delta = candidate - baseline)."""
    f1 = {k: v["macro_f1"] for k, v in rejected.metrics.items() if v is not None}
    if rejected.outcome != "reject" or rejected.mode != "no-champion-yet" or "baseline" not in f1:
        return None
    boot = rejected.bootstrap
    how = "is not significantly better than" if f1["challenger"] > f1["baseline"] else "does not beat"
    detail = (f"no champion, and the best candidate ({candidate}, macro-F1 {f1['challenger']:.4f}) {how} the "
              f"TF-IDF baseline ({f1['baseline']:.4f}; candidate - baseline {boot.delta:+.4f}, CI "
              f"[{boot.ci_low:+.4f}, {boot.ci_high:+.4f}]): the baseline serves until a challenger beats it "
              "(gates.baseline_serves)")
    rule = Rule("baseline_serves", True, f1["baseline"] - f1["challenger"], 0.0, detail)
    summary = (f"promote: the TF-IDF baseline (macro-F1 {f1['baseline']:.4f}) serves; the best candidate "
               f"{candidate} ({f1['challenger']:.4f}) {how} it (McNemar p={rejected.mcnemar.p_value:.3g})")
    return Decision("promote", "baseline-serves", summary, [rule], rejected.metrics, {}, "challenger",
                    boot, rejected.mcnemar, context={**rejected.context, "candidate": candidate})


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


def _baseline_rule(f1: dict[str, float], boot: BootstrapResult | None = None, tie_to_baseline: bool = False) -> Rule:
    """The challenger must beat the baseline's macro-F1. Against a champion, and for a first
    model with gates.baseline_serves other than when_tied, the point estimate decides (a CI is
    recorded). With when_tied, a first model must be significantly better (the paired
    bootstrap CI above 0): the paired test cannot tell a tie from a gain, and between equals
    the cheaper model, the baseline, serves."""
    if "baseline" not in f1:
        return Rule("baseline", True, None, None,
                    "nothing to compare against: no champion and no baseline")
    delta = f1["challenger"] - f1["baseline"]
    detail = f"challenger macro-F1 {f1['challenger']:.4f} vs baseline {f1['baseline']:.4f}"
    if boot is None:
        return Rule("baseline", delta > 0, delta, 0.0, detail)
    tied = boot.ci_low <= 0 <= boot.ci_high
    if tie_to_baseline:
        detail += f"; bootstrap CI [{boot.ci_low:+.4f}, {boot.ci_high:+.4f}] must be above 0"
        if tied and delta > 0:
            detail += (" (the paired test cannot tell the two apart: the cheaper model, the baseline, is preferred; "
                       "gates.baseline_serves: when_tied)")
        return Rule("baseline", delta > 0 and boot.ci_low > 0, delta, 0.0, detail)
    detail += f"; bootstrap CI [{boot.ci_low:+.4f}, {boot.ci_high:+.4f}] recorded, not required"
    if tied:
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
