"""The fault-injection suite's harness: a bounded load generator on loopback that records
every answer, and the table of what each fault cost (requests failed, rows lost, seconds
to recover), printed at the end of the run by tests/conftest.py.

Not a conftest.py: tests import helpers with `from conftest import ...`, and a second
module of that name would shadow the first."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import httpx

TEXTS = ["@united thanks for the lovely crew", "my bag is lost AGAIN", "Flight delayed 3 hours. Great.",
         "ok", "café ☕ and 😀 on board", "东京 flight was fine", "seat 12C was broken", "a\tb\nc"]

FIGURES: list[dict] = []  # one row per fault, printed by pytest_terminal_summary


@dataclass
class Answer:
    sent: float       # monotonic seconds
    done: float
    status: int       # HTTP status; 0 = no HTTP answer (connection refused, reset, timed out)
    request_id: str | None = None
    route: str | None = None
    clear: bool = False  # a 5xx whose JSON body says what is wrong


@dataclass
class Outcome:
    answers: list[Answer] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return len(self.answers)

    @property
    def ok(self) -> list[Answer]:
        return [a for a in self.answers if a.status == 200]

    @property
    def clear_503(self) -> int:
        return sum(a.status == 503 and a.clear for a in self.answers)

    @property
    def failed(self) -> list[Answer]:
        """Requests that got neither an answer nor a clear 503."""
        return [a for a in self.answers if not (a.status == 200 or (a.status == 503 and a.clear))]

    def ok_ids(self) -> set[str]:
        return {a.request_id for a in self.ok}

    def recovered_after(self, moment: float) -> float | None:
        """Seconds from `moment` to the first 200 answer to a request sent after the
        last non-200 answer that followed it: when serving was whole again."""
        later = sorted((a for a in self.answers if a.sent >= moment), key=lambda a: a.sent)
        bad = [a for a in later if a.status != 200]
        if not bad:
            return 0.0
        after = [a for a in later if a.status == 200 and a.sent > bad[-1].sent]
        return None if not after else after[0].done - moment

    def longest_gap(self, good=lambda a: a.status == 200) -> float:
        """Longest time without a `good` answer while requests kept being sent."""
        times = sorted(a.done for a in self.answers if good(a))
        if not self.answers:
            return 0.0
        start, end = min(a.sent for a in self.answers), max(a.done for a in self.answers)
        edges = [start, *times, end]
        return max(b - a for a, b in zip(edges, edges[1:]))

    def outage(self) -> float:
        """Longest time the gateway gave no answer at all (neither a label nor a clear 503)."""
        return self.longest_gap(lambda a: a.status == 200 or (a.status == 503 and a.clear))


class Load:
    """`rate` requests per second spread over `workers` threads, to POST /predict on loopback.
    Bounded: it runs until stopped or `max_s`. Each worker keeps its own connection and
    opens a new one after a failure, as a real client would; it never retries a request."""

    def __init__(self, url: str, rate: float = 40, workers: int = 4, timeout_s: float = 10.0, max_s: float = 120,
                 user_prefix: str = "u"):
        self.url, self.rate, self.workers, self.timeout_s, self.max_s = url, rate, workers, timeout_s, max_s
        self.user_prefix = user_prefix
        self.outcome = Outcome()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Load:
        self._started = time.monotonic()
        self._threads = [threading.Thread(target=self._worker, args=(k,), daemon=True) for k in range(self.workers)]
        [t.start() for t in self._threads]
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> Outcome:
        self._stop.set()
        [t.join(self.timeout_s + 5) for t in self._threads]
        return self.outcome

    def _worker(self, k: int) -> None:
        interval = self.workers / self.rate
        client = httpx.Client(base_url=self.url, timeout=self.timeout_s)
        i = 0
        next_at = time.monotonic() + k * interval / self.workers
        while not self._stop.is_set() and time.monotonic() - self._started < self.max_s:
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            answer = self._one(client, f"{self.user_prefix}{k}-{i}", TEXTS[(k + i) % len(TEXTS)])
            if answer.status == 0:
                client.close()
                client = httpx.Client(base_url=self.url, timeout=self.timeout_s)
            with self._lock:
                self.outcome.answers.append(answer)
            i += 1
        client.close()

    def _one(self, client: httpx.Client, user: str, text: str) -> Answer:
        sent = time.monotonic()
        try:
            resp = client.post("/predict", json={"text": text, "user": user})
        except httpx.HTTPError:
            return Answer(sent, time.monotonic(), 0)
        done = time.monotonic()
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if resp.status_code == 200:
            return Answer(sent, done, 200, body.get("request_id"), body.get("route"))
        clear = isinstance(body, dict) and bool(body.get("error")) and "request_id" in body
        return Answer(sent, done, resp.status_code, clear=clear)


def wait_until(predicate, timeout_s: float, what: str, every_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(every_s)


def record(fault: str, outcome: Outcome | None = None, lost: int | None = None, recover_s: float | None = None,
           **extra) -> None:
    row = {"fault": fault}
    if outcome is not None:
        row.update(sent=outcome.sent, ok=len(outcome.ok), clear_503=outcome.clear_503,
                   failed=len(outcome.failed), outage_s=round(outcome.outage(), 2))
    if lost is not None:
        row["rows_lost"] = lost
    if recover_s is not None:
        row["recover_s"] = round(recover_s, 2)
    row.update(extra)
    FIGURES.append(row)


def summary(terminalreporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section("fault injection: what each fault cost")
    for row in FIGURES:
        terminalreporter.write_line(" | ".join(f"{k}={v}" for k, v in row.items()))
