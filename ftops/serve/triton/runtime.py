"""Triton as the serving runtime (ftops.serve.runtime): the server process, its model
repository and its client behind the runtime's interface, for one project's config."""

from __future__ import annotations

from pathlib import Path

from ftops.config import Config
from ftops.serve.deployable import Deployable
from ftops.serve.runtime import NotRunning
from ftops.serve.triton import repository, server
from ftops.serve.triton.client import TritonClient
from ftops.serve.triton.models import ModelNames


class TritonRepository:
    """The model repository of one project: a version is named by its ensemble."""

    def __init__(self, config: Config, path: Path):
        self.config, self.path = config, path

    def ensemble(self, tag: str) -> str:
        return ModelNames.for_tag(self.config.project.name, tag).ensemble

    def put(self, tag: str, model: Deployable) -> None:
        repository.write_version(self.path, self.config.project.name, tag, model, self.config.serving)

    def holds(self, ensemble: str) -> bool:
        return (self.path / ensemble).is_dir()

    def verify(self, ensemble: str, hint: str) -> None:
        repository.verify_version(self.path, ModelNames.of(ensemble), hint)

    def problems(self, ensemble: str) -> list[str]:
        return repository.version_problems(self.path, ModelNames.of(ensemble))

    def remove(self, ensemble: str) -> None:
        repository.remove_version(self.path, ModelNames.of(ensemble))

    def versions(self) -> dict[str, str]:
        """The project's versions the repository holds: tag -> ensemble."""
        return {tag: names.ensemble for tag, names in repository.versions(self.path, self.config.project.name).items()}

    def models(self, ensemble: str) -> tuple[str, ...]:
        """Every model of a version, in the order to unload them."""
        return ModelNames.of(ensemble).unload_order()

    def pending(self, ensemble: str) -> bool:
        return repository.pending(self.path, ModelNames.of(ensemble))

    def mark_pending(self, ensemble: str) -> None:
        repository.mark_pending(self.path, ModelNames.of(ensemble))

    def clear_pending(self, ensemble: str) -> None:
        repository.clear_pending(self.path, ModelNames.of(ensemble))


class TritonRuntime:
    name = "Triton"

    def __init__(self, config: Config):
        self.config = config

    def start(self) -> server.ServerInfo:
        return server.start(self.config)

    def stop(self) -> bool:
        return server.stop(self.config)

    def status(self) -> server.ServerInfo | None:
        return server.status(self.config)

    def ready(self, endpoint: server.ServerInfo) -> bool:
        return server.ready(endpoint)

    def running(self) -> server.ServerInfo:
        info = self.status()
        if info is None:
            raise NotRunning(self.name)
        return info

    def state_dir(self) -> Path:
        return server.state_dir(self.config)

    def repository(self, endpoint: server.ServerInfo | None = None) -> TritonRepository:
        """The running server's repository, else the configured one."""
        path = Path(endpoint.repository) if endpoint is not None else server.repository_dir(self.config)
        return TritonRepository(self.config, path)

    def client(self, endpoint: server.ServerInfo) -> TritonClient:
        return TritonClient.for_config(endpoint.url(self.config.serving.protocol), self.config)
