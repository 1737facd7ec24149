"""The gateway: text in/out HTTP in front of Triton (docs/security.md says what it guards).

It answers `/predict` from the route the traffic policy picks (ftops.serve.traffic),
logs every answer to the prediction log without making the caller wait for the store,
takes delayed labels on `/feedback`, and reports `/health` and Prometheus `/metrics`.

Integrity: text the log cannot store is refused up front (422), so the log never blocks;
rows the store still refuses go to `<project>/gateway/dead-letter.jsonl`. Labels steer the
next model, so `/feedback` takes them only from a configured sender when any token is set
(security.gateway_tokens; 401 otherwise), rate-limited per sender (429), checked against the
label set (422) and one per request id (409 unless `replace`). Bodies are bounded while
they stream (413). A 5xx tells the caller only a request id; the details go to the log.

Request ids: one per text. A single-text request's id is the response's `request_id`;
a batch of n texts gets `request_id` for the call and `<request_id>-<i>` per text (in
each prediction), and each text is one log row under its own id, so `/feedback` always
names exactly one text. A shadow answer is logged under the same id with route `shadow`.

Routes are re-read from `<project>/triton/routing.json` at most every
`serving.route_refresh_s`, so a deploy or rollback is followed without a restart; so is
the traffic policy of a running experiment (`<project>/triton/experiment.json`, written by
`ftops ab start`; ftops.serve.traffic.LivePolicy), else `serving.traffic`.

Faults: a challenger that fails (Triton error, model not loaded, time limit) never costs
its users an answer: the champion answers instead, counted in
`ftops_gateway_fallbacks_total{from_route,reason}` and `/health`'s `fallbacks`, and logged
with `fallback_from` (ftops.predlog says how the A/B report reads it). Only when the
champion itself cannot answer is it a 503, whose body names what is down (`down`) and says
the request may be sent again (`Retry-After`). Every Triton call has the limits of
`TritonClient.for_config`; `/health` answers within `timeouts.triton_probe_s`.

Shutdown (SIGTERM): uvicorn stops taking requests and finishes those in flight; then the
log is written first (every answered request's row), then the shadow copies still queued
are dropped (counted), those running get SHADOW_WAIT_S, and what they logged is written.
A SIGKILL loses at most the rows of the last `serving.log_flush_ms` (plus one batch in
flight). With `serving.gateway_port: 0`, a start reuses the port of the project's last run
(`<project>/gateway/last_port`) while it is free, so a restarted gateway keeps its clients.

Process: `ftops gateway up` runs `python -m ftops.serve.gateway --fd N` with a socket
bound here (port 0 = a free one, no race), state in `<project>/gateway/gateway.json`,
stopped by PID like Triton. `uvicorn ftops.serve.gateway:app_from_env --factory` also
works (config from $FTOPS_GATEWAY_CONFIG, else the usual load_config lookup). The config
file written beside the gateway (`<project>/gateway/config.json`, mode 0600) shows URL
passwords masked; the child gets the real values through its environment (security.seal), and write
tokens the way security.gateway_tokens reads them (the environment it inherits, or the file).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as wait_futures
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, model_validator
from sqlalchemy.exc import SQLAlchemyError

from ftops import atomic, predlog, procs, security
from ftops.config import Config, load_config
from ftops.errors import FtopsError
from ftops.serve import server
from ftops.serve.client import Prediction, TritonClient, failure_kind
from ftops.serve.deploy import Route, routing
from ftops.serve.repository import ServingError
from ftops.serve.traffic import LivePolicy

ENV_CONFIG = "FTOPS_GATEWAY_CONFIG"
DEAD_LETTER_MAX_BYTES = 64 * 2 ** 20  # refused rows kept on disk; beyond, only counted
GRACEFUL_S = 10  # in-flight requests get this long to finish at shutdown
LOG_CLOSE_S = 15  # then the log buffer this long to reach the store (shadow calls included)
SHADOW_WAIT_S = 2  # shadow calls already running at shutdown get this long, within LOG_CLOSE_S
STOP_TIMEOUT_S = GRACEFUL_S + LOG_CLOSE_S + 5
RETRY_AFTER_S = 5  # a 503's Retry-After: the supervisor checks every few seconds and restarts what died
LATENCY_BUCKETS = (.002, .005, .01, .02, .035, .05, .075, .1, .15, .25, .5, 1, 2.5, 5, 10)
PUBLIC_FAILURES = {  # what a caller learns of a 5xx; the details go to the log under the request id
    500: "internal error in the gateway; retry later",
    502: "the model server refused the request; retry later",
    503: "the gateway cannot answer now (see /health); retry later",
}
PUBLIC_DOWN = {  # a 503's `down`: what cannot answer, in words a caller may see (no address, no detail)
    "triton": "the model server (Triton) is not reachable",
    "timeout": "the model server did not answer within its time limit",
    "model": "the champion model is not loaded on the model server",
    "deployment": "no model is deployed",
    "routing": "the gateway cannot read its routing state",
    "prediction_log": "the prediction log is unavailable",
    "gateway": "the gateway cannot answer now",
}
DOWN_OF_KIND = {"unreachable": "triton", "timeout": "timeout", "not_loaded": "model"}  # client.failure_kind

logger = logging.getLogger("ftops.gateway")


class GatewayError(FtopsError):
    pass


class RequestError(Exception):
    """A request the gateway refuses or cannot answer: HTTP status and one clear message."""

    def __init__(self, status: int, message: str, route: str = "-", version: str = "-",
                 headers: dict[str, str] | None = None, down: str = "gateway", kind: str = "error"):
        super().__init__(message)
        self.status, self.message, self.route, self.version = status, message, route, version
        self.headers, self.down, self.kind = headers, down, kind  # down: a PUBLIC_DOWN key (503s)


# ---------------------------------------------------------------- API models


class PredictRequest(BaseModel):
    """Either `text` (one) or `texts` (a batch); `user` makes the A/B arm sticky."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"text": "@united my bag is lost again", "user": "customer-42"}, {"texts": ["great crew", "delayed"]}]})
    text: StrictStr | None = Field(None, description="one text to classify")
    texts: list[StrictStr] | None = Field(None, description="several texts; one request id each")
    user: StrictStr | None = Field(None, max_length=256, description="sticky A/B key (same key, same arm)")

    @model_validator(mode="after")
    def _one_of(self) -> PredictRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("send exactly one of 'text' (a string) or 'texts' (a list of strings)")
        return self


