import json
import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from ftops import evaluate
from ftops.config import GatesSection
from ftops.evaluate import EvaluationError, Predictions

LABELS = ["neg", "neu", "pos"]


def frame_for(n, domains=None, words=None, seed=0):
    rng = np.random.default_rng(seed)
    words = rng.integers(1, 60, size=n) if words is None else words
    frame = pd.DataFrame({"row": range(1, n + 1), "text": [" ".join(["w"] * int(w)) for w in words]})
    if domains is not None:
        frame["domain"] = domains
    return frame


def probs_for(y_pred, k=3, confidence=0.8):
    probs = np.full((len(y_pred), k), (1 - confidence) / (k - 1))
    probs[np.arange(len(y_pred)), y_pred] = confidence
    return probs


def with_accuracy(y, accuracy, rng, k=3):
    """Predictions wrong on exactly round((1 - accuracy) * n) random rows."""
    pred = y.copy()
    wrong = rng.choice(len(y), size=round((1 - accuracy) * len(y)), replace=False)
    pred[wrong] = (y[wrong] + rng.integers(1, k, size=len(wrong))) % k
    return pred


def model(y, y_pred, frame):
    return Predictions(LABELS, y, probs_for(y_pred), frame)


@pytest.fixture
def rows():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, size=1000)
    domains = np.where(np.arange(1000) < 800, "a", "b")
    return y, frame_for(1000, domains), rng


# ---------------------------------------------------------------- metrics and slices


def test_metrics_on_a_hand_checked_example():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.38, 0.62], [0.3, 0.7], [0.72, 0.28]])
    pred = Predictions(["neg", "pos"], y, probs, frame_for(4))
    m = evaluate.metrics(pred)
    assert m["accuracy"] == 0.5 and m["n"] == 4
    # class neg: P=1/2 R=1/2 F1=1/2; class pos: P=1/2 R=1/2 F1=1/2
    assert m["macro_f1"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred.y_pred, average="macro"))
    assert m["per_class"]["pos"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    # confidences 0.9 (right), 0.62 (wrong) alone in their bins; 0.7 (right) and 0.72
    # (wrong) share the bin (2/3, 11/15]: accuracy 0.5, mean confidence 0.71
    expected = 0.25 * 0.1 + 0.25 * 0.62 + 0.5 * abs(0.5 - 0.71)
    assert m["ece"] == pytest.approx(expected)
    assert m["roc_auc"] == pytest.approx(0.75)


def test_roc_auc_is_none_when_a_class_is_absent():
    y = np.array([0, 1, 0, 1])
    m = evaluate.metrics(Predictions(LABELS, y, probs_for(y), frame_for(4)))
    assert m["roc_auc"] is None and m["per_class"]["pos"]["support"] == 0


def test_slices_by_length_and_domain_and_skip_small_ones():
    words = np.array([5] * 30 + [15] * 30 + [30] * 30 + [50] * 10)
    domains = ["a"] * 50 + ["b"] * 45 + ["c"] * 5
    y = np.arange(100) % 3
    pred = model(y, np.where(np.arange(100) < 50, y, (y + 1) % 3), frame_for(100, domains, words))
    out = evaluate.slices(pred)
    assert set(out) == {"length", "domain"}
    assert {k: v["n"] for k, v in out["length"].items()} == {"<=10": 30, "11-20": 30, "21-40": 30, ">40": 10}
    assert out["length"]["<=10"]["accuracy"] == 1.0 and "macro_f1" in out["length"]["21-40"]
    assert "skipped" in out["length"][">40"]
    assert out["domain"]["a"]["accuracy"] == 1.0 and out["domain"]["b"]["accuracy"] == 0.0
    assert out["domain"]["c"] == {"n": 5, "skipped": "fewer than 20 rows"}
    assert set(evaluate.slices(pred, columns=[])) == {"length"}


def test_free_text_and_id_columns_are_not_slices():
    frame = frame_for(100).assign(user=[f"u{i}" for i in range(100)], label="x", score=1.5)
    assert evaluate.categorical_columns(frame) == []
    with pytest.raises(EvaluationError, match="Cannot slice by user"):
        evaluate.categorical_columns(frame, ["user"])


# ---------------------------------------------------------------- paired tests


def plain_macro_f1(y, p):
    """Macro-F1 over the classes seen in y or p, by counting."""
    tp = Counter(t for t, q in zip(y, p) if t == q)
    true, predicted = Counter(y), Counter(p)
    classes = set(true) | set(predicted)
    return sum(2 * tp[c] / (true[c] + predicted[c]) for c in classes) / len(classes)


def test_paired_bootstrap_matches_a_plain_loop():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, size=60)
    a, b = with_accuracy(y, 0.6, rng), with_accuracy(y, 0.8, rng)
    assert plain_macro_f1(list(y), list(a)) == pytest.approx(f1_score(y, a, average="macro"))
    result = evaluate.paired_bootstrap(y, a, b, resamples=1200, seed=3, alpha=0.1)
    draws = np.random.default_rng(3)
    deltas = []
    for _ in range(1200):  # same seed, same indices, one resample at a time
        idx = draws.integers(0, 60, size=60)
        yy = list(y[idx])
        deltas.append(plain_macro_f1(yy, list(b[idx])) - plain_macro_f1(yy, list(a[idx])))
    assert result.delta == pytest.approx(plain_macro_f1(list(y), list(b)) - plain_macro_f1(list(y), list(a)))
    assert [result.ci_low, result.ci_high] == pytest.approx(list(np.quantile(deltas, [0.05, 0.95])))
    assert result.p_value == pytest.approx(sum(d <= 0 for d in deltas) / 1200)
    assert result.resamples == 1200 and result.ci_low < result.delta < result.ci_high


