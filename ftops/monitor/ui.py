"""The Evidently UI over the project's workspace: one `evidently ui` on 127.0.0.1, run as a
service by procs (detached, logged to `evidently-ui/ui.log`, polled until /api/version
answers, stopped by its process group)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ftops import atomic, procs
from ftops.config import Config
from ftops.monitor.results import MonitorError

UI_READY_TIMEOUT_S = 60.0
NAME = "ui"            # procs' state and log: evidently-ui/ui.json, evidently-ui/ui.log
MARKER = "evidently"   # in the command line of our process (a recycled PID of another program is not ours)


@dataclass
class UiInfo:
    pid: int
    host: str
    port: int
    workspace: str
    log: str

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def ui_dir(config: Config) -> Path:
    return config.resolved().project.dir / "evidently-ui"


def ui_status(config: Config) -> UiInfo | None:
    """The running UI of this project, or None (a stale state file is removed)."""
    folder = ui_dir(config)
    _upgrade_state(folder)
    running = procs.status(folder, NAME)
    return None if running is None else _info(config, running)


def ui_ready(info: UiInfo, timeout: float = 2.0) -> bool:
    return procs.healthy(f"{info.url}/api/version", timeout=timeout)


def ui_start(config: Config, port: int | None = None) -> UiInfo:
    """Start `evidently ui` on 127.0.0.1 for the project's workspace (no-op if it runs)."""
    cfg = config.resolved()
    folder = ui_dir(cfg)
    _upgrade_state(folder)
    ws = Path(cfg.uris.evidently_workspace)
    ws.mkdir(parents=True, exist_ok=True)
    port = port or cfg.monitoring.ui_port
    url = f"http://127.0.0.1:{port}"
    service = procs.Service(
        name=NAME, url=url, health_url=f"{url}/api/version", env={"DO_NOT_TRACK": "1"},
        command=[sys.executable, "-m", "evidently.cli", "ui", "--workspace", str(ws),
                 "--host", "127.0.0.1", "--port", str(port)],
        ready_timeout_s=UI_READY_TIMEOUT_S, marker=MARKER)
    try:
        running = procs.start(folder, service, config.retention)
    except procs.ServiceError as exc:
        raise MonitorError(f"The Evidently UI did not start on port {port} (is it taken? set "
                           f"monitoring.ui_port): {exc}") from exc
    return _info(cfg, running)


def ui_stop(config: Config, timeout: float = 10.0) -> bool:
    """SIGTERM the UI's process group, SIGKILL if it lingers; True if one was stopped."""
    folder = ui_dir(config)
    _upgrade_state(folder)
    return procs.stop(folder, NAME, grace_s=timeout)


def _info(config: Config, running: procs.Running) -> UiInfo:
    where = urlsplit(running.url)
    return UiInfo(running.pid, where.hostname, where.port, str(config.resolved().uris.evidently_workspace),
                  running.log)


def _upgrade_state(folder: Path) -> None:
    """A state file from before the UI ran as a procs service (host, port, workspace; no
    marker) is rewritten in procs' form, so a UI started then is still found and stopped."""
    path = folder / f"{NAME}.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if "marker" in state:
        return
    running = procs.Running(NAME, state["pid"], f"http://{state['host']}:{state['port']}", state["log"], MARKER)
    atomic.write_text(path, json.dumps(asdict(running)))
