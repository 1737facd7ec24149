"""Online A/B and shadow experiments from the CLI (`ftops ab start / report / decide / stop`)
against a real tritonserver, the real gateway process and a real MLflow registry on
SQLite: the challenger is staged and gets its share (or a copy) of live traffic, labels
come back on /feedback, and the decision promotes through the serving gates or rejects,
recorded like the offline one. Tiny exports (tests/test_serving.py) keep it quick."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml
from test_serving import TEXTS, make_export
from typer.testing import CliRunner

from ftops import online, predlog, registry
from ftops.cli import app
from ftops.config import Config, ServingSection, load_config
from ftops.serve import deploy, gateway, traffic
from ftops.serve.triton import server
from ftops.serve.deployable import Deployable

MIN_FEEDBACK = 30
POOL = list(dict.fromkeys(TEXTS)) + [f"flight {i} was {w}" for i in range(10) for w in ("late", "fine", "awful")]


# ------------------------------------------------------------ no server


def test_live_policy_follows_the_experiment_record(tmp_path):
    record = tmp_path / "experiment.json"
    live = traffic.LivePolicy(ServingSection(traffic="champion"), record, salt="p", every_s=0)
    assert live.describe() == "champion" and live.assign("u", True).route == "champion"
    record.write_text(json.dumps({"policy": "ab", "share": 1.0}))
    assert live.name == "ab" and live.describe() == "ab (100% to the challenger)"
    assert live.assign("u", True).route == "challenger" and live.assign("u", False).route == "champion"
    record.write_text('{"policy": "ab", "sha')  # caught mid-write (not atomic): the last policy stays
    assert live.describe() == "ab (100% to the challenger)"
    record.write_text(json.dumps({"policy": "shadow", "share": None}))
    assert live.assign("u", True) == traffic.Assignment("champion", shadow=True)
    record.unlink()
    assert live.describe() == "champion"
    slow = traffic.LivePolicy(ServingSection(traffic="shadow"), record, every_s=3600)
    assert slow.describe() == "shadow"
    record.write_text(json.dumps({"policy": "ab", "share": 0.5}))
    assert slow.describe() == "shadow"  # re-read at most every every_s


def test_feedback_counts_leave_fallbacks_out_and_pair_shadow_answers():
    rows = [("a", "champion", "x", None), ("b", "challenger", "x", None), ("c", "champion", "x", "challenger"),
            ("d", "challenger", None, None), ("e", "champion", "x", None)]
    frame = pd.DataFrame(rows, columns=["request_id", "route", "feedback", "fallback_from"])
    assert online.feedback_counts(frame, online.AB) == {"champion": 2, "challenger": 1}
    shadow = pd.DataFrame([("a", "champion", "x"), ("a", "shadow", None), ("b", "champion", "x"),
                           ("c", "champion", None), ("c", "shadow", None)],
                          columns=["request_id", "route", "feedback"])
    # a shadow row written after its label has none; the served row's label pairs it
    assert online.feedback_counts(shadow, online.SHADOW) == {"paired": 1}


def synthetic(hit_rates: dict[str, float], n: int = 120, fallbacks: int = 0) -> pd.DataFrame:
    """Logged A/B rows with feedback: each arm right at its hit rate."""
    import numpy as np

    rng, labels, rows = np.random.default_rng(1), ["negative", "neutral", "positive"], []
    for arm, rate in hit_rates.items():
        for i in range(n):
            truth = labels[i % 3]
            said = truth if rng.random() < rate else labels[(i + 1) % 3]
            rows.append({"request_id": f"{arm}-{i}", "route": arm, "prediction": said, "feedback": truth,
                         "latency_ms": 3.0, "model": arm, "version": None, "fallback_from": None})
    for i in range(fallbacks):
        rows.append({"request_id": f"fb-{i}", "route": "champion", "prediction": "neutral", "feedback": None,
                     "latency_ms": 3.0, "model": "champion", "version": None, "fallback_from": "challenger"})
    return pd.DataFrame(rows)


def test_the_online_rules_hold_the_figures_to_the_gates(tmp_path):
    cfg = Config.model_validate({"project": {"dir": str(tmp_path)}, "gates": {"min_effect": 0.05}})
    experiment = online.Experiment("v2-x", "2", "ab", 0.5, "v2", "challenger", "e", "v1", "champion", "1", None,
                                   "2026-01-01T00:00:00+00:00")

    def rules(frame):
        figures = traffic.ab_report(frame, alpha=cfg.gates.alpha, resamples=300)["ab"]
        return {r.name: r.passed for r in online.judge(cfg, experiment, figures)}

    assert rules(synthetic({"champion": 0.5, "challenger": 0.9})) == {"effect": True, "significance": True,
                                                                      "fallbacks": True}
    assert rules(synthetic({"champion": 0.9, "challenger": 0.5})) == {"effect": False, "significance": False,
                                                                      "fallbacks": True}
    close = rules(synthetic({"champion": 0.70, "challenger": 0.72}))  # no significant difference: not a win
    assert not close["significance"]
    failing = rules(synthetic({"champion": 0.5, "challenger": 0.9}, fallbacks=3))  # max_error_rate 0
    assert failing == {"effect": True, "significance": True, "fallbacks": False}


# ------------------------------------------------------------ real Triton, gateway, MLflow


def register(config: Config) -> str:
    """A registry version with a small `model/` artifact (no training)."""
    import mlflow

    from ftops import tracking

    tracking.use_project(config)
    source = config.resolved().project.dir / "model-src"
    source.mkdir(parents=True, exist_ok=True)
    (source / "ftops.json").write_text('{"labels": ["negative", "neutral", "positive"]}')
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(source), "model")
    return registry.register(config, run.info.run_id).version


def export_of(config: Config, version: str, seed: int) -> Path:
    """A tiny export under <project>/exports that names its registry version, as `ftops export` writes it."""
    folder = make_export(config.resolved().project.dir / "exports" / f"v{version}-test", seed)
    manifest = json.loads((folder / "export.json").read_text())
    manifest["source"] = {"registry_version": version}
    (folder / "export.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Triton with v1 as champion behind the gateway (champion traffic); v2..v4 registered
    with their exports. The tiny random models answer one label each (seeds 0, 2, 4, 1:
    positive, negative, neutral, positive), so labels can make any of them right or wrong."""
    saved = dict(os.environ)  # a gateway (re)start exports the project's variables here
    root = tmp_path_factory.mktemp("online")
    path = root / "onl.yaml"
    path.write_text(yaml.safe_dump({
        "project": {"dir": str(root / "proj"), "name": "onl"},
        "gates": {"p99_ms": 60000, "online_min_feedback": MIN_FEEDBACK},
        "serving": {"http_port": 0, "grpc_port": 0, "metrics_port": 0, "gateway_port": 0, "load_requests": 10,
                    "load_warmup": 0, "load_concurrency": 1, "log_flush_ms": 50, "route_refresh_s": 0.2},
        "supervisor": {"enabled": False}}))
    cfg = load_config(path)
    versions = [register(cfg) for _ in range(4)]
    exports = {v: export_of(cfg, v, seed) for v, seed in zip(versions, (0, 2, 4, 1))}
    models = {v: Deployable.from_export(e) for v, e in exports.items()}
    answers = {v: [m.labels[i] for i in deploy.reference_probs(m, POOL).argmax(axis=1)] for v, m in models.items()}
    for one, other in (("1", "2"), ("2", "3")):  # the pairs compared: right and wrong on every text
        assert all(a != b for a, b in zip(answers[one], answers[other]))
    server.start(cfg)
    try:
        assert deploy.deploy(cfg, exports["1"], TEXTS[:16], version="1").outcome == deploy.PROMOTED
        info = gateway.start(cfg)
        with httpx.Client(base_url=info.url, timeout=30) as client:  # the champion served before any experiment
            for text in POOL[:16]:
                assert client.post("/predict", json={"text": text}).status_code == 200
        yield cfg, path, answers
    finally:
        if online.current(cfg) is not None:
            online.stop(cfg, "end of the test module")
        gateway.stop(cfg)
        server.stop(cfg)
        os.environ.clear()
        os.environ.update(saved)
    assert gateway.status(cfg) is None and server.status(cfg) is None


