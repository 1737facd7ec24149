"""`/feedback`: the true labels of logged answers, which train the next model.

So labels are taken only from a configured sender when any token is set
(security.gateway_tokens; 401 otherwise), rate-limited per sender (429), checked against the
label set (422) and one per request id (409 unless `replace`). A label names one request id,
that is one text; it is set on every log row of that id (the served answer and any shadow
answer).
"""

from __future__ import annotations

import math

from sqlalchemy.exc import SQLAlchemyError

from ftops import predlog, security
from ftops.serve.gateway.errors import RequestError
from ftops.serve.gateway.guards import storable
from ftops.serve.gateway.schemas import FeedbackRequest


class Feedback:
    """The label half of `Gateway` (a mixin: it uses the gateway's config, routes, writer,
    engine, tokens and limiter)."""

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