class PredictionOut(BaseModel):
    request_id: str = Field(description="this text's id; send it to /feedback")
    label: str
    probs: dict[str, float] = Field(description="probability per label")
    confidence: float = Field(description="the top probability")


class PredictResponse(BaseModel):
    request_id: str = Field(description="the call's id (equals the prediction's for one text)")
    predictions: list[PredictionOut]
    model: str = Field(description="Triton ensemble that answered")
    version: str | None = Field(description="registry version, when the deploy named one")
    tag: str = Field(description="deployment tag (v<version> or x<onnx digest>)")
    route: str = Field(description="champion or challenger: the route that answered")
    fallback_from: str | None = Field(None, description="the route the request was assigned when it failed "
                                                        "and the champion answered instead")


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: StrictStr = Field(min_length=1, max_length=64)
    label: StrictStr = Field(min_length=1, max_length=128, description="the true label")
    replace: StrictBool = Field(False, description="replace the request's current label (else a second label is 409)")


class FeedbackResponse(BaseModel):
    request_id: str
    label: str
    rows: int = Field(description="log rows updated (the served answer and any shadow answer)")
    sender: str = Field(description="who the label is recorded from (the token's name, or anonymous)")


class ErrorResponse(BaseModel):
    error: str
    detail: Any | None = None
    request_id: str | None = Field(None, description="on a 5xx: quote it; the gateway's log has the details")
    down: str | None = Field(None, description=f"on a 503: what cannot answer ({', '.join(PUBLIC_DOWN)})")
    retry_after_s: int | None = Field(None, description="on a 503: the request was not answered; send it again "
                                                        "after this many seconds (also the Retry-After header)")


class HealthResponse(BaseModel):
    status: str = Field(description="ok or unavailable")
    reason: str | None = None
    policy: str
    note: str | None = Field(None, description="why traffic does not follow the policy (no challenger)")
    champion: dict | None = None
    challenger: dict | None = None
    triton: str | None = None
    writes: str = Field(description="token: /feedback needs a bearer token; open: anyone on this host may label")
    log: dict
    fallbacks: dict = Field(description="requests the champion answered because their route failed: "
                                        "{route: {reason: count}}")
    shadow: dict = Field(description="shadow copies that failed, were dropped (queue full) or cancelled (shutdown)")


ERRORS = {status: {"model": ErrorResponse, "description": text} for status, text in (
    (400, "invalid JSON"), (401, "no valid bearer token (when the gateway has tokens)"),
    (404, "unknown request id"), (409, "the request id is labelled already (send replace: true)"),
    (413, "text, batch or body too large"), (422, "wrong types, empty text, NUL or unknown label"),
    (429, "too many labels from one sender (see Retry-After)"), (500, "internal error (request id only)"),
    (502, "Triton refused the request"),
    (503, "the champion cannot answer (Triton down or hung, champion not loaded, nothing deployed) or the "
          "prediction log is unavailable: `down` says which; retry after Retry-After"))}


# ---------------------------------------------------------------- routes, labels, clients


@dataclass
class View:
    routes: dict[str, Route]
    server: server.ServerInfo | None
    read_at: float


class RouteTable:
    """routing.json and Triton's state file, re-read at most every `every_s` seconds."""

    def __init__(self, config: Config, every_s: float):
        self.config, self.every_s = config, every_s
        self._view = View({}, None, float("-inf"))
        self._lock = threading.Lock()
        self._labels: dict[str, list[str]] = {}

    def view(self) -> View:
        if time.monotonic() - self._view.read_at < self.every_s:
            return self._view
        with self._lock:
            if time.monotonic() - self._view.read_at >= self.every_s:
                self._view = self._read()
        return self._view

    def _read(self) -> View:
        try:
            return View(routing(self.config), server.status(self.config), time.monotonic())
        except (OSError, ValueError, TypeError) as exc:  # a file caught mid-write: keep the last view
            if self._view.read_at == float("-inf"):
                raise RequestError(503, f"Cannot read the routing state: {exc}", down="routing") from None
            return View(self._view.routes, self._view.server, time.monotonic())

    def labels(self, ensemble: str, export: str | None = None) -> list[str] | None:
        """The label names of a served ensemble: Triton's repository copy, else the export's."""
        if ensemble not in self._labels:
            repo = server.repository_dir(self.config)
            places = [repo / f"{ensemble}-classifier" / "1" / "labels.json",
                      repo / f"{ensemble}-postprocess" / "1" / "labels.json"]
            places += [Path(export) / "labels.json"] if export else []
            for place in places:
                if place.is_file():
                    self._labels[ensemble] = json.loads(place.read_text())
                    break
        return self._labels.get(ensemble)


class Clients:
    """Triton clients with the config's limits: one shared per URL for gRPC (thread-safe),
    one per thread for HTTP (geventhttpclient is not)."""

    def __init__(self, config: Config):
        self.config, self.protocol = config, config.serving.protocol
        self._shared: dict[str, TritonClient] = {}
        self._local = threading.local()
        self._all: list[TritonClient] = []
        self._lock = threading.Lock()

    def get(self, url: str) -> TritonClient:
        pool = self._shared if self.protocol == "grpc" else self._local.__dict__
        client = pool.get(url)
        if client is None:
            with self._lock:
                client = pool.get(url)
                if client is None:
                    client = pool[url] = TritonClient.for_config(url, self.config)
                    self._all.append(client)
        return client

    def close(self) -> None:
        with self._lock:
            for client in self._all:
                try:
                    client.close()
                except Exception:  # closing a client of a server already gone
                    pass
            self._all.clear()
            self._shared.clear()


# ---------------------------------------------------------------- metrics


