"""The gateway's Prometheus metrics (`/metrics`) and the counts `/health` reads from them:
requests, errors and latency by route and version, fallbacks, shadow copies lost, and the
prediction log writer's own counts."""

from __future__ import annotations

from ftops import predlog

LATENCY_BUCKETS = (.002, .005, .01, .02, .035, .05, .075, .1, .15, .25, .5, 1, 2.5, 5, 10)


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
