"""Where a request goes: the routes of routing.json and Triton's state file, re-read at most
every `serving.route_refresh_s` (so a deploy or rollback is followed without a restart), and
the label names of each served ensemble."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ftops import names
from ftops.config import Config
from ftops.serve.deploy import Route, routing
from ftops.serve.gateway.errors import RequestError
from ftops.serve.triton import server


@dataclass
class View:
    routes: dict[str, Route]
    server: server.ServerInfo | None
    read_at: float


class RouteTable:
    """routing.json and Triton's state file, re-read at most every `every_s` seconds."""

    def __init__(self, config: Config, every_s: float):
        self.config, self.every_s = config, every_s
        self._view = View({}, None, float("-inf"))
        self._lock = threading.Lock()
        self._labels: dict[str, list[str]] = {}

    def view(self) -> View:
        if time.monotonic() - self._view.read_at < self.every_s:
            return self._view
        with self._lock:
            if time.monotonic() - self._view.read_at >= self.every_s:
                self._view = self._read()
        return self._view

    def _read(self) -> View:
        try:
            return View(routing(self.config), server.status(self.config), time.monotonic())
        except (OSError, ValueError, TypeError) as exc:  # a file caught mid-write: keep the last view
            if self._view.read_at == float("-inf"):
                raise RequestError(503, f"Cannot read the routing state: {exc}", down="routing") from None
            return View(self._view.routes, self._view.server, time.monotonic())

    def labels(self, ensemble: str, export: str | None = None) -> list[str] | None:
        """The label names of a served ensemble: Triton's repository copy, else the export's."""
        if ensemble not in self._labels:
            repo = server.repository_dir(self.config)
            places = [repo / f"{ensemble}-classifier" / "1" / names.LABELS_FILE,
                      repo / f"{ensemble}-postprocess" / "1" / names.LABELS_FILE]
            places += [Path(export) / names.LABELS_FILE] if export else []
            for place in places:
                if place.is_file():
                    self._labels[ensemble] = json.loads(place.read_text())
                    break
        return self._labels.get(ensemble)