class Metrics:
    """Prometheus metrics in a registry of this app (several apps may share a process)."""

    def __init__(self, writer: predlog.LogWriter, dead_letter: predlog.DeadLetterFile):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("ftops_gateway_requests", "Answered requests (a batch is one) by route and model version",
                                ["route", "version"], registry=self.registry)
        self.errors = Counter("ftops_gateway_errors", "Failed requests by route, model version and HTTP status",
                              ["route", "version", "status"], registry=self.registry)
        self.latency = Histogram("ftops_gateway_latency_seconds", "Triton call latency by model version",
                                 ["version"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.shadow_dropped = Counter("ftops_gateway_shadow_dropped", "Shadow copies dropped: queue full",
                                      registry=self.registry)
        self.shadow_cancelled = Counter("ftops_gateway_shadow_cancelled", "Shadow copies still queued at "
                                        "shutdown, dropped so that the log is written first", registry=self.registry)
        self.fallbacks = Counter("ftops_gateway_fallbacks", "Requests the champion answered because the route "
                                 "they were assigned failed, by that route and why (unreachable, not_loaded, "
                                 "timeout, refused, error)", ["from_route", "reason"], registry=self.registry)
        self.registry.register(_LogCollector(writer, dead_letter))

    def fallback_counts(self) -> dict[str, dict[str, int]]:
        """{from_route: {reason: count}} of the fallbacks counter."""
        out: dict[str, dict[str, int]] = {}
        for sample in _totals(self.fallbacks):
            out.setdefault(sample.labels["from_route"], {})[sample.labels["reason"]] = int(sample.value)
        return out

    def shadow_counts(self) -> dict[str, int]:
        failed = sum(s.value for s in _totals(self.errors) if s.labels["route"] == "shadow")
        return {"failed": int(failed), "dropped": int(_value(self.shadow_dropped)),
                "cancelled": int(_value(self.shadow_cancelled))}

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def _totals(counter) -> list:
    return [s for s in counter.collect()[0].samples if s.name.endswith("_total")]


def _value(counter) -> float:
    return sum(s.value for s in _totals(counter))


class _LogCollector:
    """The log writer's own counts, read at scrape time."""

    def __init__(self, writer: predlog.LogWriter, dead_letter: predlog.DeadLetterFile):
        self.writer, self.dead_letter = writer, dead_letter

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        w = self.writer
        yield GaugeMetricFamily("ftops_gateway_log_buffer_rows", "Log rows waiting to be written", value=w.buffered)
        yield CounterMetricFamily("ftops_gateway_log_written_rows", "Log rows written", value=w.written)
        yield CounterMetricFamily("ftops_gateway_log_dropped_rows", "Log rows dropped (buffer full or "
                                  "store down at shutdown)", value=w.dropped)
        yield CounterMetricFamily("ftops_gateway_log_write_errors", "Failed log writes (store down: rows kept "
                                  "and retried; rows refused: set aside)", value=w.write_errors)
        yield CounterMetricFamily("ftops_gateway_log_dead_letter_rows", "Log rows the store refused, set aside "
                                  "in the dead-letter file", value=w.dead_lettered)
        yield CounterMetricFamily("ftops_gateway_log_dead_letter_unsaved_rows", "Refused rows not saved: the "
                                  "dead-letter file is at its size limit", value=self.dead_letter.unsaved)


class RateLimit:
    """A token bucket per sender: `per_minute` requests a minute, bursts up to that many.
    A dozen lines, so no library: slowapi / limits bring a storage backend that one gateway
    process, which holds all of its senders' state, does not need."""

    def __init__(self, per_minute: int):
        self.rate, self.capacity = per_minute / 60.0, float(per_minute)
        self._buckets: dict[str, tuple[float, float]] = {}  # sender -> (tokens, when); one per token name
        self._lock = threading.Lock()

    def wait_s(self, key: str) -> float:
        """0 when the request may go (a token is taken), else the seconds until one is back."""
        now = time.monotonic()
        with self._lock:
            tokens, then = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - then) * self.rate)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate


# ---------------------------------------------------------------- the gateway