def test_mcnemar_matches_the_binomial_by_hand():
    y = np.zeros(40, dtype=int)
    a = np.array([0] * 12 + [1] * 4 + [0] * 20 + [1] * 4)  # right on rows 0-11 and 16-35
    b = np.array([1] * 12 + [0] * 4 + [0] * 20 + [1] * 4)  # right on rows 12-35
    result = evaluate.mcnemar(y, a, b)
    assert (result.b01, result.b10) == (12, 4)
    expected = 2 * sum(math.comb(16, i) for i in range(5)) / 2 ** 16
    assert result.p_value == pytest.approx(expected) and result.statistic == 4
    assert evaluate.mcnemar(y, a, a).p_value == 1.0


# ---------------------------------------------------------------- decisions


def test_a_truly_better_challenger_is_promoted_and_the_reverse_rejected(rows):
    y, frame, rng = rows
    strong, weak = model(y, with_accuracy(y, 0.9, rng), frame), model(y, with_accuracy(y, 0.75, rng), frame)
    up = evaluate.compare(strong, weak, GatesSection())
    assert up.outcome == "promote", up.summary
    assert [r.name for r in up.rules] == ["effect", "significance", "cost", "slices"]
    down = evaluate.compare(weak, strong, GatesSection())
    assert down.outcome == "reject" and "significantly worse" in down.summary
    assert not next(r for r in down.rules if r.name == "effect").passed


def test_identical_models_are_not_significantly_different(rows):
    y, frame, rng = rows
    same = model(y, with_accuracy(y, 0.8, rng), frame)
    decision = evaluate.compare(same, same, GatesSection())
    assert decision.outcome == "reject" and "no significant difference" in decision.summary


def costs(challenger_ms: float, champion_ms: float, params: float = 4.4e6) -> dict[str, dict[str, float]]:
    return {"challenger": {"p50_ms": challenger_ms, "params": params}, "champion": {"p50_ms": champion_ms, "params": 22.7e6}}