def cli(path: Path, *args: str):
    return CliRunner().invoke(app, [*args, "--config", str(path)], terminal_width=250)


def said(result) -> str:
    """A command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def health(cfg: Config) -> dict:
    answer = gateway.probe(gateway.status(cfg).url)
    assert answer is not None
    return answer[1]


def send(cfg: Config, truth: dict[str, str], until, start: int = 0, cap: int = 400) -> list[dict]:
    """/predict texts of the pool with a user key each, /feedback with truth[winner's answer
    text], until `until(answers)`; the answers."""
    answers = []
    with httpx.Client(base_url=gateway.status(cfg).url, timeout=30) as client:
        for i in range(start, start + cap):
            if until(answers):
                break
            text = POOL[i % len(POOL)]
            answer = client.post("/predict", json={"text": text, "user": f"user-{i}"}).json()
            labelled = client.post("/feedback", json={"request_id": answer["request_id"], "label": truth[text]})
            assert labelled.status_code == 200, labelled.text
            answers.append(answer)
    return answers


def per_route(answers: list[dict], route: str) -> int:
    return sum(a["route"] == route for a in answers)


def truth_of(answers: dict[str, list[str]], version: str) -> dict[str, str]:
    return dict(zip(POOL, answers[version]))


def test_ab_start_splits_traffic_and_decide_waits_for_feedback(stack):
    cfg, path, answers = stack
    result = cli(path, "ab", "start", "--version", "2", "--share", "0.5")
    assert result.exit_code == 0, result.output
    assert "STARTED v2 (ab, 50% to the challenger)" in said(result)
    routes = deploy.routing(cfg)
    assert routes["challenger"].version == "2" and routes["champion"].version == "1"
    assert registry.aliases(cfg) == {"champion": "1", "challenger": "2"}
    experiment = online.current(cfg)
    assert experiment.policy == "ab" and experiment.share == 0.5 and experiment.champion_tag == "v1"
    assert Path(experiment.export) == cfg.resolved().project.dir / "exports" / "v2-test"  # reused, not re-exported
    assert health(cfg)["policy"] == "ab (50% to the challenger)"

    second = cli(path, "ab", "start", "--version", "3", "--shadow")
    assert second.exit_code != 0 and "runs already" in str(second.exception)

    sent = send(cfg, truth_of(answers, "2"), lambda a: len(a) >= 12)
    assert per_route(sent, "champion") and per_route(sent, "challenger")  # both arms answer
    waiting = cli(path, "ab", "decide")
    assert waiting.exit_code == 0, waiting.output
    assert "WAIT" in said(waiting) and "more on the challenger" in said(waiting)
    more = MIN_FEEDBACK - per_route(sent, "challenger")
    assert f"{more} more on the challenger" in said(waiting)
    assert online.current(cfg) is not None and deploy.routing(cfg)["challenger"].version == "2"  # nothing moved


def test_decide_promotes_a_clearly_better_challenger_through_the_gates(stack):
    cfg, path, answers = stack
    enough = lambda a: min(per_route(a, "champion"), per_route(a, "challenger")) >= MIN_FEEDBACK  # noqa: E731
    sent = send(cfg, truth_of(answers, "2"), enough, start=1000)
    assert enough(sent)
    report = cli(path, "ab", "report")
    assert report.exit_code == 0 and "experiment v2 (ab, 50% to the challenger)" in said(report)

    result = cli(path, "ab", "decide")
    assert result.exit_code == 0, result.output
    assert "PROMOTE" in said(result) and "PROMOTED" in said(result)  # the decision, then the deploy gates
    routes = deploy.routing(cfg)
    assert routes["champion"].version == "2" and routes["previous"].version == "1" and "challenger" not in routes
    assert registry.aliases(cfg) == {"champion": "2", "previous": "1"}
    tags = registry.get(cfg, "2").tags
    assert tags[registry.TAG_DECISION] == "promote"
    assert "macro-F1 1.0000 vs 0.0000" in tags[registry.TAG_DECISION_SUMMARY]
    assert "no drift reference was built" in said(result)  # these versions name no data snapshot
    record = json.loads(newest_decision(cfg).read_text())
    test = record["context"]["test"]
    assert record["outcome"] == "promote" and record["mode"] == "online ab"
    assert test["test"].startswith("two-proportion z") and test["p_value"] < 1e-6 and test["accuracy_delta"] == 1.0
    assert {r["name"]: r["passed"] for r in record["rules"]} == {"effect": True, "significance": True,
                                                                 "fallbacks": True, "serving": True}
    assert record["context"]["feedback"]["challenger"] >= MIN_FEEDBACK
    assert online.current(cfg) is None and online.history(cfg)[0].outcome == "promote"


def newest_decision(cfg: Config) -> Path:
    return max((cfg.resolved().project.dir / "decisions").iterdir(), key=lambda p: p.name) / "decision.json"


def test_shadow_decide_rejects_a_worse_challenger_and_the_champion_keeps_serving(stack):
    cfg, path, answers = stack
    result = cli(path, "ab", "start", "--version", "3", "--shadow")
    assert result.exit_code == 0, result.output
    assert health(cfg)["policy"] == "shadow" and deploy.routing(cfg)["challenger"].version == "3"
    sent = send(cfg, truth_of(answers, "2"), lambda a: len(a) >= MIN_FEEDBACK, start=2000)
    assert per_route(sent, "champion") == len(sent)  # the champion answers every caller
    wait_for_shadow_rows(cfg, {a["request_id"] for a in sent})

    result = cli(path, "ab", "decide")
    assert result.exit_code == 1, result.output
    assert "REJECT" in said(result)
    routes = deploy.routing(cfg)
    assert routes["champion"].version == "2" and "challenger" not in routes
    assert registry.get(cfg, "3").tags[registry.TAG_DECISION] == "reject"
    assert registry.aliases(cfg) == {"champion": "2", "previous": "1"}
    record = json.loads(newest_decision(cfg).read_text())
    test = record["context"]["test"]
    assert record["mode"] == "online shadow" and test["test"] == "McNemar (paired)"
    assert test["pairs"] >= MIN_FEEDBACK and test["accuracy_delta"] == -1.0 and test["b01"] >= MIN_FEEDBACK
    assert not {r["name"]: r["passed"] for r in record["rules"]}["significance"]
    assert "serving" not in {r["name"] for r in record["rules"]}  # a loss never reaches the deploy gates


def wait_for_shadow_rows(cfg: Config, ids: set[str], timeout_s: float = 10.0) -> None:
    """Shadow answers are logged after the caller's: wait until each request has one."""
    eng = predlog.engine(cfg.resolved().uris.prediction_log)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            frame = predlog.read(eng, routes=("shadow",), columns=("request_id",))
            if ids <= set(frame["request_id"]) or time.monotonic() > deadline:
                return
            time.sleep(0.1)
    finally:
        eng.dispose()


