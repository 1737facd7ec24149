"""Traffic policies of the gateway and the online A/B report.

A policy decides, per request, which route answers the caller and whether the challenger
gets a shadow copy. One small class per policy behind `POLICIES` (same shape for each):
`champion` (everything to the champion), `ab` (a share to the challenger, sticky per user
key) and `shadow` (the champion answers, the challenger sees a copy). Without a challenger
route, `ab` and `shadow` fall back to the champion and say so.

`ab_report` turns logged rows with feedback into per-arm numbers and a significance test:
unpaired for A/B (the arms answer different requests), paired for shadow (same requests).
Fallbacks (the challenger failed, the champion answered: `fallback_from` on the row) are
counted for the arm they were assigned to and left out of both arms' numbers: the answer
is not the challenger's, and the user was not in the champion's arm.
`report_rows` reads its input: a bounded window of the log, in chunks, only the columns used.

A running experiment (ftops.online: `ftops ab start`) is recorded in
`<project>/triton/experiment.json` (policy, share, challenger, started_at); `LivePolicy`
is the gateway's policy that follows it, re-read like routing.json, so starting or
stopping an experiment needs no gateway restart. Without the record the gateway uses
`serving.traffic`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from scipy.stats import norm

from ftops import predlog
from ftops.config import Config, ServingSection
from ftops.names import CHALLENGER, CHAMPION
from ftops.evaluate.stats import BATCH_METRICS, _confusions, mcnemar, paired_bootstrap

REPORT_COLUMNS = ("request_id", "route", "prediction", "feedback", "latency_ms", "model", "version", "fallback_from")
REPORT_MAX_ROWS = 200_000  # newest log rows a report reads when no row count is given
EXPERIMENT_FILE = "experiment.json"  # in <project>/triton, beside routing.json
log = logging.getLogger(__name__)
NO_CHALLENGER = "no challenger route: all traffic goes to the champion (stage a challenger to split or mirror it)"


@dataclass(frozen=True)
class Assignment:
    route: str  # the route that answers the caller: "champion" or "challenger"
    shadow: bool = False  # whether the challenger also gets a copy
    note: str | None = None  # why the policy did not do what it is configured to


class Policy:
    """Base: `assign(user_key, has_challenger)`; subclasses define `choose`."""

    name: ClassVar[str]
    needs_challenger: ClassVar[bool] = True

    def assign(self, user_key: str | None, has_challenger: bool) -> Assignment:
        if self.needs_challenger and not has_challenger:
            return Assignment(CHAMPION, note=NO_CHALLENGER)
        return self.choose(user_key)

    def choose(self, user_key: str | None) -> Assignment:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


class ChampionPolicy(Policy):
    name = "champion"
    needs_challenger = False

    def choose(self, user_key: str | None) -> Assignment:
        return Assignment(CHAMPION)


class ABPolicy(Policy):
    """`share` of users to the challenger. A user key hashes to a fixed point in [0, 1), so
    the same key always lands in the same arm (and raising the share only moves users from
    champion to challenger); requests without a key are split at random, each on its own."""

    name = "ab"

    def __init__(self, share: float, salt: str = "", rng: random.Random | None = None):
        self.share, self.salt = share, salt
        self.rng = rng or random.Random()

    def bucket(self, user_key: str) -> float:
        digest = hashlib.sha256(f"{self.salt}:{user_key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2.0 ** 64

    def choose(self, user_key: str | None) -> Assignment:
        point = self.rng.random() if user_key is None else self.bucket(user_key)
        return Assignment(CHALLENGER if point < self.share else CHAMPION)

    def describe(self) -> str:
        return f"ab ({self.share:.0%} to the challenger)"


class ShadowPolicy(Policy):
    name = "shadow"

    def choose(self, user_key: str | None) -> Assignment:
        return Assignment(CHAMPION, shadow=True)


POLICIES: dict[str, type[Policy]] = {p.name: p for p in (ChampionPolicy, ABPolicy, ShadowPolicy)}


def make_policy(serving: ServingSection, salt: str = "") -> Policy:
    """The configured policy; `salt` (the project name) keeps projects' splits independent."""
    if serving.traffic == "ab":
        return ABPolicy(serving.ab_share, salt)
    return POLICIES[serving.traffic]()


