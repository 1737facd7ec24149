"""The gates a challenger passes: the offline A/B, export parity and latency, and how a
winner is promoted."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ftops.config.section import Section


class GatesSection(Section):
    min_effect: float = Field(0.0, ge=0, description="macro-F1 gain a challenger must show")
    cheaper_share: float = Field(0.2, gt=0, le=1, description=(
        "a challenger this much faster than the champion (batch-1 p50) that the paired test cannot tell "
        "apart from it is promoted for its cost (non-inferior within noninferiority_margin)"))
    noninferiority_margin: float = Field(0.01, ge=0, le=1, description=(
        "macro-F1 a cheaper challenger may lose at most: the lower end of the paired bootstrap CI must be above -margin"))
    alpha: float = Field(0.05, gt=0, lt=1)
    baseline_serves: Literal["when_tied", "when_better", "never"] = Field("when_tied", description=(
        "with no champion, the TF-IDF baseline is registered and deployed (same export and serving gates) in "
        "place of a first candidate that is not significantly better than it (when_tied: between models the "
        "paired test cannot tell apart the cheaper serves), or only one whose macro-F1 is not above it "
        "(when_better); never: nothing serves until a candidate beats the baseline"))
    slice_tolerance: float = Field(0.02, ge=0, le=1)
    parity_atol: float = Field(1e-4, gt=0)
    p99_ms: float = Field(100.0, gt=0)
    parity_min_agreement: float = Field(0.98, gt=0, le=1, description=(
        "label agreement with PyTorch a quantised / reduced-precision export variant needs"))
    max_f1_loss: float = Field(0.005, ge=0, le=1, description=(
        "macro-F1 an export variant may lose vs PyTorch on the validation + test rows (0.005 = 0.5 pt), judged on the "
        "lower end of the paired bootstrap CI (level 1 - alpha), as the A/B gate judges a cheaper challenger"))
    batch_label_agreement: float = Field(1.0, gt=0, le=1, description=(
        "labels of each text alone vs inside one mixed-length batch; below it = unbatched_only"))
    batch_prob_atol: float = Field(1e-3, gt=0, description=(
        "largest probability change of a text alone vs inside a batch; above it = unbatched_only"))
    unbatched_ok: bool = Field(False, description=(
        "let export select a variant whose answers change with the batch (dynamic int8): it is then served "
        "one text per call, for the best batch-1 latency at less throughput under concurrency"))
    promotion: Literal["direct", "online_ab", "shadow"] = Field("direct", description=(
        "after the offline A/B: direct (deploy behind the serving gates), online_ab (stage it for a "
        "live A/B split, `ftops ab decide` promotes) or shadow (stage it for a shadow copy of traffic)"))
    online_min_feedback: int = Field(200, ge=1, description=(
        "feedback rows each arm of an online A/B or shadow experiment needs before `ftops ab decide` decides"))