def test_between_equals_the_cheaper_challenger_is_promoted_for_its_cost(rows):
    y, frame, rng = rows
    pred = with_accuracy(y, 0.8, rng)
    champion = model(y, pred, frame)
    flipped = pred.copy()
    flipped[:4] = (flipped[:4] + 1) % 3  # four rows differ: the paired test cannot tell them apart
    challenger = model(y, flipped, frame)
    cheaper = evaluate.compare(challenger, champion, GatesSection(), costs=costs(3.0, 12.0))
    assert cheaper.outcome == "promote", cheaper.summary
    assert "the cheaper model serves" in cheaper.summary
    cost = next(r for r in cheaper.rules if r.name == "cost")
    assert cost.passed and cost.value == 0.25 and "x0.25" in cost.detail
    assert all("waived by the cost rule" in r.detail for r in cheaper.rules if r.name in ("effect", "significance"))
    barely = evaluate.compare(challenger, champion, GatesSection(), costs=costs(11.0, 12.0))
    assert barely.outcome == "reject" and "no significant difference" in barely.summary  # 8% faster: not enough
    unknown = evaluate.compare(challenger, champion, GatesSection())
    assert unknown.outcome == "reject" and "no batch-1 latency" in next(r for r in unknown.rules if r.name == "cost").detail
    same_size = evaluate.compare(challenger, champion, GatesSection(), costs=costs(3.0, 12.0, params=22.7e6))
    assert same_size.outcome == "reject"  # as large as the champion: a faster timing is noise, not a saving


def test_a_cheaper_but_worse_challenger_is_not_promoted(rows):
    y, frame, rng = rows
    champion, worse = model(y, with_accuracy(y, 0.85, rng), frame), model(y, with_accuracy(y, 0.8, rng), frame)
    decision = evaluate.compare(worse, champion, GatesSection(), costs=costs(1.0, 12.0))
    assert decision.outcome == "reject"
    cost = next(r for r in decision.rules if r.name == "cost")
    assert not cost.passed and "not above -0.0100" in cost.detail


def test_min_effect_gate(rows):
    y, frame, rng = rows
    strong, weak = model(y, with_accuracy(y, 0.9, rng), frame), model(y, with_accuracy(y, 0.75, rng), frame)
    decision = evaluate.compare(strong, weak, GatesSection(min_effect=0.3))
    assert decision.outcome == "reject"
    assert [r.name for r in decision.rules if not r.passed] == ["effect", "cost"]  # nor cheaper


def test_a_regression_on_a_protected_slice_rejects(rows):
    y, frame, rng = rows
    on_a = frame["domain"].to_numpy() == "a"
    challenger_pred = np.where(on_a, with_accuracy(y, 0.97, rng), with_accuracy(y, 0.55, rng))
    challenger, champion = model(y, challenger_pred, frame), model(y, with_accuracy(y, 0.75, rng), frame)
    decision = evaluate.compare(challenger, champion, GatesSection())
    assert decision.outcome == "reject"
    assert [r.name for r in decision.rules if not r.passed] == ["slices"]
    slices = next(r for r in decision.rules if r.name == "slices")
    assert "domain=b" in slices.detail and decision.slices["domain=b"]["delta"] < -0.1
    only_a = evaluate.compare(challenger, champion, GatesSection(), protected=["domain=a"])
    assert only_a.outcome == "promote", only_a.summary
    with pytest.raises(EvaluationError, match="no categorical column 'region'"):
        evaluate.compare(challenger, champion, GatesSection(), protected=["region"])


def test_first_model_against_the_baseline(rows):
    y, frame, rng = rows
    good, baseline = model(y, with_accuracy(y, 0.8, rng), frame), model(y, with_accuracy(y, 0.6, rng), frame)
    assert evaluate.compare(good, None, GatesSection(), baseline=baseline).outcome == "promote"
    worse = evaluate.compare(baseline, None, GatesSection(), baseline=good)
    assert worse.outcome == "reject" and worse.mode == "no-champion-yet"
    assert [r.name for r in worse.rules] == ["baseline"] and worse.bootstrap.delta < 0
    alone = evaluate.compare(good, None, GatesSection())
    assert alone.outcome == "promote" and "nothing to compare against" in alone.rules[0].detail