# ---------------------------------------------------------------- the running experiment


def experiment_file(config: Config) -> Path:
    return config.resolved().project.dir / "triton" / EXPERIMENT_FILE


def read_experiment(path: Path) -> dict | None:
    """The running experiment's record, None when none runs (written atomically by ftops.online)."""
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def experiment_policy(experiment: dict | None, serving: ServingSection, salt: str = "") -> Policy:
    """The experiment's policy (ab with its share, or shadow), else the configured one."""
    if experiment is None:
        return make_policy(serving, salt)
    if experiment["policy"] == "ab":
        return ABPolicy(float(experiment["share"]), salt)
    return POLICIES[experiment["policy"]]()


class LivePolicy:
    """The gateway's policy: the running experiment's, else `serving.traffic`; the record is
    re-read at most every `every_s` seconds (serving.route_refresh_s, as routing.json), so
    `ftops ab start / stop` take effect without a restart, which would refuse requests. A
    record caught unreadable keeps the last policy. Same surface as a Policy."""

    def __init__(self, serving: ServingSection, path: Path, salt: str = "", every_s: float = 0.5):
        self.serving, self.path, self.salt, self.every_s = serving, path, salt, every_s
        self._policy = make_policy(serving, salt)
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    @classmethod
    def for_config(cls, config: Config) -> LivePolicy:
        return cls(config.serving, experiment_file(config), config.project.name, config.serving.route_refresh_s)

    def current(self) -> Policy:
        if time.monotonic() - self._read_at >= self.every_s:
            with self._lock:
                if time.monotonic() - self._read_at >= self.every_s:
                    self._policy = self._read()
                    self._read_at = time.monotonic()
        return self._policy

    def _read(self) -> Policy:
        try:
            return experiment_policy(read_experiment(self.path), self.serving, self.salt)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("cannot read the experiment record %s (%s); keeping the policy %s", self.path, exc,
                        self._policy.describe())
            return self._policy

    @property
    def name(self) -> str:
        return self.current().name

    def assign(self, user_key: str | None, has_challenger: bool) -> Assignment:
        return self.current().assign(user_key, has_challenger)

    def describe(self) -> str:
        return self.current().describe()


# ---------------------------------------------------------------- the online A/B report


def report_rows(eng, since=None, last: int | None = None, max_rows: int = REPORT_MAX_ROWS) -> pd.DataFrame:
    """The rows `ab_report` reads: those logged since `since`, the newest `last` of them
    (`max_rows` when no count is given, so a years-long log is never read whole), with only
    the columns the report uses, fetched in chunks."""
    return predlog.read(eng, last=max_rows if last is None else last, since=since, routes=predlog.ROUTES,
                        columns=REPORT_COLUMNS)


