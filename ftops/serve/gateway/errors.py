"""What a caller learns when the gateway refuses a request or cannot answer it.

A refusal (4xx) says what to fix. A 5xx tells the caller only a request id and a generic
line; the details go to the gateway's log under that id, so no address, password or stack
trace leaves the host. A 503 also names what is down (`down`) and says that the request,
which was not answered, may be sent again after `Retry-After` seconds.
"""

from __future__ import annotations

import logging
import uuid

from fastapi.responses import JSONResponse

from ftops import security
from ftops.errors import FtopsError

RETRY_AFTER_S = 5  # a 503's Retry-After: the supervisor checks every few seconds and restarts what died
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