class Gateway:
    """Everything behind the endpoints; the FastAPI layer only translates HTTP."""

    def __init__(self, config: Config):
        self.config = config.resolved()
        self.serving = cfg = self.config.serving
        self.config.project.dir.mkdir(parents=True, exist_ok=True)
        self.routes = RouteTable(self.config, cfg.route_refresh_s)
        self.policy = LivePolicy.for_config(self.config)  # the running experiment's, else serving.traffic
        self.clients = Clients(self.config)
        self._engine = None
        self._engine_lock = threading.Lock()
        self.tokens = security.gateway_tokens(self.config)
        self.limiter = RateLimit(self.config.feedback.per_minute)
        self.dead_letter = predlog.DeadLetterFile(state_dir(self.config) / "dead-letter.jsonl", DEAD_LETTER_MAX_BYTES)
        self.writer = predlog.LogWriter(self._write, cfg.log_buffer_rows, cfg.log_batch_rows, cfg.log_flush_ms,
                                        dead_letter=self.dead_letter)
        self.metrics = Metrics(self.writer, self.dead_letter)
        self.shadow = ThreadPoolExecutor(max_workers=2, thread_name_prefix="shadow")
        self._shadow_slots = threading.BoundedSemaphore(cfg.shadow_pending)
        self._shadow_futures: set[Future] = set()
        self._shadow_lock = threading.Lock()
        self._closing = False
        self._probes = ThreadPoolExecutor(max_workers=4, thread_name_prefix="probe")
        self._fallback_logged: dict[tuple[str, str], int] = {}

    # ------------------------------------------------ lifecycle

    def start(self) -> None:
        try:
            self.engine()  # the table exists before the first request
        except Exception as exc:  # the store is down: the writer retries, requests go on
            self.writer.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
            logger.error("prediction log unavailable at start (%s); rows are buffered and retried",
                         security.mask_url(self.writer.last_error))
        self.writer.start()

    def close(self) -> Closed:
        """Shut down in the order that keeps every promise: the requests in flight are done
        (uvicorn waits for them), so first every row of an answered request is written; then
        the shadow copies still queued are dropped (an experiment's sample, not an answer
        anyone waits for), those running get SHADOW_WAIT_S, and their rows are written too."""
        deadline = time.monotonic() + LOG_CLOSE_S
        self._closing = True
        flushed = self.writer.flush(LOG_CLOSE_S)
        cancelled, running = self._drop_shadows()
        _, unfinished = wait_futures(running, timeout=max(0.0, min(SHADOW_WAIT_S, deadline - time.monotonic())))
        self.shadow.shutdown(wait=False)
        lost = self.writer.close(max(0.5, deadline - time.monotonic()))
        self._probes.shutdown(wait=False, cancel_futures=True)
        self.clients.close()
        if self._engine is not None:
            self._engine.dispose()
        closed = Closed(lost, cancelled, len(unfinished))
        say = logger.error if lost or not flushed else logger.info
        say("shutdown: %d log rows written since start, %d lost; %d queued shadow copies dropped, %d shadow "
            "calls still running", self.writer.written, lost, cancelled, len(unfinished))
        return closed

    def _drop_shadows(self) -> tuple[int, list[Future]]:
        """Cancel the queued shadow copies (counted); the ones already running."""
        with self._shadow_lock:
            futures = list(self._shadow_futures)
        cancelled = sum(f.cancel() for f in futures)
        self.metrics.shadow_cancelled.inc(cancelled)
        return cancelled, [f for f in futures if not f.cancelled()]

    def engine(self):
        """Created on first use, so a store that is down at start only delays the log."""
        if self._engine is None:
            with self._engine_lock:
                if self._engine is None:
                    self._engine = predlog.engine(self.config.uris.prediction_log, self.config.timeouts.database_s)
        return self._engine

    def _write(self, rows: list[dict]) -> None:
        predlog.write(self.engine(), rows)

    # ------------------------------------------------ predict

    def predict(self, body: PredictRequest) -> dict:
        texts = check_texts(body, self.serving.max_text_bytes, self.serving.max_texts_per_request)
        storable(body.user, "user")
        view = self.routes.view()
        assignment = self.policy.assign(body.user, "challenger" in view.routes)
        call_id = uuid.uuid4().hex
        ids = [call_id] if body.text is not None else [f"{call_id}-{i}" for i in range(len(texts))]
        answer = self._answer(view, assignment.route, texts)
        labels = self._labels(answer.route, answer.preds)
        self._log(ids, texts, answer, body.user)
        if assignment.shadow:
            self._mirror(view, answer.url, ids, texts, body.user)
        route = answer.route
        return {"request_id": call_id, "model": route.ensemble, "version": route.version, "tag": route.tag,
                "route": answer.role, "fallback_from": answer.fallback_from,
                "predictions": [{"request_id": rid, "label": p.label, "confidence": p.confidence,
                                 "probs": dict(zip(labels, p.probs))} for rid, p in zip(ids, answer.preds)]}

    def _answer(self, view: View, role: str, texts: list[str]) -> Answer:
        """The assigned route's answer; when that route is not the champion and fails in any
        way, the champion's (a fallback: counted, logged on the row, the caller told)."""
        route, url = self._target(view, role)
        try:
            return Answer(route, role, url, *self._classify(url, route, texts, role))
        except Exception as exc:  # noqa: BLE001 - the challenger is an experiment: any failure falls back
            if role == "champion":
                raise
            self._fell_back(role, exc)
        route, url = self._target(view, "champion")
        return Answer(route, "champion", url, *self._classify(url, route, texts, "champion"), fallback_from=role)

    def _fell_back(self, role: str, exc: Exception) -> None:
        reason = exc.kind if isinstance(exc, RequestError) else "error"
        self.metrics.fallbacks.labels(role, reason).inc()
        seen = self._fallback_logged[role, reason] = self._fallback_logged.get((role, reason), 0) + 1
        if seen == 1 or seen % 1000 == 0:  # one line per reason, then one per thousand: not one per request
            logger.warning("the %s failed (%s; %d such fallbacks so far): the champion answered instead (%s)", role,
                           reason, seen, security.mask_url(str(exc)), exc_info=not isinstance(exc, RequestError))

    def _target(self, view: View, role: str) -> tuple[Route, str]:
        route = view.routes.get(role)
        if route is None:
            raise RequestError(503, "Nothing is deployed: no champion route in routing.json. "
                                    "Deploy a model with `ftops deploy --export ...`.", down="deployment")
        if view.server is None:
            raise RequestError(503, "Triton is not running for this project. Start it with `ftops serve up`.",
                               role, _version(route), down="triton", kind="unreachable")
        return route, view.server.url(self.serving.protocol)

    def _classify(self, url: str, route: Route, texts: list[str], role: str) -> tuple[list[Prediction], float]:
        started = time.perf_counter()
        try:
            preds = self.clients.get(url).classify(texts, route.ensemble, self.serving.max_batch_size)
        except ServingError as exc:
            kind = failure_kind(str(exc))
            raise RequestError(502 if kind == "refused" else 503, str(exc), role, _version(route),
                               down=DOWN_OF_KIND.get(kind, "gateway"), kind=kind) from None
        seconds = time.perf_counter() - started
        self.metrics.latency.labels(_version(route)).observe(seconds)
        self.metrics.requests.labels(role, _version(route)).inc()
        return preds, 1000 * seconds

    def _labels(self, route: Route, preds: list[Prediction]) -> list[str]:
        labels = self.routes.labels(route.ensemble, route.export)
        k = len(preds[0].probs) if preds else 0
        if labels is None or len(labels) != k:  # no labels file found: name classes by index
            labels = [str(i) for i in range(k)]
        return labels

    def _log(self, ids: list[str], texts: list[str], answer: Answer, user: str | None) -> None:
        """Rows into the writer's buffer; the latency is the whole Triton call's, per text."""
        keep, route = self.serving.keep_text, answer.route
        rows = [predlog.Record(rid, text, p.label, p.confidence, p.probs, answer.latency_ms, route.ensemble,
                               route.version, answer.role, user, fallback_from=answer.fallback_from).row(keep)
                for rid, text, p in zip(ids, texts, answer.preds)]
        self.writer.put(rows)

    # ------------------------------------------------ shadow

    def _mirror(self, view: View, url: str, ids: list[str], texts: list[str], user: str | None) -> None:
        """Queue a copy for the challenger; a full queue drops the copy (counted), never waits."""
        if self._closing or not self._shadow_slots.acquire(blocking=False):
            self.metrics.shadow_dropped.inc()
            return
        try:
            future = self.shadow.submit(self._shadow_call, view.routes["challenger"], url, ids, texts, user)
        except RuntimeError:  # shutting down
            self._shadow_slots.release()
            return
        with self._shadow_lock:
            self._shadow_futures.add(future)
        future.add_done_callback(self._shadow_done)

    def _shadow_done(self, future: Future) -> None:
        self._shadow_slots.release()
        with self._shadow_lock:
            self._shadow_futures.discard(future)

    def _shadow_call(self, route: Route, url: str, ids: list[str], texts: list[str], user: str | None) -> None:
        """The caller has its answer already: a failure here is only counted (errors{route="shadow"})."""
        try:
            preds, latency_ms = self._classify(url, route, texts, "shadow")
        except RequestError as exc:
            self.metrics.errors.labels("shadow", exc.version, str(exc.status)).inc()
            return
        except Exception:  # noqa: BLE001 - never the caller's problem
            self.metrics.errors.labels("shadow", _version(route), "500").inc()
            logger.exception("shadow call to %s failed", route.ensemble)
            return
        self._log(ids, texts, Answer(route, "shadow", url, preds, latency_ms), user)

    # ------------------------------------------------ feedback

    def sender_of(self, authorization: str | None) -> str:
        """Who sends a label: the bearer token's name (401 without a valid one, when any token
        is configured), else anonymous; 429 past the sender's feedback.per_minute."""
        who = security.ANONYMOUS
        if self.tokens:
            who = security.sender(self.tokens, authorization)
            if who is None:
                why = "no bearer token was sent" if not authorization else "the bearer token is not a valid one"
                raise RequestError(401, f"This gateway takes labels only from configured senders and {why}: "
                                        "send `Authorization: Bearer <token>` with a token from "
                                        "security.tokens_file or $FTOPS_GATEWAY_TOKENS.",
                                   headers={"WWW-Authenticate": "Bearer"})
        wait = self.limiter.wait_s(who)
        if wait:
            raise RequestError(429, f"Too many labels from {who}: the limit is {self.config.feedback.per_minute} "
                                    "a minute (feedback.per_minute); retry after the Retry-After seconds.",
                               headers={"Retry-After": str(math.ceil(wait))})
        return who

    def feedback(self, body: FeedbackRequest, sender: str = security.ANONYMOUS) -> dict:
        storable(body.request_id, "request_id")
        storable(body.label, "label")
        model = self._served_model(body.request_id)
        allowed = self._label_set(model)
        if body.label not in allowed:
            raise RequestError(422, f"Label '{body.label}' is not one of the project's labels: "
                                    f"{', '.join(sorted(allowed))}.")
        try:
            rows = self._store(lambda: predlog.add_feedback(self.engine(), body.request_id, body.label, sender,
                                                            body.replace))
        except predlog.AlreadyLabelled as exc:
            raise RequestError(409, f"Request '{body.request_id}' already has the label '{exc.label}' from "
                                    f"{exc.sender}; send \"replace\": true to replace it.") from None
        return {"request_id": body.request_id, "label": body.label, "rows": rows, "sender": sender}

    def _label_set(self, model: str) -> list[str]:
        """config.data.labels, else the answering model's labels; a 422 when neither is known,
        rather than accepting any string as a label to train on."""
        if self.config.data.labels:
            return list(self.config.data.labels)
        export = next((r.export for r in self.routes.view().routes.values() if r.ensemble == model), None)
        labels = self.routes.labels(model, export)
        if not labels:
            raise RequestError(422, f"No label set is known for model {model} (no labels.json in its Triton "
                                    "repository or export), so no label can be checked: set data.labels in "
                                    "the project config.")
        return list(labels)

    def _served_model(self, request_id: str) -> str:
        """The model whose answer the caller got; a request answered a moment ago may still be
        in the buffer, so an unknown id first waits for the buffer to reach the store."""
        model = self._store(lambda: predlog.served_model(self.engine(), request_id))
        if model is None:  # not `if buffered`: the write may have landed between the query and now
            self.writer.flush(timeout_s=5.0)  # returns at once when nothing is pending
            model = self._store(lambda: predlog.served_model(self.engine(), request_id))
        if model is None:
            raise RequestError(404, f"Unknown request_id '{request_id}': no logged prediction has it. Use the "
                                    "request_id of one prediction (a batch has one per text).")
        return model

    def _store(self, call):
        try:
            return call()
        except (SQLAlchemyError, OSError) as exc:  # the store is down: a 503, not a bare 500
            raise RequestError(503, f"The prediction log is unavailable ({predlog.describe_error(exc)}).",
                               down="prediction_log") from None

    # ------------------------------------------------ health

    def health(self) -> tuple[int, dict]:
        view = self.routes.view()
        champion, challenger = view.routes.get("champion"), view.routes.get("challenger")
        reason, note = self._probe_in_time(view, champion, challenger)
        body = {"status": "unavailable" if reason else "ok", "reason": reason, "policy": self.policy.describe(),
                "note": note or self.policy.assign(None, challenger is not None).note,
                "champion": _route_dict(champion), "challenger": _route_dict(challenger),
                "triton": view.server.url(self.serving.protocol) if view.server else None,
                "writes": "token" if self.tokens else "open",
                "log": {"buffered": self.writer.buffered, "written": self.writer.written,
                        "dropped": self.writer.dropped, "write_errors": self.writer.write_errors,
                        "dead_lettered": self.writer.dead_lettered,
                        "dead_letter_unsaved": self.dead_letter.unsaved},  # counts only: errors are in the log
                "fallbacks": self.metrics.fallback_counts(), "shadow": self.metrics.shadow_counts()}
        return (503 if reason else 200), body

    def _probe_in_time(self, view: View, champion: Route | None, challenger: Route | None):
        """`_probe` within timeouts.triton_probe_s in all: the probes run in a pool and are not
        waited for past the limit, so /health answers even while Triton hangs."""
        limit = self.config.timeouts.triton_probe_s
        try:
            return self._probes.submit(self._probe, view, champion, challenger).result(limit)
        except FutureTimeout:
            return f"Triton did not answer the health probes within {limit:g} s (timeouts.triton_probe_s).", None

    def _probe(self, view: View, champion: Route | None, challenger: Route | None) -> tuple[str | None, str | None]:
        """(why the gateway cannot answer, a note on the challenger); each probe has its own limit."""
        reason = self._unhealthy(view, champion)
        if reason or challenger is None or self.policy.name == "champion":
            return reason, None
        if not self.clients.get(view.server.url(self.serving.protocol)).ready(challenger.ensemble):
            return None, (f"the challenger {challenger.ensemble} is not loaded on Triton: the champion answers "
                          "its share of traffic (see fallbacks)")
        return None, None

    def _unhealthy(self, view: View, champion: Route | None) -> str | None:
        if view.server is None:
            return "Triton is not running for this project (`ftops serve up`)."
        if not server.ready(view.server, timeout=self.config.timeouts.triton_probe_s):
            return f"Triton at {view.server.http_url} does not answer its readiness check."
        if champion is None:
            return "No champion route: nothing is deployed (`ftops deploy --export ...`)."
        if not self.clients.get(view.server.url(self.serving.protocol)).ready(champion.ensemble):
            return f"The champion model {champion.ensemble} is not loaded on Triton."
        return None