def test_a_first_model_the_paired_test_cannot_tell_from_the_baseline_yields_to_it(rows):
    """Between equals the cheaper model serves: with the default gates.baseline_serves, a first
    model a few rows better than the baseline is not enough; `when_better` keeps the point estimate."""
    y, frame, rng = rows
    base = with_accuracy(y, 0.7, rng)
    better = base.copy()
    fixed, broken = np.flatnonzero(base != y)[:20], np.flatnonzero(base == y)[:14]  # 6 more right of 1000
    better[fixed] = y[fixed]
    better[broken] = (y[broken] + 1) % 3
    tied = evaluate.compare(model(y, better, frame), None, GatesSection(), baseline=model(y, base, frame))
    (rule,) = tied.rules
    assert tied.bootstrap.delta > 0 and tied.bootstrap.ci_low <= 0 and not rule.passed
    assert tied.outcome == "reject" and "the cheaper model, the baseline, is preferred" in rule.detail
    served = evaluate.baseline_serves(tied, "v1")
    assert served.outcome == "promote" and "is not significantly better than" in served.rules[0].detail
    point = evaluate.compare(model(y, better, frame), None, GatesSection(baseline_serves="when_better"),
                             baseline=model(y, base, frame))
    assert point.outcome == "promote" and "judged on its point estimate" in point.rules[0].detail
    assert evaluate.baseline_serves(point, "v1") is None


def test_champion_and_baseline_together(rows):
    y, frame, rng = rows
    strong, weak = model(y, with_accuracy(y, 0.9, rng), frame), model(y, with_accuracy(y, 0.75, rng), frame)
    decision = evaluate.compare(strong, weak, GatesSection(), baseline=weak)
    assert decision.outcome == "promote" and decision.rules[-1].name == "baseline"


def test_mismatched_rows_are_refused(rows):
    y, frame, rng = rows
    pred = with_accuracy(y, 0.8, rng)
    challenger = model(y, pred, frame)
    shorter = model(y[:999], pred[:999], frame.iloc[:999])
    with pytest.raises(EvaluationError, match="the challenger has 1000 rows, the champion 999"):
        evaluate.compare(challenger, shorter, GatesSection())
    shuffled = model(y, pred, frame.assign(row=frame["row"].to_numpy()[::-1]))
    with pytest.raises(EvaluationError, match="same evaluation rows in the same order"):
        evaluate.compare(challenger, None, GatesSection(), baseline=shuffled)


def test_decision_json_and_markdown(rows, tmp_path):
    y, frame, rng = rows
    strong, weak = model(y, with_accuracy(y, 0.9, rng), frame), model(y, with_accuracy(y, 0.75, rng), frame)
    decision = evaluate.compare(strong, weak, GatesSection(), baseline=weak, resamples=500)
    decision.context.update(challenger="m@3", p99_ms=np.float32(12.5))
    loaded = json.loads(decision.to_json())
    assert loaded["outcome"] == "promote" and loaded["bootstrap"]["resamples"] == 500
    assert loaded["metrics"]["champion"]["per_class"]["neg"]["support"] == int((y == 0).sum())
    assert loaded["context"]["p99_ms"] == 12.5
    markdown = decision.to_markdown()
    assert "promote" in markdown.splitlines()[0]
    for rule in decision.rules:
        assert f"| {rule.name} |" in markdown
    assert "domain=b" in markdown
    json_path, md_path = decision.write(tmp_path / "out")
    assert json.loads(json_path.read_text()) == loaded and md_path.read_text() == markdown
