"""Evaluation: metrics, slices, paired significance tests and the promotion decision, all
pure functions of predictions already made (no model loading, no MLflow).

metrics: one model's numbers, overall and per slice (Predictions, EvaluationError).
stats: paired bootstrap and McNemar; the chunked bootstrap other reports reuse.
rules: `compare`, the promotion rules against the champion or the baseline; `baseline_serves`,
  the record of the baseline taking the place of a first model that did not beat it.
record: the Decision and its rules, written as decision.json + .md.
"""

from __future__ import annotations

from ftops.evaluate.metrics import EvaluationError, Predictions, categorical_columns, metrics, slices
from ftops.evaluate.record import Decision, Rule
from ftops.evaluate.rules import baseline_serves, compare
from ftops.evaluate.stats import mcnemar, paired_bootstrap

__all__ = ["Decision", "EvaluationError", "Predictions", "Rule", "baseline_serves", "categorical_columns", "compare",
           "mcnemar",
           "metrics", "paired_bootstrap", "slices"]
