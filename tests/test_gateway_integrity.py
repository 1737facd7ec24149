"""The loop's integrity at the gateway and the prediction log: the log never blocks on a
row the store refuses (SQLite and PostgreSQL), only configured senders may label, one label
per request, bodies bounded while they stream, and nothing secret reaches callers or disk.

PostgreSQL cases need $FTOPS_TEST_POSTGRES_URL (e.g. postgresql://postgres@127.0.0.1:5432/postgres):
throw-away databases (one per store test, one for the module's gateway), dropped afterwards.
Without it they are skipped."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from test_gateway import rows_for, stack  # noqa: F401  (stack: this module's own Triton)

from ftops import predlog, security
from ftops.config import Config
from ftops.serve import gateway, traffic

POSTGRES_URL = os.environ.get("FTOPS_TEST_POSTGRES_URL")
NO_POSTGRES = "needs PostgreSQL: set FTOPS_TEST_POSTGRES_URL (e.g. postgresql://postgres@127.0.0.1:5432/postgres)"
TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab", "mallory": "mallory-token-0123456789"}
PER_MINUTE = 20
TRACKING_SECRET = "tracking-secret-pw"


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


# ------------------------------------------------------------ stores


def admin_engine():
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    return create_engine(make_url(POSTGRES_URL).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT")


@contextmanager
def throwaway_database():
    """A new PostgreSQL database on the test server, dropped afterwards; None without a server."""
    if not POSTGRES_URL:
        yield None
        return
    from sqlalchemy.engine import make_url

    name = f"ftops_integrity_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_URL).set(drivername="postgresql+psycopg", database=name).render_as_string(
            hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="module")
def pg_url():
    """The real gateway's PostgreSQL log for this module (None without a server)."""
    with throwaway_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path):
    """A fresh, empty prediction log on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'log.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip(NO_POSTGRES)
    with throwaway_database() as url:
        yield url


def record(i: int, text_: str = "a fine flight", **changes) -> dict:
    row = predlog.Record(f"r{i}", text_, "positive", 0.9, [0.05, 0.05, 0.9], 4.0, "m", "1", "champion").row()
    return {**row, **changes}


def count(eng) -> int:
    with eng.connect() as conn:
        return conn.execute(select(func.count()).select_from(predlog.predictions)).scalar()


# ------------------------------------------------------------ the log never blocks


def refused_rows(store_url: str) -> list[tuple[str, dict, str]]:
    """(case, row, what the reason names): rows this store refuses."""
    cases = [("not null", record(0, prediction=None), "null")]
    if store_url.startswith("postgresql"):
        cases.append(("nul in text", record(0, "bad\x00text"), "NUL"))
    return cases


def test_a_refused_row_is_set_aside_and_the_next_1000_are_logged(store_url, tmp_path):
    eng = predlog.engine(store_url)
    for case, bad, reason in refused_rows(store_url):
        before = count(eng)
        letters = predlog.DeadLetterFile(tmp_path / f"{case}.jsonl")
        writer = predlog.LogWriter(lambda rows: predlog.write(eng, rows), capacity=5000, batch_rows=200, flush_ms=20,
                                   max_backoff_s=0.05, dead_letter=letters).start()
        writer.put([{**bad, "request_id": "bad-row"}])
        writer.put([record(i, f"text {i}") for i in range(1000)])
        assert writer.flush(timeout_s=60), case
        assert writer.close(10) == 0
        assert count(eng) - before == 1000 and writer.written == 1000, case
        assert writer.dead_lettered == 1 and writer.dropped == 0 and writer.write_errors == 1
        lines = [json.loads(line) for line in (tmp_path / f"{case}.jsonl").read_text().splitlines()]
        assert len(lines) == 1 and lines[0]["row"]["request_id"] == "bad-row", case
        assert reason.lower() in lines[0]["reason"].lower() and datetime.fromisoformat(lines[0]["ts"])
        assert os.stat(tmp_path / f"{case}.jsonl").st_mode & 0o077 == 0  # rows hold users' text
    eng.dispose()


def test_a_store_that_is_down_keeps_the_rows_and_one_that_refuses_sets_them_aside():
    written, aside, calls = [], [], iter(range(10_000))

    def sink(rows):
        n = next(calls)
        if n in (0, 3):  # down at first, and again in the middle of the search for the bad row
            raise OperationalError("INSERT", {}, ConnectionRefusedError("store down"))
        if any(r["i"] == 7 for r in rows):
            raise IntegrityError("INSERT", {}, ValueError("constraint failed"))
        written.extend(rows)

    writer = predlog.LogWriter(sink, capacity=100, batch_rows=16, flush_ms=10, max_backoff_s=0.02,
                               dead_letter=lambda row, reason: aside.append((row, reason))).start()
    writer.put([{"i": i} for i in range(40)])
    assert writer.flush(timeout_s=10)
    assert sorted(r["i"] for r in written) == [i for i in range(40) if i != 7]  # nothing lost, nothing twice
    assert [r["i"] for r, _ in aside] == [7] and "constraint failed" in aside[0][1]
    assert writer.dead_lettered == 1 and writer.buffered == 0 and writer.close(5) == 0
    assert predlog.store_down(OperationalError("x", {}, OSError())) and predlog.store_down(TimeoutError())
    assert not predlog.store_down(IntegrityError("x", {}, ValueError())) and not predlog.store_down(TypeError())


def test_the_dead_letter_file_stops_growing_at_its_limit_and_counts(tmp_path, caplog):
    letters = predlog.DeadLetterFile(tmp_path / "dl.jsonl", max_bytes=2000)
    with caplog.at_level(logging.ERROR, logger="ftops.predlog"):
        for i in range(50):
            letters({"request_id": f"r{i}", "text": "x" * 100, "ts": datetime.now(UTC)}, "IntegrityError: no")
    size = (tmp_path / "dl.jsonl").stat().st_size
    saved = len((tmp_path / "dl.jsonl").read_text().splitlines())
    assert size <= 2000 and 0 < saved < 50 and letters.unsaved == 50 - saved
    assert "over its 2000 byte limit" in caplog.text
    again = predlog.DeadLetterFile(tmp_path / "dl.jsonl", max_bytes=2000)  # a restart knows the size
    again({"request_id": "late"}, "x" * 2000)
    assert again.unsaved == 1


# ------------------------------------------------------------ labels: schema, one per request, history


def test_an_old_log_gets_the_new_column_and_labels_keep_their_history(store_url):
    eng = predlog.engine(store_url)
    with eng.begin() as conn:  # a log written by the previous release: no feedback_by column
        conn.execute(text("DROP TABLE predictions"))
        conn.execute(text("CREATE TABLE predictions (id INTEGER PRIMARY KEY, request_id VARCHAR(64) NOT NULL, "
                          "ts TIMESTAMP NOT NULL, text TEXT, text_sha256 VARCHAR(64) NOT NULL, text_chars INTEGER "
                          "NOT NULL, prediction VARCHAR(128) NOT NULL, confidence FLOAT NOT NULL, probs JSON NOT "
                          "NULL, latency_ms FLOAT NOT NULL, model VARCHAR(256) NOT NULL, version VARCHAR(32), "
                          "route VARCHAR(16) NOT NULL, served BOOLEAN NOT NULL, user_key VARCHAR(256), "
                          "feedback VARCHAR(128), feedback_ts TIMESTAMP)"))
    eng.dispose()
    eng, twice = predlog.engine(store_url), predlog.engine(store_url)  # idempotent
    start = datetime(2026, 5, 1, tzinfo=UTC)
    rows = [record(i, f"text {i}", id=i + 1, ts=start + timedelta(minutes=i)) for i in range(5)]
    rows.append(record(0, "text 0", id=99, route="shadow", served=False, model="m2"))
    predlog.write(eng, rows)
    assert predlog.add_feedback(eng, "r0", "neutral", "alice") == 2  # served and shadow rows
    with pytest.raises(predlog.AlreadyLabelled) as conflict:
        predlog.add_feedback(eng, "r0", "negative", "bob")
    assert (conflict.value.label, conflict.value.sender) == ("neutral", "alice")
    assert predlog.add_feedback(eng, "r0", "negative", "bob", replace=True) == 2
    assert predlog.add_feedback(eng, "r3", "positive") == 1 and predlog.add_feedback(eng, "nope", "positive") == 0
    history = predlog.feedback_history(eng, "r0")
    assert list(zip(history["label"], history["sender"], history["replaces"].astype(bool))) == [
        ("neutral", "alice", False), ("negative", "bob", True)]
    labelled = predlog.labelled(eng)
    assert list(labelled.columns) == ["request_id", "text", "label", "ts", "sender"]
    assert labelled.to_dict("list")["sender"] == ["bob", security.ANONYMOUS]
    assert list(predlog.labelled(eng, max_rows=1)["request_id"]) == ["r3"]
    assert list(predlog.labelled(eng, since=start + timedelta(minutes=2))["request_id"]) == ["r3"]
    assert predlog.labelled(eng, since=start + timedelta(minutes=4)).empty
    assert len(predlog.read_chunked(eng, select(predlog.predictions), chunk_rows=2)) == 6
    eng.dispose()
    twice.dispose()


def test_the_ab_report_reads_a_bounded_window_of_its_columns(tmp_path):
    eng = predlog.engine(f"sqlite:///{tmp_path / 'log.db'}")
    start = datetime(2026, 5, 1, tzinfo=UTC)
    predlog.write(eng, [record(i, ts=start + timedelta(minutes=i), route=("champion", "challenger")[i % 2])
                        for i in range(30)])
    frame = traffic.report_rows(eng, max_rows=10)
    assert list(frame["request_id"]) == [f"r{i}" for i in range(20, 30)] and "text" not in frame
    assert len(traffic.report_rows(eng, since=start + timedelta(minutes=25))) == 5
    assert len(traffic.report_rows(eng, last=3)) == 3
    assert traffic.ab_report(traffic.report_rows(eng), resamples=50)["ab"]["arms"]["challenger"]["requests"] == 15


# ------------------------------------------------------------ gateway pieces without Triton


def bare_config(tmp_path: Path, **sections) -> Config:
    return Config.model_validate({"project": {"dir": str(tmp_path / "proj")}, **sections})


def test_the_label_set_is_the_configs_else_the_models_else_nothing_is_accepted(tmp_path):
    from_config = gateway.Gateway(bare_config(tmp_path, data={"labels": ["bad", "good"]}))
    assert from_config._label_set("any-model") == ["bad", "good"]
    unknown = gateway.Gateway(bare_config(tmp_path))
    with pytest.raises(gateway.RequestError) as refused:
        unknown._label_set("model-without-labels")
    assert refused.value.status == 422 and "data.labels" in refused.value.message


def test_the_rate_limit_is_a_bucket_per_sender():
    limit = gateway.RateLimit(per_minute=3)
    assert [limit.wait_s("a") for _ in range(3)] == [0.0] * 3
    assert 0 < limit.wait_s("a") <= 20 and limit.wait_s("b") == 0.0


def test_an_open_gateway_refuses_to_listen_beyond_loopback(tmp_path, monkeypatch):
    monkeypatch.delenv(security.ENV_TOKENS, raising=False)
    monkeypatch.delenv(security.ENV_TOKENS_FILE, raising=False)
    cfg = bare_config(tmp_path, serving={"host": "0.0.0.0", "gateway_port": 0})
    with pytest.raises(gateway.GatewayError, match="FTOPS_GATEWAY_TOKENS"):
        gateway.start(cfg)
    assert gateway.status(cfg) is None


def test_5xx_bodies_are_generic_and_the_details_go_to_the_log(tmp_path, caplog, monkeypatch):
    from fastapi.testclient import TestClient

    monkeypatch.delenv(security.ENV_TOKENS, raising=False)
    down = "postgresql+psycopg://ftops:db-secret-pw@127.0.0.1:9/nowhere"  # nothing listens on port 9
    app = gateway.create_app(bare_config(tmp_path, uris={"prediction_log": down}))
    with caplog.at_level(logging.ERROR, logger="ftops.gateway"), \
            TestClient(app, raise_server_exceptions=False) as client:
        nothing = client.post("/predict", json={"text": "hello"})  # nothing deployed: a 503
        app.state.gateway.predict = lambda body: 1 / 0
        crash = client.post("/predict", json={"text": "hello"})
        health = client.get("/health").json()
    for resp, status, detail, extra in ((nothing, 503, "Nothing is deployed", {"down", "retry_after_s"}),
                                        (crash, 500, "ZeroDivisionError", set())):
        body = resp.json()
        assert resp.status_code == status and set(body) == {"error", "request_id", *extra}
        assert "retry later" in body["error"]
        assert detail not in resp.text and detail in caplog.text
        assert f"request {body['request_id']} failed" in caplog.text
    assert nothing.json()["down"] == "deployment" and nothing.headers["retry-after"] == str(gateway.RETRY_AFTER_S)
    assert "retry-after" not in crash.headers
    assert "last_error" not in health["log"] and "db-secret-pw" not in json.dumps(health)
    assert health["writes"] == "open" and health["log"]["dead_lettered"] == 0
    assert "db-secret-pw" not in caplog.text  # the start-up error is logged masked


def test_the_config_handed_to_the_child_round_trips_its_masked_values(tmp_path):
    cfg = bare_config(tmp_path, uris={"prediction_log": "postgresql://u:pw1@db/x", "mlflow_tracking": "http://a:pw2@m"})
    shown, env = security.seal(cfg.resolved())
    assert "pw1" not in shown and "pw2" not in shown
    assert security.unseal(shown, env) == cfg.resolved()


# ------------------------------------------------------------ the real gateway process, with tokens


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def secured(request, stack, pg_url):  # noqa: F811
    """The real gateway process with write tokens from the environment, on each store."""
    cfg, _ = stack
    if request.param == "postgres" and pg_url is None:
        pytest.skip(NO_POSTGRES)
    root = cfg.project.dir.parent
    log_url = pg_url if request.param == "postgres" else f"sqlite:///{root / 'secured.db'}"
    cfg = cfg.model_copy(update={
        "uris": cfg.uris.model_copy(update={"prediction_log": log_url,
                                            "mlflow_tracking": f"http://ftops:{TRACKING_SECRET}@127.0.0.1:5000"}),
        "feedback": cfg.feedback.model_copy(update={"per_minute": PER_MINUTE}),
        "serving": cfg.serving.model_copy(update={"max_text_bytes": 20_000})})  # a body limit of ~1 MiB
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(security.ENV_TOKENS, ",".join(f"{name}={token}" for name, token in TOKENS.items()))
        info = gateway.start(cfg)
    try:
        yield cfg, info
    finally:
        gateway.stop(cfg)


def predict(client: httpx.Client, text_: str = "my bag is lost") -> str:
    resp = client.post("/predict", json={"text": text_})
    assert resp.status_code == 200, resp.text
    return resp.json()["request_id"]


def test_nul_is_refused_with_422_naming_the_text_and_logging_goes_on(secured):
    cfg, info = secured
    with httpx.Client(base_url=info.url, timeout=30) as client:
        cases = [({"text": "a\x00b"}, "text 0"), ({"texts": ["fine", "bad\x00"]}, "text 1"),
                 ({"text": "fine", "user": "u\x00"}, "user")]
        for body, where in cases:
            resp = client.post("/predict", json=body)
            assert resp.status_code == 422 and f"{where} contains a NUL" in resp.json()["error"], resp.text
        rid = predict(client, "after the NUL")
        label = client.post("/feedback", json={"request_id": rid, "label": "neu\x00tral"}, headers=bearer("alice"))
        assert label.status_code == 422 and "label contains a NUL" in label.json()["error"]
        health = client.get("/health").json()
    frame = rows_for(cfg, {rid}, expected=2)  # served + shadow
    assert set(frame["text"]) == {"after the NUL"}
    assert health["log"]["dead_lettered"] == 0 and health["log"]["dropped"] == 0


def test_feedback_needs_a_token_and_records_its_sender(secured):
    cfg, info = secured
    with httpx.Client(base_url=info.url, timeout=30) as client:
        rid = predict(client)
        body = {"request_id": rid, "label": "negative"}
        missing = client.post("/feedback", json=body)
        wrong = client.post("/feedback", json=body, headers={"Authorization": "Bearer not-a-valid-token-at-all"})
        for resp in (missing, wrong):
            assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer"
            assert "Authorization: Bearer" in resp.json()["error"]
        ok = client.post("/feedback", json=body, headers=bearer("alice"))
        assert ok.status_code == 200 and ok.json()["sender"] == "alice" and ok.json()["rows"] >= 1
        assert client.get("/health").json()["writes"] == "token"
    eng = predlog.engine(cfg.uris.prediction_log)
    labelled = predlog.labelled(eng).set_index("request_id")
    assert labelled.loc[rid, "sender"] == "alice" and labelled.loc[rid, "label"] == "negative"
    eng.dispose()


def test_a_second_label_is_409_and_replace_keeps_both(secured):
    cfg, info = secured
    with httpx.Client(base_url=info.url, timeout=30) as client:
        rid = predict(client)
        rows_for(cfg, {rid}, expected=2)  # the shadow row too: one logged after its label would keep none
        assert client.post("/feedback", json={"request_id": rid, "label": "positive"},
                           headers=bearer("alice")).status_code == 200
        again = client.post("/feedback", json={"request_id": rid, "label": "negative"}, headers=bearer("bob"))
        assert again.status_code == 409 and "'positive' from alice" in again.json()["error"]
        assert '"replace": true' in again.json()["error"]
        replaced = client.post("/feedback", json={"request_id": rid, "label": "negative", "replace": True},
                               headers=bearer("bob"))
        assert replaced.status_code == 200 and replaced.json()["sender"] == "bob"
        unknown = client.post("/feedback", json={"request_id": rid, "label": "ecstatic"}, headers=bearer("bob"))
        assert unknown.status_code == 422 and "negative, neutral, positive" in unknown.json()["error"]
    eng = predlog.engine(cfg.uris.prediction_log)
    history = predlog.feedback_history(eng, rid)
    assert list(zip(history["label"], history["sender"], history["replaces"].astype(bool))) == [
        ("positive", "alice", False), ("negative", "bob", True)]
    rows = rows_for(cfg, {rid}, expected=2)
    assert set(rows["feedback"]) == {"negative"} and set(rows["feedback_by"]) == {"bob"}
    eng.dispose()


def test_feedback_is_rate_limited_per_sender(secured):
    _, info = secured
    with httpx.Client(base_url=info.url, timeout=30) as client:
        answers = [client.post("/feedback", json={"request_id": f"none-{i}", "label": "positive"},
                               headers=bearer("mallory")) for i in range(PER_MINUTE + 5)]
        other = client.post("/feedback", json={"request_id": "none", "label": "positive"}, headers=bearer("alice"))
    codes = [r.status_code for r in answers]
    assert codes[:PER_MINUTE] == [404] * PER_MINUTE and codes.count(429) >= 4  # a token is back every 3 s
    limited = next(r for r in answers if r.status_code == 429)
    assert 1 <= int(limited.headers["retry-after"]) <= 60 and "feedback.per_minute" in limited.json()["error"]
    assert other.status_code == 404  # another sender has its own bucket


def test_a_50mb_chunked_body_is_refused_early_and_memory_stays_flat(secured):
    cfg, info = secured
    limit = cfg.serving.max_texts_per_request * cfg.serving.max_text_bytes * 6 + 65536  # the gateway's rule
    proc = psutil.Process(info.pid)
    sent = [0]

    def body(mib: int):
        chunk = b'{"texts": ["' + b"x" * (1 << 20)
        for _ in range(mib):
            sent[0] += len(chunk)
            yield chunk
            chunk = b"x" * (1 << 20)

    with httpx.Client(base_url=info.url, timeout=60) as client:
        client.post("/predict", json={"text": "warm up"})  # and a first refusal: its code is loaded once
        assert client.post("/predict", content=body(2), headers={"content-type": "application/json"}).status_code == 413
        sent[0] = 0
        before = proc.memory_info().rss
        peak = [before]
        done = threading.Event()

        def watch():
            while not done.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss)
                time.sleep(0.005)

        watcher = threading.Thread(target=watch)
        watcher.start()
        started = time.perf_counter()
        resp = client.post("/predict", content=body(50), headers={"content-type": "application/json"})
        seconds = time.perf_counter() - started
        done.set()
        watcher.join()
        assert client.post("/predict", json={"text": "still serving"}).status_code == 200
    growth = peak[0] - before
    print(f"\n50 MB chunked body: HTTP {resp.status_code} in {seconds:.2f} s, {sent[0] / 2**20:.0f} MiB sent, "
          f"gateway RSS growth {growth / 2**20:.2f} MiB (limit {limit / 2**20:.2f} MiB)")
    assert resp.status_code == 413 and "byte limit" in resp.json()["error"]
    assert resp.request.headers.get("transfer-encoding") == "chunked" and "content-length" not in resp.request.headers
    assert growth < 4 * limit


def test_the_config_beside_the_gateway_holds_no_secret(secured):
    cfg, info = secured
    path = Path(info.config)
    shown = path.read_text()
    assert TRACKING_SECRET not in shown and f"ftops:{security.MASK}@" in shown
    assert path.stat().st_mode & 0o777 == 0o600
    environ = psutil.Process(info.pid).environ()
    assert TRACKING_SECRET in environ[security.ENV_SECRETS]  # the child got the real value another way
    assert TRACKING_SECRET not in (Path(info.log).read_text(errors="replace"))