def test_ab_stop_returns_all_traffic_to_the_champion(stack):
    cfg, path, answers = stack
    result = cli(path, "ab", "start", "--version", "4", "--share", "1.0")
    assert result.exit_code == 0, result.output
    first = send(cfg, truth_of(answers, "4"), lambda a: len(a) >= 5, start=3000)
    assert per_route(first, "challenger") == 5
    stopped = cli(path, "ab", "stop", "--reason", "latency looked odd")
    assert stopped.exit_code == 0 and "STOPPED v4" in said(stopped)
    time.sleep(3 * cfg.serving.route_refresh_s)
    after = send(cfg, truth_of(answers, "4"), lambda a: len(a) >= 5, start=4000)
    assert per_route(after, "champion") == 5
    assert {a["model"] for a in after} == {deploy.routing(cfg)["champion"].ensemble}
    assert "challenger" not in deploy.routing(cfg) and "challenger" not in registry.aliases(cfg)
    ended = online.history(cfg)[0]
    assert ended.version == "4" and ended.outcome == "stopped" and ended.reason == "latency looked odd"
    assert online.current(cfg) is None
    assert "stopped: latency looked odd" in registry.get(cfg, "4").tags[online.TAG_EXPERIMENT]
    assert "no experiment was running" in said(cli(path, "ab", "stop"))
