"""What the lifecycle decided: the outcome (`Outcome`, `outcome`: the Prefect state's name
and the line `ftops run` ends with), the JSON summary file a run writes, and the stage rows
and markdown artifact that show it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftops import atomic
from ftops.config import Config

PROMOTED, UNCHANGED = "Promoted", "Unchanged"
REJECTED_AB, REJECTED_EXPORT, REJECTED_DEPLOY = "Rejected at A/B", "Rejected at export", "Rejected at deploy"
SKIPPED = "Skipped"  # a monitor run with no champion to compare traffic with
STAGED = "Staged for online A/B"  # gates.promotion: online_ab | shadow


@dataclass
class Outcome:
    name: str         # the Prefect state name: PROMOTED, REJECTED_AB, ...
    line: str         # one sentence, as printed at the end of `ftops run`
    gate: str | None  # the gate that refused the challenger: "A/B", "export", "deploy"


def outcome(summary: dict) -> Outcome:
    """The lifecycle's answer from its summary (the flow's return value)."""
    decided = summary.get("decision") or {}
    if decided.get("outcome") != "promote":
        first = decided.get("mode") == "no-champion-yet"
        keeps = "nothing serves yet" if first else "the champion keeps serving"
        why = str(decided.get("summary", "no decision")).removeprefix("reject: ")
        return Outcome(REJECTED_AB, f"REJECTED at the A/B gate: {why}; {keeps}", "A/B")
    staged = summary.get("online")
    if staged:
        return Outcome(STAGED, f"STAGED: v{staged['version']} is judged online ({staged['policy']}) against the "
                               "champion; `ftops ab report` shows it, the monitor decides it", None)
    deployed = summary.get("deploy") or {}
    reason = str(deployed.get("reason", ""))
    if deployed.get("gate") == "export" or reason.startswith("export:"):
        return Outcome(REJECTED_EXPORT, f"REJECTED at the export gate: {reason.removeprefix('export: ')}; "
                                        "what serves is unchanged", "export")
    if deployed.get("outcome") == "rejected":
        return Outcome(REJECTED_DEPLOY, f"REJECTED at the deploy gate: {reason}; what serves is unchanged", "deploy")
    version = deployed.get("version") or decided.get("version")
    if deployed.get("outcome") == "unchanged":
        return Outcome(UNCHANGED, f"UNCHANGED: {reason}", None)
    unfinished = deployed.get("unfinished") or []
    rest = f"; {len(unfinished)} unfinished item(s): `ftops reconcile` finishes them" if unfinished else ""
    what = ", the TF-IDF baseline: no candidate beat it" if decided.get("served") == "baseline" else ""
    return Outcome(PROMOTED, f"PROMOTED: v{version} serves as champion ({deployed.get('variant')}{what}): "
                             f"{reason}{rest}", None)


def summary_file(config: Config, flow_run_id: str) -> Path:
    return config.resolved().project.dir / "runs" / f"lifecycle-{flow_run_id}.json"


def save_summary(config: Config, flow_run_id: str, summary: dict) -> Path:
    path = summary_file(config, flow_run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps(summary, indent=2, default=str) + "\n")
    return path


def load_summary(config: Config, flow_run_id: str) -> dict | None:
    """The summary a lifecycle run wrote, or None (it failed first, or ran on another machine)."""
    try:
        return json.loads(summary_file(config, flow_run_id).read_text())
    except (OSError, ValueError):
        return None


def artifact_key(config: Config) -> str:
    """Prefect artifact keys take lowercase letters, digits and dashes only."""
    return "lifecycle-" + (re.sub(r"[^a-z0-9-]+", "-", config.project.name.lower()).strip("-") or "project")


def _f(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def stage_rows(summary: dict) -> list[tuple[str, str]]:
    """(stage, what it found) for the summary table and the artifact."""
    prepared, trained = summary.get("data") or {}, summary.get("train") or {}
    decided, deployed = summary.get("decision") or {}, summary.get("deploy")
    counts = ", ".join(f"{split} {n}" for split, n in (prepared.get("counts") or {}).items())
    data = f"snapshot {prepared.get('snapshot', '-')}: {counts or '-'}"
    if prepared.get("retrain"):
        data += f"; retraining from v{prepared.get('parent_version')} + {prepared.get('feedback_rows', 0)} labelled requests"
    rows = [("data", data)]
    for name, study in (summary.get("tune") or {}).items():
        rows.append(("tune", f"{name}: {study.get('complete', 0)} trials complete, {study.get('pruned', 0)} pruned; "
                             f"best val macro-F1 {_f(study.get('best_val_macro_f1'))} (trial {study.get('best_trial')})"))
    best = trained.get("best")
    scores = (trained.get("candidates") or {}).get(best, {})
    others = ", ".join(f"{name} {_f(s.get('val_macro_f1'))}" for name, s in (trained.get("candidates") or {}).items()
                       if name != best)
    rows.append(("train", f"best {best or '-'}: val macro-F1 {_f(scores.get('val_macro_f1'))}, test macro-F1 "
                          f"{_f(scores.get('test_macro_f1'))}; baseline test macro-F1 "
                          f"{_f(trained.get('baseline_test_macro_f1'))}" + (f"; others (val): {others}" if others else "")))
    f1 = ", ".join(f"{who} {_f(v)}" for who, v in (decided.get("metrics") or {}).items() if v is not None)
    failed = decided.get("failed_rules")
    served = " (the TF-IDF baseline serves: no candidate beat it)" if decided.get("served") == "baseline" else ""
    rows.append(("A/B", f"{decided.get('outcome', '-')} v{decided.get('version', '-')}{served}: macro-F1 {f1 or '-'}"
                        + (f"; failed rules: {', '.join(failed)}" if failed else "")))
    rows += _export_and_deploy_rows(deployed)
    return rows


def _export_and_deploy_rows(deployed: dict | None) -> list[tuple[str, str]]:
    if deployed is None:
        return [("export", "not reached (the A/B gate refused)"), ("deploy", "not reached")]
    if deployed.get("gate") == "export" or not deployed.get("variant"):
        return [("export", f"no variant passed: {str(deployed.get('reason', '')).removeprefix('export: ')}"),
                ("deploy", "not reached")]
    variant = deployed["variant"]
    parity = (deployed.get("variants") or {}).get(variant, {})
    export = (f"{variant}: max |diff| {_f(parity.get('max_abs_diff'), '.2e')}, label agreement "
              f"{_f(parity.get('agreement'), '.4f')}, delta macro-F1 {_f(parity.get('delta_macro_f1'), '+.4f')}")
    load = deployed.get("load") or {}
    figures = (f"; p50 {_f(load.get('p50_ms'), '.1f')} ms, p99 {_f(load.get('p99_ms'), '.1f')} ms "
               f"(SLO {_f(deployed.get('p99_slo_ms'), '.0f')} ms), errors {load.get('errors', '-')}") if load else ""
    rows = [("export", export), ("deploy", f"{deployed.get('outcome')}: {deployed.get('reason', '')}{figures}")]
    rows += [("unfinished", item) for item in deployed.get("unfinished") or []]
    return rows


def markdown(summary: dict) -> str:
    """The Prefect artifact: the decision, the export variants and the deploy gates."""
    result = outcome(summary)
    lines = [f"# Lifecycle: {result.name}", "", result.line, "", "| stage | result |", "|---|---|"]
    lines += [f"| {stage} | {_cell(text)} |" for stage, text in stage_rows(summary)]
    rules = (summary.get("decision") or {}).get("rules") or []
    if rules:
        lines += ["", "## A/B rules", "", "| rule | pass | value | threshold | detail |", "|---|:-:|---:|---:|---|"]
        lines += [f"| {r['name']} | {'yes' if r['passed'] else 'NO'} | {_f(r.get('value'), '.4f')} | "
                  f"{_f(r.get('threshold'), '.4f')} | {_cell(r.get('detail', ''))} |" for r in rules]
    deployed = summary.get("deploy") or {}
    variants = deployed.get("variants") or {}
    if variants:
        lines += ["", "## Export variants (parity gate)", "",
                  "| variant | status | max diff | agreement | delta F1 | p99 ms | reason |", "|---|---|---:|---:|---:|---:|---|"]
        lines += [f"| {name}{' (selected)' if name == deployed.get('variant') else ''} | {v.get('status')} | "
                  f"{_f(v.get('max_abs_diff'), '.2e')} | {_f(v.get('agreement'), '.4f')} | "
                  f"{_f(v.get('delta_macro_f1'), '+.4f')} | {_f(v.get('p99_ms'), '.2f')} | {_cell(v.get('reason', ''))} |"
                  for name, v in variants.items()]
    if deployed.get("gate") == "deploy":
        lines += ["", "## Deploy gates", ""] + _deploy_gate_lines(deployed)
    return "\n".join(lines) + "\n"


def _deploy_gate_lines(deployed: dict) -> list[str]:
    smoke, load = deployed.get("smoke") or {}, deployed.get("load") or {}
    out = []
    if smoke:
        out.append(f"- smoke (Triton's answers = the exported model's): {'passed' if smoke.get('passed') else 'FAILED'}, "
                   f"label agreement {_f(smoke.get('alone_label_agreement'), '.4f')} on {smoke.get('n')} texts, "
                   f"max prob diff {_f(smoke.get('alone_max_prob_diff'), '.2e')}")
    if load:
        out.append(f"- load test: {load.get('requests')} requests at concurrency {load.get('concurrency')}: "
                   f"p50 {_f(load.get('p50_ms'), '.1f')} ms, p99 {_f(load.get('p99_ms'), '.1f')} ms vs SLO "
                   f"{_f(deployed.get('p99_slo_ms'), '.0f')} ms, errors {load.get('errors')}")
    out.append(f"- outcome: {deployed.get('outcome')}: {deployed.get('reason', '')}")
    return out + [f"- unfinished: {item}" for item in deployed.get("unfinished") or []]


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
