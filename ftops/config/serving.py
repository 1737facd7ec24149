"""The serving stage's settings: Triton, the gateway's traffic policy, request limits and
the prediction log writer."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ftops.config.section import Section


class ServingSection(Section):
    """Triton and the gateway. Ports 0 mean: pick free ones at start (tests, parallel runs)."""

    runtime: Literal["python_onnxruntime", "onnxruntime_onnx"] = "python_onnxruntime"
    host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=0, le=65535)
    grpc_port: int = Field(8001, ge=0, le=65535)
    metrics_port: int = Field(8002, ge=0, le=65535)
    gateway_port: int = Field(8080, ge=0, le=65535)
    protocol: Literal["grpc", "http"] = "grpc"
    instances: int | None = Field(None, ge=1, description="classifier instances; default cores // threads")
    threads: int | None = Field(None, ge=1, description="onnxruntime threads per instance; default 1")
    one_hop: bool = Field(True, description="python_onnxruntime: the classifier tokenises the texts itself, so a "
                          "request crosses the python backend once; false: a separate tokenizer step")
    batching: bool | Literal["auto"] = Field("auto", description=(
        "dynamic batching; auto: on when the variant's export figures show batches beating one text at a "
        "time on this host (samples/s at batch 32 over 1000 / batch-1 p50 >= batching_min_gain), always "
        "on for onnxruntime_onnx (GPU); true / false force it"))
    batching_min_gain: float = Field(1.1, gt=0, description="the throughput gain auto batching needs")
    max_queue_delay_us: int = Field(500, ge=0)
    bucket_size: int = Field(8, ge=1, description="texts per length-sorted bucket inside a batch")
    max_batch_size: int = Field(64, ge=1)
    max_text_bytes: int = Field(65536, ge=1)
    request_timeout_s: float = Field(30.0, gt=0)
    load_concurrency: int = Field(4, ge=1)
    load_requests: int = Field(1500, ge=10)
    load_warmup: int = Field(100, ge=0)
    max_error_rate: float = Field(0.0, ge=0, le=1)
    ready_timeout_s: float = Field(60.0, gt=0)
    # The gateway (ftops.serve.gateway): traffic policy, request limits, prediction log.
    traffic: Literal["champion", "ab", "shadow"] = Field(
        "champion", description="champion: all to the champion; ab: ab_share to the challenger; "
        "shadow: the champion answers and the challenger gets a copy")
    ab_share: float = Field(0.1, ge=0, le=1, description="share of users (or requests) sent to the challenger")
    max_texts_per_request: int = Field(64, ge=1, description="texts in one /predict call")
    keep_text: bool = Field(True, description="log the text itself; False keeps only its sha256")
    log_buffer_rows: int = Field(10000, ge=1, description="log rows held in memory; beyond, rows are dropped and counted")
    log_batch_rows: int = Field(200, ge=1, description="rows per prediction-log write")
    log_flush_ms: int = Field(200, ge=1, description="longest wait before buffered rows are written")
    shadow_pending: int = Field(256, ge=1, description="shadow copies waiting; beyond, copies are dropped and counted")
    route_refresh_s: float = Field(0.5, ge=0, description="how stale the gateway's view of routing.json may be")