@dataclass
class Answer:
    """One route's answer to a request's texts."""

    route: Route
    role: str  # the route that answered: champion, challenger or shadow
    url: str
    preds: list[Prediction]
    latency_ms: float
    fallback_from: str | None = None  # the route assigned, when it failed and the champion answered


@dataclass
class Closed:
    """What a shutdown cost: log rows not written, shadow copies dropped from the queue,
    shadow calls still running when the gateway stopped waiting."""

    rows_lost: int
    shadow_cancelled: int
    shadow_unfinished: int


def _version(route: Route) -> str:
    """The metrics' version label: the registry version, else the deployment tag."""
    return route.version or route.tag


def _route_dict(route: Route | None) -> dict | None:
    return None if route is None else asdict(route)


def check_texts(body: PredictRequest, max_bytes: int, max_texts: int) -> list[str]:
    """The request's texts, or a 413/422 naming the first offending one."""
    texts = [body.text] if body.text is not None else list(body.texts or [])
    if not texts:
        raise RequestError(422, "'texts' is empty: send at least one text.")
    if len(texts) > max_texts:
        raise RequestError(413, f"{len(texts)} texts in one request; the limit is {max_texts} "
                                "(serving.max_texts_per_request). Split the batch.")
    for i, text in enumerate(texts):
        if not text.strip():
            raise RequestError(422, f"text {i} is empty (or only whitespace); nothing to classify.")
        storable(text, f"text {i}")
        size = len(text.encode("utf-8"))
        if size > max_bytes:
            raise RequestError(413, f"text {i} is {size} bytes of UTF-8; the limit is {max_bytes} "
                                    "(serving.max_text_bytes).")
    return texts


