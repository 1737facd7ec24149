"""Refusals made before any work, so that a bad request costs little and never reaches the
prediction log: text the log cannot store (422, so the log never blocks), batches and texts
over the limits (413), bodies over the limit while they stream (413), and senders over their
rate of labels (429)."""

from __future__ import annotations

import threading
import time

from fastapi.responses import JSONResponse

from ftops.serve.gateway.errors import RequestError
from ftops.serve.gateway.schemas import PredictRequest


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
