"""The gateway's HTTP API as pydantic models: request bodies, responses and the error
answers each endpoint documents (what FastAPI validates and puts in the OpenAPI schema)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, model_validator

from ftops.serve.gateway.errors import PUBLIC_DOWN


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