def ab_report(frame: pd.DataFrame, alpha: float = 0.05, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Per-arm numbers and tests from prediction-log rows (`report_rows`, or any frame with
    its columns).

    `ab`: champion vs challenger rows that answered callers (unpaired tests); each arm's
    `fallbacks` counts its requests the champion answered instead, which are in no arm's numbers.
    `shadow`: champion answers vs the shadow answers to the same requests (paired tests).
    Either is None when the log has no such traffic. Metrics use rows with feedback;
    latency uses every row of the arm.
    """
    labels = _label_codes(frame)
    return {"alpha": alpha, "labels": labels,
            "ab": _ab_section(frame, labels, alpha, resamples, seed),
            "shadow": _shadow_section(frame, labels, alpha, resamples, seed)}


def _label_codes(frame: pd.DataFrame) -> list[str]:
    seen = set(frame["prediction"].dropna()) | set(frame["feedback"].dropna()) if len(frame) else set()
    return sorted(seen)


def _ab_section(frame: pd.DataFrame, labels: list[str], alpha: float, resamples: int, seed: int) -> dict | None:
    assigned = fallback_from(frame)
    arms = {arm: frame[(frame["route"] == arm) & assigned.isna()] for arm in (CHAMPION, CHALLENGER)}
    fallbacks = {arm: int((assigned == arm).sum()) for arm in arms}
    if arms[CHALLENGER].empty and not fallbacks[CHALLENGER]:
        return None
    summary = {arm: {**arm_summary(rows, labels, alpha, resamples, seed), "fallbacks": fallbacks[arm]}
               for arm, rows in arms.items()}
    judged = {arm: _with_feedback(rows) for arm, rows in arms.items()}
    test = unpaired_test(*(judged[a] for a in (CHAMPION, CHALLENGER)), labels, alpha, resamples, seed)
    return {"arms": summary, "test": test}


def _shadow_section(frame: pd.DataFrame, labels: list[str], alpha: float, resamples: int, seed: int) -> dict | None:
    shadow = frame[frame["route"] == "shadow"]
    if shadow.empty:
        return None
    served = frame[(frame["route"] == CHAMPION) & frame["request_id"].isin(set(shadow["request_id"]))]
    summary = {CHAMPION: arm_summary(served, labels, alpha, resamples, seed),
               "shadow": arm_summary(shadow, labels, alpha, resamples, seed)}
    pairs = _with_feedback(served)[["request_id", "prediction", "feedback"]].merge(
        shadow[["request_id", "prediction"]], on="request_id", suffixes=("_champion", "_shadow"))
    return {"arms": summary, "test": paired_test(pairs, labels, alpha, resamples, seed)}


def fallback_from(frame: pd.DataFrame) -> pd.Series:
    """Per row, the route it was assigned when the champion answered instead; None (NaN) for
    the rest, and for every row of a log older than the column."""
    if "fallback_from" not in frame:
        return pd.Series(None, index=frame.index, dtype=object)
    return frame["fallback_from"].where(frame["fallback_from"].notna(), None)


def _with_feedback(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["feedback"].notna()]


def _codes(values: pd.Series, labels: list[str]) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    return np.array([index[v] for v in values], dtype=int)


def arm_summary(rows: pd.DataFrame, labels: list[str], alpha: float, resamples: int, seed: int) -> dict[str, Any]:
    """Requests, models seen, latency p50/p99 and, on rows with feedback, accuracy and
    macro-F1 with percentile bootstrap CIs."""
    judged = _with_feedback(rows)
    latency = rows["latency_ms"].to_numpy(dtype=float)
    out: dict[str, Any] = {
        "requests": int(len(rows)), "n": int(len(judged)),
        "models": sorted(set(rows["model"])), "versions": sorted({v for v in rows["version"] if v is not None}),
        "p50_ms": float(np.percentile(latency, 50)) if len(latency) else None,
        "p99_ms": float(np.percentile(latency, 99)) if len(latency) else None,
    }
    for metric in BATCH_METRICS:
        out[metric] = out[f"{metric}_ci"] = None
    if len(judged):
        y, p = _codes(judged["feedback"], labels), _codes(judged["prediction"], labels)
        for metric in BATCH_METRICS:
            value, low, high = bootstrap_ci(y, p, len(labels), metric, alpha, resamples, seed)
            out[metric], out[f"{metric}_ci"] = value, [low, high]
    return out


def bootstrap_ci(y: np.ndarray, p: np.ndarray, k: int, metric: str, alpha: float, resamples: int,
                 seed: int) -> tuple[float, float, float]:
    """A metric and its percentile bootstrap interval (rows resampled with replacement)."""
    value, draws = _bootstrap(y, p, k, metric, resamples, np.random.default_rng(seed))
    low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    return value, float(low), float(high)


def _bootstrap(y: np.ndarray, p: np.ndarray, k: int, metric: str, resamples: int,
               rng: np.random.Generator) -> tuple[float, np.ndarray]:
    score, codes, n = BATCH_METRICS[metric], y * k + p, len(y)
    value = float(score(_confusions(codes, np.arange(n)[None, :], k))[0])
    draws = [score(_confusions(codes, rng.integers(0, n, size=(min(500, resamples - s), n)), k))
             for s in range(0, resamples, 500)]
    return value, np.concatenate(draws)


def unpaired_test(a: pd.DataFrame, b: pd.DataFrame, labels: list[str], alpha: float, resamples: int,
                  seed: int) -> dict[str, Any]:
    """Challenger (b) vs champion (a) on different requests: a pooled two-proportion z-test
    on accuracy, and a bootstrap CI of the macro-F1 difference resampling each arm on its own."""
    if a.empty or b.empty:
        return {"test": "two-proportion z", "p_value": None,
                "reason": "an arm has no rows with feedback yet"}
    k = len(labels)
    ya, pa = _codes(a["feedback"], labels), _codes(a["prediction"], labels)
    yb, pb = _codes(b["feedback"], labels), _codes(b["prediction"], labels)
    z, p_value = two_proportion_z(int((ya == pa).sum()), len(ya), int((yb == pb).sum()), len(yb))
    rng = np.random.default_rng(seed)
    f1_a, draws_a = _bootstrap(ya, pa, k, "macro_f1", resamples, rng)
    f1_b, draws_b = _bootstrap(yb, pb, k, "macro_f1", resamples, rng)
    diff = draws_b - draws_a
    low, high = np.quantile(diff, [alpha / 2, 1 - alpha / 2])
    share = min(1.0, 2 * min(float(np.mean(diff <= 0)), float(np.mean(diff >= 0))))
    return {"test": "two-proportion z (accuracy)", "accuracy_delta": float((yb == pb).mean() - (ya == pa).mean()),
            "z": z, "p_value": p_value, "macro_f1_delta": f1_b - f1_a,
            "macro_f1_delta_ci": [float(low), float(high)], "macro_f1_p_value": share,
            "significant": bool(p_value < alpha)}


def two_proportion_z(hits_a: int, n_a: int, hits_b: int, n_b: int) -> tuple[float, float]:
    """Pooled z statistic of p_b - p_a and its two-sided p-value (equals Pearson's
    chi-square on the 2x2 table without continuity correction)."""
    pooled = (hits_a + hits_b) / (n_a + n_b)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        return 0.0, 1.0
    z = (hits_b / n_b - hits_a / n_a) / se
    return float(z), float(2 * norm.sf(abs(z)))


def paired_test(pairs: pd.DataFrame, labels: list[str], alpha: float, resamples: int, seed: int) -> dict[str, Any]:
    """Shadow vs champion on the same requests: exact McNemar on accuracy and the paired
    bootstrap of the macro-F1 difference (ftops.evaluate)."""
    if pairs.empty:
        return {"test": "McNemar (paired)", "p_value": None,
                "reason": "no request has both a champion and a shadow answer with feedback"}
    y = _codes(pairs["feedback"], labels)
    champion, shadow = _codes(pairs["prediction_champion"], labels), _codes(pairs["prediction_shadow"], labels)
    mc = mcnemar(y, champion, shadow)
    boot = paired_bootstrap(y, champion, shadow, "macro_f1", resamples, seed, alpha)
    return {"test": "McNemar (paired)", "pairs": int(len(pairs)),
            "accuracy_delta": float((shadow == y).mean() - (champion == y).mean()),
            "b01": mc.b01, "b10": mc.b10, "p_value": mc.p_value, "macro_f1_delta": boot.delta,
            "macro_f1_delta_ci": [boot.ci_low, boot.ci_high], "macro_f1_p_value": boot.p_two_sided,
            "agreement": float((champion == shadow).mean()), "significant": bool(mc.p_value < alpha)}
