"""The gateway's FastAPI app: endpoints, error handlers and the body limit, translating
HTTP to and from `Gateway` (which does the work). `uvicorn ftops.serve.gateway:app_from_env
--factory` serves it too (config from $FTOPS_GATEWAY_CONFIG, else the usual load_config
lookup)."""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from ftops import security
from ftops.config import Config, load_config
from ftops.serve.gateway.core import Gateway
from ftops.serve.gateway.errors import RequestError, failure
from ftops.serve.gateway.guards import BodyLimit
from ftops.serve.gateway.process import ENV_CONFIG
from ftops.serve.gateway.schemas import (ERRORS, FeedbackRequest, FeedbackResponse, HealthResponse, PredictRequest,
                                         PredictResponse)


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
