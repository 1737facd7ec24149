"""The gateway's Triton clients, reused across requests with the limits of
`TritonClient.for_config` (every Triton call is bounded in time)."""

from __future__ import annotations

import threading

from ftops.config import Config
from ftops.serve.triton.client import TritonClient


class Clients:
    """Triton clients with the config's limits: one shared per URL for gRPC (thread-safe),
    one per thread for HTTP (geventhttpclient is not)."""

    def __init__(self, config: Config):
        self.config, self.protocol = config, config.serving.protocol
        self._shared: dict[str, TritonClient] = {}
        self._local = threading.local()
        self._all: list[TritonClient] = []
        self._lock = threading.Lock()

    def get(self, url: str) -> TritonClient:
        pool = self._shared if self.protocol == "grpc" else self._local.__dict__
        client = pool.get(url)
        if client is None:
            with self._lock:
                client = pool.get(url)
                if client is None:
                    client = pool[url] = TritonClient.for_config(url, self.config)
                    self._all.append(client)
        return client

    def close(self) -> None:
        with self._lock:
            for client in self._all:
                try:
                    client.close()
                except Exception:  # closing a client of a server already gone
                    pass
            self._all.clear()
            self._shared.clear()