def storable(value: str | None, what: str) -> None:
    """A 422 for text the prediction log cannot hold, so it never reaches (and blocks) the
    writer: NUL (PostgreSQL text refuses it) and lone surrogates (not UTF-8)."""
    if value is None:
        return
    if "\x00" in value:
        raise RequestError(422, f"{what} contains a NUL character (U+0000), which the prediction log cannot "
                                "store; remove it.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(422, f"{what} is not valid Unicode (a lone surrogate escape?).") from None


# ---------------------------------------------------------------- the app


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Refuse a request body over `limit` bytes without ever holding much more of it: at once
    from Content-Length, else (chunked bodies) by counting bytes as the app receives them and
    answering 413 as soon as the count passes the limit. ASGI middleware: one header lookup
    and one addition per chunk."""

    def __init__(self, app, limit: int, on_refuse=None):
        self.app, self.limit, self.on_refuse = app, limit, on_refuse

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            await self._refuse(scope, receive, send, f"request body of {int(length)} bytes is over the "
                                                     f"gateway's {self.limit} byte limit")
            return
        seen, over, started = 0, False, False

        async def counted():
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise BodyTooLarge(seen)
            return message

        async def guarded(message):
            nonlocal started
            if over:  # the app's own answer to the cut-off body (FastAPI makes it a 400): replaced below
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not over:
                raise
        if over and not started:
            await self._refuse(scope, receive, send, f"request body is over the gateway's {self.limit} byte "
                                                     f"limit (refused after {seen} bytes)")

    async def _refuse(self, scope, receive, send, message: str) -> None:
        if self.on_refuse is not None:
            self.on_refuse()
        await JSONResponse({"error": message}, status_code=413)(scope, receive, send)


def create_app(config: Config) -> FastAPI:
    """The gateway's FastAPI app; its lifespan starts the log writer and flushes it at exit."""
    gateway = Gateway(config)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        gateway.start()
        yield
        await run_in_threadpool(gateway.close)

    app = FastAPI(title="ftops gateway", version="1", lifespan=lifespan,
                  description="Text in, label out, in front of Triton; every answer is logged.")
    app.state.gateway = gateway
    cfg = gateway.serving
    # JSON may spell a byte as \uXXXX (6 bytes) or a 4-byte character as a 12-byte surrogate pair.
    app.add_middleware(BodyLimit, limit=cfg.max_texts_per_request * cfg.max_text_bytes * 6 + 65536,
                       on_refuse=lambda: gateway.metrics.errors.labels("-", "-", "413").inc())
    _handlers(app, gateway)
    _routes(app, gateway)
    return app


def _handlers(app: FastAPI, gateway: Gateway) -> None:
    @app.exception_handler(RequestError)
    async def refused(_request: Request, exc: RequestError):
        gateway.metrics.errors.labels(exc.route, exc.version, str(exc.status)).inc()
        if exc.status >= 500:
            return failure(exc.status, exc.message, down=exc.down)
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(Exception)
    async def crashed(_request: Request, exc: Exception):
        gateway.metrics.errors.labels("-", "-", "500").inc()
        return failure(500, f"{type(exc).__name__}: {exc}", exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            status, message = 400, f"The body is not valid JSON: {errors[0].get('ctx', {}).get('error', '')}".strip()
        else:
            status = 422
            message = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in errors)
        gateway.metrics.errors.labels("-", "-", str(status)).inc()
        detail = [{k: e[k] for k in ("loc", "msg", "type") if k in e} for e in errors]
        return JSONResponse({"error": message, "detail": detail}, status_code=status)


def failure(status: int, detail: str, exc: BaseException | None = None, down: str = "gateway") -> JSONResponse:
    """A 5xx: the caller gets a generic message and a request id, the log the details. A 503
    also says what is down (a PUBLIC_DOWN key and its words) and that the request, which was
    not answered, may be sent again after Retry-After seconds."""
    request_id = uuid.uuid4().hex
    logger.error("request %s failed with HTTP %d: %s", request_id, status, security.mask_url(detail), exc_info=exc)
    if status != 503:
        return JSONResponse({"error": PUBLIC_FAILURES.get(status, PUBLIC_FAILURES[500]), "request_id": request_id},
                            status_code=status)
    down = down if down in PUBLIC_DOWN else "gateway"
    body = {"error": f"{PUBLIC_DOWN[down]}: the request was not answered; retry later (it is safe to send "
                     f"again, after Retry-After seconds; /health says more)",
            "down": down, "retry_after_s": RETRY_AFTER_S, "request_id": request_id}
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})


