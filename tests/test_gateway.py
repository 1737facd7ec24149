"""The gateway against a real tritonserver (tiny exported models) and a real gateway
process: logging, feedback, shadow, A/B, limits, clean shutdown, the online A/B report."""

from __future__ import annotations

import hashlib
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2_contingency
from test_serving import TEXTS, make_export

from ftops import predlog
from ftops.config import Config, ServingSection
from ftops.serve import deploy, gateway, traffic
from ftops.serve.gateway import process
from ftops.serve.triton import server
from ftops.serve.triton.client import TritonClient

LABELS = ["negative", "neutral", "positive"]


# ------------------------------------------------------------ no server


def test_log_writer_retries_a_briefly_unavailable_store_and_counts_drops():
    written, failures = [], iter([True, True])  # the store refuses the first two writes

    def sink(rows):
        if next(failures, False):
            raise ConnectionError("store down")
        written.extend(rows)

    writer = predlog.LogWriter(sink, capacity=50, batch_rows=10, flush_ms=20, max_backoff_s=0.05).start()
    assert writer.put([{"i": i} for i in range(30)]) == 30
    assert writer.flush(timeout_s=10)
    assert [r["i"] for r in written] == list(range(30)) and writer.write_errors == 2

    blocked = threading.Event()
    slow = predlog.LogWriter(lambda rows: blocked.wait(10) and written.extend(rows), capacity=5, batch_rows=100,
                             flush_ms=10_000)
    assert slow.put([{"i": i} for i in range(8)]) == 5  # never started: the buffer stays full
    assert slow.dropped == 3 and slow.buffered == 5
    slow.start()
    blocked.set()
    assert slow.close(timeout_s=10) == 0 and slow.written == 5 and slow.dropped == 3


def test_policies_share_one_shape_and_fall_back_without_a_challenger():
    assert set(traffic.POLICIES) == {"champion", "ab", "shadow"}
    for name in traffic.POLICIES:
        policy = traffic.make_policy(ServingSection(traffic=name, ab_share=1.0))
        fallback = policy.assign("u1", has_challenger=False)
        assert fallback.route == "champion" and not fallback.shadow
        assert (fallback.note is not None) == (name != "champion")
    assert traffic.make_policy(ServingSection(traffic="shadow")).assign(None, True) == traffic.Assignment(
        "champion", shadow=True)


def test_ab_split_of_30_percent_is_close_and_sticky_per_key():
    policy = traffic.make_policy(ServingSection(traffic="ab", ab_share=0.3), salt="gw")
    keys = [f"user-{i}" for i in range(1000)]
    arms = [policy.assign(k, True).route for k in keys]
    assert abs(arms.count("challenger") / 1000 - 0.3) < 0.04
    assert arms == [policy.assign(k, True).route for k in keys]  # same key, same arm
    anonymous = [policy.assign(None, True).route for _ in range(1000)]
    assert abs(anonymous.count("challenger") / 1000 - 0.3) < 0.05


def test_unpaired_report_matches_a_chi_square_on_accuracy():
    rng = np.random.default_rng(0)
    rows = []
    for arm, hit_rate, n in (("champion", 0.6, 300), ("challenger", 0.75, 200)):
        truth = rng.choice(LABELS, n)
        right = rng.random(n) < hit_rate
        wrong = [LABELS[(LABELS.index(t) + 1) % 3] for t in truth]
        for t, r, w in zip(truth, right, wrong):
            rows.append({"request_id": f"{arm}-{len(rows)}", "route": arm, "prediction": t if r else w,
                         "feedback": t, "latency_ms": 5.0, "model": arm, "version": None})
    frame = pd.DataFrame(rows)
    report = traffic.ab_report(frame, resamples=500)
    test, arms = report["ab"]["test"], report["ab"]["arms"]
    right = frame["prediction"] == frame["feedback"]
    table = [[int(right[frame["route"] == a].sum()), int((~right)[frame["route"] == a].sum())]
             for a in ("champion", "challenger")]
    assert test["p_value"] == pytest.approx(chi2_contingency(table, correction=False)[1], rel=1e-6)
    assert test["significant"] and test["macro_f1_delta_ci"][0] > 0
    assert arms["champion"]["n"] == 300 and arms["challenger"]["accuracy_ci"][0] < arms["challenger"]["accuracy"]
    assert report["shadow"] is None


