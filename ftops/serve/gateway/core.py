"""The gateway behind its endpoints: answer, log, mirror to a shadow, report health
(the labels of `/feedback` are ftops.serve.gateway.feedback's).

Request ids: one per text. A single-text request's id is the response's `request_id`;
a batch of n texts gets `request_id` for the call and `<request_id>-<i>` per text (in
each prediction), and each text is one log row under its own id, so `/feedback` always
names exactly one text. A shadow answer is logged under the same id with route `shadow`.
Every answer is logged without making the caller wait for the store; rows the store still
refuses go to `<project>/gateway/dead-letter.jsonl`.

The traffic policy is the running experiment's (`<project>/triton/experiment.json`, written
by `ftops ab start`; ftops.serve.traffic.LivePolicy), else `serving.traffic`.

Faults: a challenger that fails (Triton error, model not loaded, time limit) never costs
its users an answer: the champion answers instead, counted in
`ftops_gateway_fallbacks_total{from_route,reason}` and `/health`'s `fallbacks`, and logged
with `fallback_from` (ftops.predlog says how the A/B report reads it). Only when the
champion itself cannot answer is it a 503. `/health` answers within
`timeouts.triton_probe_s`, also while Triton hangs.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as wait_futures
from dataclasses import asdict, dataclass

from ftops import names, predlog, security
from ftops.config import Config
from ftops.serve.deploy import Route
from ftops.serve.gateway.errors import DOWN_OF_KIND, RequestError
from ftops.serve.gateway.feedback import Feedback
from ftops.serve.gateway.guards import RateLimit, check_texts, storable
from ftops.serve.gateway.metrics import Metrics
from ftops.serve.gateway.pool import Clients
from ftops.serve.gateway.process import LOG_CLOSE_S, state_dir
from ftops.serve.gateway.routes import RouteTable, View
from ftops.serve.gateway.schemas import PredictRequest
from ftops.serve.runtime import Prediction, ServingError
from ftops.serve.traffic import ChampionPolicy, LivePolicy
from ftops.serve.triton import server
from ftops.serve.triton.client import failure_kind

DEAD_LETTER_MAX_BYTES = 64 * 2 ** 20  # refused rows kept on disk; beyond, only counted
SHADOW_WAIT_S = 2  # shadow calls already running at shutdown get this long, within LOG_CLOSE_S

logger = logging.getLogger("ftops.gateway")


class Gateway(Feedback):
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
        assignment = self.policy.assign(body.user, names.CHALLENGER in view.routes)
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
            if role == names.CHAMPION:
                raise
            self._fell_back(role, exc)
        route, url = self._target(view, names.CHAMPION)
        return Answer(route, names.CHAMPION, url, *self._classify(url, route, texts, names.CHAMPION),
                      fallback_from=role)

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
            future = self.shadow.submit(self._shadow_call, view.routes[names.CHALLENGER], url, ids, texts, user)
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

    # ------------------------------------------------ health

    def health(self) -> tuple[int, dict]:
        view = self.routes.view()
        champion, challenger = view.routes.get(names.CHAMPION), view.routes.get(names.CHALLENGER)
        reason, note = self._probe_in_time(view, champion, challenger)
        body = {"status": "unavailable" if reason else "ok", "reason": reason, "policy": self.policy.describe(),
                "note": note or self.policy.assign(None, challenger is not None).note,
                names.CHAMPION: _route_dict(champion), names.CHALLENGER: _route_dict(challenger),
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
        if reason or challenger is None or self.policy.name == ChampionPolicy.name:
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