def _routes(app: FastAPI, gateway: Gateway) -> None:
    def sender(authorization: str | None = Header(None, include_in_schema=False)) -> str:
        return gateway.sender_of(authorization)

    @app.post("/predict", response_model=PredictResponse, responses=ERRORS)
    def predict(body: PredictRequest):
        """Classify one text or a batch with the route the traffic policy picks."""
        return gateway.predict(body)

    @app.post("/feedback", response_model=FeedbackResponse, responses=ERRORS)
    def feedback(body: FeedbackRequest, who: str = Depends(sender)):
        """Attach the true label to a request's log rows (served and shadow); a bearer token
        names the sender when the gateway has tokens."""
        return gateway.feedback(body, who)

    @app.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
    def health():
        """200 when Triton answers and the champion is loaded; 503 with the reason otherwise;
        within timeouts.triton_probe_s, also while Triton hangs."""
        status, body = gateway.health()
        return JSONResponse(body, status_code=status)

    @app.get("/metrics", response_class=Response)
    def metrics():
        """Prometheus text format."""
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(gateway.metrics.text(), media_type=CONTENT_TYPE_LATEST)


def app_from_env() -> FastAPI:
    """uvicorn factory: the config file named by $FTOPS_GATEWAY_CONFIG (JSON written by
    `ftops gateway up`, or a project YAML), else the usual load_config lookup."""
    path = os.environ.get(ENV_CONFIG)
    if path and path.endswith(".json"):
        return create_app(security.unseal(Path(path).read_text()))
    return create_app(load_config(path or None))


# ---------------------------------------------------------------- the process


@dataclass
class GatewayInfo:
    pid: int
    host: str
    port: int
    log: str
    config: str

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def state_dir(config: Config) -> Path:
    return config.resolved().project.dir / "gateway"


def _state_file(config: Config) -> Path:
    return state_dir(config) / "gateway.json"


