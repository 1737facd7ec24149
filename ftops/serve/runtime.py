"""The serving runtime: what deploy, stage and rollback need from the inference server,
so that they do not depend on one server's process, repository layout or client.

A runtime runs a server (start / stop / status / ready), holds a model repository (put a
version, check it, remove it, list what it holds) and hands out clients that classify
texts, load and unload models and report statistics. Triton (ftops.serve.triton) is the
implementation; `get(config)` returns the project's runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ftops.errors import FtopsError

if TYPE_CHECKING:
    from ftops.config import Config
    from ftops.serve.deployable import Deployable


class ServingError(FtopsError):
    pass


class NotRunning(ServingError):
    """The project's server is down: every command that needs it says the same."""

    def __init__(self, runtime: str = "Triton"):
        super().__init__(f"{runtime} is not running for this project. Start it with `ftops serve up`.")


@dataclass
class Prediction:
    label: str
    probs: list[float]

    @property
    def confidence(self) -> float:
        return max(self.probs)


class Client(Protocol):
    """Text in, label and probabilities out; model control and server-side statistics."""

    def classify(self, texts: list[str | bytes], model: str, batch_size: int = 32) -> list[Prediction]: ...
    def load(self, model: str) -> None: ...
    def unload(self, model: str) -> bool: ...
    def ready(self, model: str) -> bool: ...
    def statistics(self, model: str) -> dict: ...
    def close(self) -> None: ...
    def __enter__(self) -> Client: ...
    def __exit__(self, *exc) -> None: ...


class Endpoint(Protocol):
    """A running server: where it answers and which model repository it serves."""

    repository: str

    def url(self, protocol: str) -> str: ...


class Repository(Protocol):
    """A model repository; a deployed version is named by its ensemble (what a route names)."""

    path: Path

    def ensemble(self, tag: str) -> str: ...
    def put(self, tag: str, model: Deployable) -> None: ...
    def holds(self, ensemble: str) -> bool: ...
    def verify(self, ensemble: str, hint: str) -> None: ...
    def problems(self, ensemble: str) -> list[str]: ...
    def remove(self, ensemble: str) -> None: ...
    def versions(self) -> dict[str, str]: ...
    def models(self, ensemble: str) -> tuple[str, ...]: ...
    def pending(self, ensemble: str) -> bool: ...
    def mark_pending(self, ensemble: str) -> None: ...
    def clear_pending(self, ensemble: str) -> None: ...


class Runtime(Protocol):
    name: str

    def start(self) -> Endpoint: ...
    def stop(self) -> bool: ...
    def status(self) -> Endpoint | None: ...
    def ready(self, endpoint: Endpoint) -> bool: ...
    def running(self) -> Endpoint: ...
    def state_dir(self) -> Path: ...
    def repository(self, endpoint: Endpoint | None = None) -> Repository: ...
    def client(self, endpoint: Endpoint) -> Client: ...


def get(config: Config) -> Runtime:
    """The project's serving runtime (Triton, the one implementation)."""
    from ftops.serve.triton.runtime import TritonRuntime

    return TritonRuntime(config)
