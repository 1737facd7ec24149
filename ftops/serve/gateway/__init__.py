"""The gateway: text in/out HTTP in front of Triton (docs/security.md says what it guards).

It answers `/predict` from the route the traffic policy picks (ftops.serve.traffic), logs
every answer to the prediction log without making the caller wait for the store, takes
delayed labels on `/feedback`, and reports `/health` and Prometheus `/metrics`.

- schemas: the HTTP API's request and response models
- errors: what a caller learns of a refusal or failure (4xx, generic 5xx, 503 `down`)
- guards: refusals before any work (text the log cannot store, sizes, rate of labels)
- routes: routing.json and Triton's state, re-read every `serving.route_refresh_s`
- pool: the Triton clients
- metrics: Prometheus metrics and the counts `/health` shows
- core: `Gateway`, answer, fall back, shadow, health, shutdown order
- feedback: `/feedback`, the labels that train the next model
- app: the FastAPI app (`create_app`, the uvicorn factory `app_from_env`)
- process: `ftops gateway up/down/status` (start, stop, status, probe)
- __main__: `python -m ftops.serve.gateway --fd N`, the child process
"""

from ftops.serve.gateway.app import app_from_env, create_app
from ftops.serve.gateway.core import SHADOW_WAIT_S, Gateway
from ftops.serve.gateway.errors import RETRY_AFTER_S, GatewayError, RequestError
from ftops.serve.gateway.guards import RateLimit
from ftops.serve.gateway.process import GatewayInfo, last_port, probe, start, state_dir, status, stop
from ftops.serve.gateway.routes import View
from ftops.serve.gateway.schemas import PredictRequest

__all__ = ["RETRY_AFTER_S", "SHADOW_WAIT_S", "Gateway", "GatewayError", "GatewayInfo", "PredictRequest", "RateLimit",
           "RequestError", "View", "app_from_env", "create_app", "last_port", "probe", "start", "state_dir", "status",
           "stop"]