# ------------------------------------------------------------ real Triton, real gateway


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Triton with export 0 as champion and export 1 staged as challenger."""
    root = tmp_path_factory.mktemp("gateway")
    exports = [make_export(root / f"e{i}", seed=i) for i in range(2)]
    cfg = Config.model_validate({
        "project": {"dir": str(root / "proj"), "name": "gw"},
        "gates": {"p99_ms": 60000},
        "serving": {"http_port": 0, "grpc_port": 0, "metrics_port": 0, "gateway_port": 0, "load_requests": 10,
                    "load_warmup": 0, "load_concurrency": 1, "traffic": "shadow", "log_flush_ms": 50,
                    "max_texts_per_request": 8, "max_text_bytes": 2000},
    })
    info = server.start(cfg)
    try:
        assert deploy.deploy(cfg, exports[0], TEXTS[:16]).outcome == "promoted"
        deploy.stage(cfg, exports[1], TEXTS[:16])
        yield cfg, info
    finally:
        server.stop(cfg)


@pytest.fixture(scope="module")
def shadow_gw(stack):
    """The real gateway process (`ftops gateway up`), shadow policy; stopped by PID."""
    cfg, _ = stack
    info = gateway.start(cfg)
    yield cfg, info
    gateway.stop(cfg)
    assert not process.alive(info.pid) and gateway.status(cfg) is None


def rows_for(cfg: Config, ids: set[str], expected: int, timeout_s: float = 10.0) -> pd.DataFrame:
    """The logged rows of these request ids, once `expected` of them reached the store."""
    eng = predlog.engine(cfg.resolved().uris.prediction_log)
    deadline = time.monotonic() + timeout_s
    while True:
        frame = predlog.read(eng, routes=predlog.ROUTES)
        frame = frame[frame["request_id"].isin(ids)]
        if len(frame) >= expected or time.monotonic() > deadline:
            eng.dispose()
            return frame
        time.sleep(0.1)


def direct(cfg: Config, info, role: str, texts: list[str]):
    with TritonClient(info.grpc_url) as client:
        return client.classify(texts, deploy.routing(cfg)[role].ensemble)


def test_predictions_are_logged_with_model_version_route_and_shadow_copies(shadow_gw, stack):
    cfg, info = shadow_gw
    routes = deploy.routing(cfg)
    with httpx.Client(base_url=info.url, timeout=30) as client:
        health = client.get("/health").json()
        assert health["challenger"]["ensemble"] == routes["challenger"].ensemble
        assert health["writes"] == "open" and "last_error" not in health["log"]  # no token: open, on loopback
        one = client.post("/predict", json={"text": "my bag is lost AGAIN", "user": "u1"}).json()
        batch = client.post("/predict", json={"texts": ["great crew", "delayed 3 hours"]}).json()
    assert one["route"] == "champion" and one["model"] == routes["champion"].ensemble
    assert one["predictions"][0]["request_id"] == one["request_id"]
    assert set(one["predictions"][0]["probs"]) == set(LABELS)
    assert [p["request_id"] for p in batch["predictions"]] == [f"{batch['request_id']}-{i}" for i in range(2)]
    ids = {one["request_id"], *(p["request_id"] for p in batch["predictions"])}
    frame = rows_for(cfg, ids, expected=6)
    served, shadow = frame[frame["route"] == "champion"], frame[frame["route"] == "shadow"]
    assert set(served["request_id"]) == ids == set(shadow["request_id"])
    assert set(served["model"]) == {routes["champion"].ensemble} and served["served"].all()
    assert set(shadow["model"]) == {routes["challenger"].ensemble} and not shadow["served"].any()
    assert served["version"].isna().all()  # deployed without a registry version
    row = served[served["request_id"] == one["request_id"]].iloc[0]
    assert row["text"] == "my bag is lost AGAIN" and row["user_key"] == "u1" and row["latency_ms"] > 0


def test_shadow_traffic_never_changes_the_callers_answer(shadow_gw, stack):
    cfg, info = shadow_gw
    _, triton = stack
    texts = TEXTS[:24]
    with httpx.Client(base_url=info.url, timeout=30) as client:
        answers = [client.post("/predict", json={"text": t}).json() for t in texts]
    champion, challenger = direct(cfg, triton, "champion", texts), direct(cfg, triton, "challenger", texts)
    for answer, expected in zip(answers, champion):
        got = answer["predictions"][0]
        assert answer["route"] == "champion" and got["label"] == expected.label
        assert np.allclose([got["probs"][label] for label in LABELS], expected.probs, atol=1e-6)
    assert any(not np.allclose(a.probs, b.probs) for a, b in zip(champion, challenger))  # it could have
    ids = [a["request_id"] for a in answers]
    frame = rows_for(cfg, set(ids), expected=2 * len(ids))
    shadow = frame[frame["route"] == "shadow"].set_index("request_id").loc[ids]
    assert list(shadow["prediction"]) == [p.label for p in challenger]


def test_feedback_joins_its_request_and_unknown_ids_are_404(shadow_gw):
    cfg, info = shadow_gw
    with httpx.Client(base_url=info.url, timeout=30) as client:
        fresh = client.post("/predict", json={"text": "just answered"}).json()["request_id"]
        answer = client.post("/feedback", json={"request_id": fresh, "label": "neutral"})  # still buffered
        assert answer.status_code == 200 and answer.json()["rows"] >= 1
        rid = client.post("/predict", json={"text": "flight was fine"}).json()["request_id"]
        rows_for(cfg, {rid}, expected=2)
        answer = client.post("/feedback", json={"request_id": rid, "label": "positive"})
        assert answer.status_code == 200 and answer.json()["rows"] == 2  # served and shadow rows
        assert answer.json()["sender"] == "anonymous"
        unknown = client.post("/feedback", json={"request_id": "no-such-id", "label": "positive"})
        assert unknown.status_code == 404 and "no-such-id" in unknown.json()["error"]
        bad_label = client.post("/feedback", json={"request_id": rid, "label": "ecstatic"})
        assert bad_label.status_code == 422 and "negative, neutral, positive" in bad_label.json()["error"]
    frame = rows_for(cfg, {rid}, expected=2)
    assert list(frame["feedback"]) == ["positive", "positive"] and frame["feedback_ts"].notna().all()


def test_bad_requests_get_clear_4xx_and_the_gateway_keeps_serving(shadow_gw):
    cfg, info = shadow_gw
    cases = [({"text": ""}, 422, "empty"), ({"text": "y" * 2001}, 413, "serving.max_text_bytes"),
             ({"texts": ["a"] * 9}, 413, "serving.max_texts_per_request"), ({"text": 5}, 422, "valid string"),
             ({"texts": "abc"}, 422, "valid list"), ({"words": "hi"}, 422, "not permitted"),
             ({}, 422, "exactly one of"), (b"{not json", 400, "not valid JSON"),
             ({"texts": ["ok", "a\x00b"]}, 422, "text 1 contains a NUL")]
    with httpx.Client(base_url=info.url, timeout=30) as client:
        for body, status, message in cases:
            resp = client.post("/predict", **({"content": body, "headers": {"content-type": "application/json"}}
                                              if isinstance(body, bytes) else {"json": body}))
            assert resp.status_code == status and message in resp.json()["error"], (body, resp.text)
        huge = client.post("/predict", content=b"x" * 200_000, headers={"content-type": "application/json"})
        assert huge.status_code == 413
        assert client.post("/predict", json={"text": "still serving"}).status_code == 200
        metrics = client.get("/metrics").text
        schema = client.get("/openapi.json").json()
    assert 'ftops_gateway_errors_total{route="-",status="413",version="-"}' in metrics
    assert "ftops_gateway_latency_seconds_bucket" in metrics and "ftops_gateway_log_dropped_rows_total 0.0" in metrics
    assert "ftops_gateway_log_dead_letter_rows_total 0.0" in metrics
    assert {"PredictRequest", "PredictResponse", "FeedbackRequest", "ErrorResponse"} <= set(schema["components"]["schemas"])


@contextmanager
def in_process(cfg: Config):
    """The gateway app under uvicorn in a thread, on a socket bound here."""
    import uvicorn

    sock = process._bind("127.0.0.1", 0)
    srv = uvicorn.Server(uvicorn.Config(gateway.create_app(cfg), log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        srv.should_exit = True
        thread.join(30)
        sock.close()


def test_ab_traffic_is_sticky_logged_per_arm_and_reported(stack):
    cfg, _ = stack
    ab = cfg.model_copy(update={"serving": cfg.serving.model_copy(update={
        "traffic": "ab", "ab_share": 0.3, "keep_text": False})})
    routes = deploy.routing(cfg)
    truth = {t: LABELS[i % 3] for i, t in enumerate(dict.fromkeys(TEXTS))}
    seen: dict[str, set[str]] = {}
    ids, sent = [], {}
    with in_process(ab) as url, httpx.Client(base_url=url, timeout=30) as client:
        for i in range(60):
            user, text = f"user-{i % 15}", list(truth)[i % len(truth)]
            answer = client.post("/predict", json={"text": text, "user": user}).json()
            assert answer["model"] == routes[answer["route"]].ensemble
            seen.setdefault(user, set()).add(answer["route"])
            ids.append(answer["request_id"])
            sent[answer["request_id"]] = text
            assert client.post("/feedback", json={"request_id": answer["request_id"], "label": truth[text]}).status_code == 200
    assert all(len(arms) == 1 for arms in seen.values())  # sticky per user key
    assert {next(iter(a)) for a in seen.values()} == {"champion", "challenger"}
    frame = rows_for(cfg, set(ids), expected=60)
    assert len(frame) == 60 and frame["text"].isna().all()  # keep_text false: only the hash
    assert all(row.text_sha256 == hashlib.sha256(sent[row.request_id].encode()).hexdigest()
               for row in frame.itertuples())
    report = traffic.ab_report(frame, resamples=300)
    arms = report["ab"]["arms"]
    assert arms["champion"]["n"] + arms["challenger"]["n"] == 60
    assert arms["challenger"]["models"] == [routes["challenger"].ensemble]
    assert 0 <= report["ab"]["test"]["p_value"] <= 1 and arms["champion"]["p99_ms"] > 0


def test_ab_report_cli_pairs_shadow_answers(shadow_gw):
    from typer.testing import CliRunner

    from ftops.cli import app

    cfg, info = shadow_gw
    with httpx.Client(base_url=info.url, timeout=30) as client:
        for i, text in enumerate(TEXTS[:30]):
            rid = client.post("/predict", json={"text": text}).json()["request_id"]
            client.post("/feedback", json={"request_id": rid, "label": LABELS[i % 3]})
    result = CliRunner().invoke(app, ["ab", "report", "--project-dir", str(cfg.project.dir)])
    assert result.exit_code == 0, result.output
    assert "shadow (same requests)" in result.output and "McNemar" in result.output and "p =" in result.output
    frame = predlog.read(predlog.engine(cfg.resolved().uris.prediction_log), routes=predlog.ROUTES)
    shadow = traffic.ab_report(frame, resamples=300)["shadow"]
    assert shadow["test"]["pairs"] >= 30 and 0 <= shadow["test"]["p_value"] <= 1


def test_route_changes_are_followed_without_a_restart(shadow_gw):
    cfg, info = shadow_gw
    challenger = deploy.routing(cfg)["challenger"]
    deploy.unstage(cfg)
    try:
        with httpx.Client(base_url=info.url, timeout=30) as client:
            deadline = time.monotonic() + 5
            while (health := client.get("/health").json())["challenger"] is not None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert health["status"] == "ok" and "no challenger route" in health["note"]
            rid = client.post("/predict", json={"text": "no mirror now"}).json()["request_id"]
        time.sleep(0.5)
        assert list(rows_for(cfg, {rid}, expected=1)["route"]) == ["champion"]  # and no shadow row
    finally:
        deploy.stage(cfg, Path(challenger.export), TEXTS[:16])


def test_clean_shutdown_under_load_loses_no_logged_row(shadow_gw):
    """Last test of the module: it stops the gateway process (by PID) mid-load."""
    cfg, info = shadow_gw
    ok: list[str] = []
    stop = threading.Event()

    def client_loop(k: int) -> None:
        with httpx.Client(base_url=info.url, timeout=30) as client:
            for i in range(10_000):
                if stop.is_set():
                    return
                try:
                    resp = client.post("/predict", json={"text": TEXTS[(k + i) % len(TEXTS)]})
                except httpx.HTTPError:
                    return  # the gateway went away: no answer, so no promise to log
                if resp.status_code == 200:
                    ok.append(resp.json()["request_id"])

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(3)]
    [t.start() for t in threads]
    time.sleep(1.5)
    assert gateway.stop(cfg)
    stop.set()
    [t.join(30) for t in threads]
    assert len(ok) > 10 and not process.alive(info.pid)
    frame = rows_for(cfg, set(ok), expected=len(ok), timeout_s=2)
    served = frame[frame["route"] == "champion"]
    assert len(served) == len(ok) and set(served["request_id"]) == set(ok)