def _alive(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return b"ftops.serve.gateway" in cmdline and state != "Z"


def status(config: Config) -> GatewayInfo | None:
    """The running gateway of this project, or None (a stale state file is removed)."""
    path = _state_file(config)
    if not path.is_file():
        return None
    info = GatewayInfo(**json.loads(path.read_text()))
    if not _alive(info.pid):
        path.unlink(missing_ok=True)
        return None
    return info


def probe(url: str, timeout: float = 2.0) -> tuple[int, dict] | None:
    """GET /health: (status, body), or None when nothing answers."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except (OSError, ValueError):
        return None


def start(config: Config) -> GatewayInfo:
    """Start (or return the running) gateway on serving.host:gateway_port (0 = free port).

    The socket is bound here and handed to the child, so port 0 has no race and a busy
    port fails at once with a clear error. Ready once /health answers (200 or 503)."""
    running = status(config)
    if running is not None:
        return running
    resolved = _absolute_paths(config.resolved())
    _check_writes_guarded(resolved)
    folder = state_dir(resolved)
    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / "config.json"
    shown, secret_env = security.seal(resolved)
    _write_private(config_file, shown)
    sock = _listen(resolved)
    log = folder / "gateway.log"
    procs.rotate_log(log, resolved.retention)
    env = _child_env(config_file, secret_env)
    with sock, open(log, "ab") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "ftops.serve.gateway", "--fd", str(sock.fileno())],
                                stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=folder,
                                pass_fds=(sock.fileno(),), start_new_session=True)
        info = GatewayInfo(proc.pid, resolved.serving.host, sock.getsockname()[1], str(log), str(config_file))
    atomic.write_text(_state_file(resolved), json.dumps(asdict(info)))
    _wait_ready(resolved, proc, info)
    return info


def _absolute_paths(config: Config) -> Config:
    """The child runs in the gateway folder: a relative tokens file must still be found."""
    if config.security.tokens_file is not None:
        config.security.tokens_file = Path(config.security.tokens_file).expanduser().resolve()
    return config


def _check_writes_guarded(config: Config) -> None:
    """Labels train the next model: an open gateway is allowed only where only this host reaches it."""
    host = config.serving.host
    if not security.gateway_tokens(config) and not security.is_loopback(host):
        raise GatewayError(f"serving.host is {host}, which other machines can reach, and no write token is "
                           f"configured, so anyone could send labels. Set ${security.ENV_TOKENS} (name=token) or "
                           "security.tokens_file (one 'name token' per line), or serve on 127.0.0.1.")


def _child_env(config_file: Path, secret_env: dict[str, str]) -> dict[str, str]:
    """The child's environment: ours (tokens from the environment are inherited), the config
    file, and the values that file shows masked."""
    env = {**os.environ, ENV_CONFIG: str(config_file), **secret_env}
    if env.get(security.ENV_TOKENS_FILE):
        env[security.ENV_TOKENS_FILE] = str(Path(env[security.ENV_TOKENS_FILE]).expanduser().resolve())
    return env


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (0600), also when an older, more open one is there."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def _last_port_file(config: Config) -> Path:
    return state_dir(config) / "last_port"


def last_port(config: Config) -> int | None:
    """The port the project's last gateway listened on (kept apart from the state file,
    which goes when the process does); None before the first start."""
    try:
        return int(_last_port_file(config).read_text().strip())
    except (OSError, ValueError):
        return None


def _listen(config: Config) -> socket.socket:
    """The listening socket: serving.gateway_port, or with 0 the last run's port while it is
    free (a restart keeps the clients' URL), else a free one; the port is kept for next time."""
    host, port = config.serving.host, config.serving.gateway_port
    sock = None
    if port == 0 and (previous := last_port(config)):
        try:
            sock = _bind(host, previous)
        except GatewayError:
            logger.warning("the gateway's last port %d is taken: listening on a new one", previous)
    sock = sock or _bind(host, port)
    atomic.write_text(_last_port_file(config), f"{sock.getsockname()[1]}\n")
    return sock


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise GatewayError(f"Cannot bind the gateway to {host}:{port} ({exc.strerror}). Another process holds "
                           "the port: stop it, or set serving.gateway_port (0 picks a free port).") from None
    sock.listen(2048)
    return sock


def _wait_ready(config: Config, proc: subprocess.Popen, info: GatewayInfo) -> None:
    deadline = time.monotonic() + config.serving.ready_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _state_file(config).unlink(missing_ok=True)
            raise GatewayError(f"The gateway exited with code {proc.returncode} at start. "
                               f"Last log lines ({info.log}):\n{server.tail(info.log)}")
        if probe(info.url) is not None:
            return
        time.sleep(0.2)
    stop(config)
    raise GatewayError(f"The gateway did not answer /health within {config.serving.ready_timeout_s:.0f} s "
                       f"(serving.ready_timeout_s). Last log lines ({info.log}):\n{server.tail(info.log)}")


def stop(config: Config) -> bool:
    """SIGTERM (finish in-flight requests, flush the log), SIGKILL after STOP_TIMEOUT_S;
    True if a gateway was stopped."""
    info = status(config)
    if info is None:
        return False
    procs.terminate(info.pid, _alive, STOP_TIMEOUT_S)
    _state_file(config).unlink(missing_ok=True)
    return True


def serve_fd(fd: int) -> None:
    """The child: uvicorn on the inherited socket; SIGTERM runs the graceful shutdown."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sock = socket.socket(fileno=fd)
    config = uvicorn.Config(app_from_env, factory=True, log_level="info", access_log=False,
                            timeout_graceful_shutdown=GRACEFUL_S, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])


# ---------------------------------------------------------------- load test


@dataclass
class GatewayLoad:
    requests: int
    concurrency: int
    errors: int
    wall_s: float
    throughput: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    statuses: dict[int, int]
    routes: dict[str, int]
    feedback: int
    first_error: str | None = None
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    request_ids: list[str] = field(default_factory=list, repr=False)  # of the answered (200) requests
    answered_at: list[float] = field(default_factory=list, repr=False)  # their time.monotonic(), same order

    def summary(self) -> dict:
        out = asdict(self)
        out.pop("latencies_ms")
        out.pop("request_ids")
        out.pop("answered_at")
        return out


def loadtest(url: str, texts: list[str], requests: int = 500, concurrency: int = 4, max_seconds: float = 60.0,
             users: int = 0, labels: list[str] | None = None, feedback_share: float = 0.0, warmup: int = 10,
             timeout_s: float = 30.0, token: str | None = None,
             stop: threading.Event | None = None) -> GatewayLoad:
    """One text per POST /predict, `concurrency` threads each with a keep-alive httpx
    client, until `requests` are sent, `max_seconds` pass or `stop` is set. With `users`,
    requests carry one of that many user keys (sticky A/B arms); with `labels` (the texts'
    true labels), a `feedback_share` of answered requests also gets /feedback (not timed;
    with `token` as its bearer token when the gateway has tokens). The answered requests'
    ids and times are kept, to compare with the log after a fault."""
    import httpx

    with httpx.Client(base_url=url, timeout=timeout_s) as client:
        for text in itertools.islice(itertools.cycle(texts), warmup):
            client.post("/predict", json={"text": text})
    counter, lock = itertools.count(), threading.Lock()
    tally: dict[str, Any] = {"lat": [], "errors": [], "statuses": {}, "routes": {}, "feedback": 0,
                             "ids": [], "at": []}
    deadline = time.monotonic() + max_seconds

    def one(client: httpx.Client, i: int) -> None:
        body = {"text": texts[i % len(texts)]}
        if users:
            body["user"] = f"user-{i % users}"
        started = time.perf_counter()
        try:
            resp = client.post("/predict", json=body)
        except httpx.HTTPError as exc:
            with lock:
                tally["errors"].append(f"{type(exc).__name__}: {exc}")
            return
        elapsed = 1000 * (time.perf_counter() - started)
        with lock:
            tally["statuses"][resp.status_code] = tally["statuses"].get(resp.status_code, 0) + 1
            if resp.status_code != 200:
                tally["errors"].append(f"HTTP {resp.status_code}: {resp.text[:300]}")
                return
            tally["lat"].append(elapsed)
            tally["ids"].append(resp.json()["request_id"])
            tally["at"].append(time.monotonic())
            route = resp.json()["route"]
            tally["routes"][route] = tally["routes"].get(route, 0) + 1
        if labels and (i * 2654435761 % 2 ** 32) / 2 ** 32 < feedback_share:  # a fixed, spread-out share
            answer = client.post("/feedback", json={"request_id": resp.json()["request_id"],
                                                    "label": labels[i % len(labels)]},
                                 headers={"Authorization": f"Bearer {token}"} if token else None)
            with lock:
                tally["feedback"] += answer.status_code == 200

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=timeout_s) as client:
            while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
                i = next(counter)
                if i >= requests:
                    return
                one(client, i)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    started = time.perf_counter()
    [t.start() for t in threads]
    [t.join() for t in threads]
    wall = time.perf_counter() - started
    lat = tally["lat"]
    p50, p95, p99 = (float(np.percentile(lat, q)) if lat else float("nan") for q in (50, 95, 99))
    return GatewayLoad(len(lat) + len(tally["errors"]), concurrency, len(tally["errors"]), wall, len(lat) / wall,
                       p50, p95, p99, tally["statuses"], tally["routes"], tally["feedback"],
                       tally["errors"][0] if tally["errors"] else None, lat, tally["ids"], tally["at"])


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="The ftops gateway on an inherited socket (see `ftops gateway up`).")
    parser.add_argument("--fd", type=int, required=True, help="listening socket file descriptor")
    serve_fd(parser.parse_args(argv).fd)


if __name__ == "__main__":
    main()
