"""The project's services (Prefect server, MLflow UI, Triton, gateway, Evidently UI, the
Prefect deployments, the supervisor): `ftops up / down / status` and what the supervisor
calls. procs runs the processes; this package says which ones and what is wanted of them.

table: the table of services (name -> how it starts, stops and is found running), the
    procs.Service of each one procs runs, and the environment they share.
records: desired.json (what a person wants up or down) and restarts.json (the supervisor's).
control: up / down / start_one / stop_one / restart / status, each under the service's lock.
"""

from __future__ import annotations

from ftops import procs  # noqa: F401 - callers catch services.procs.ServiceError
from ftops.services.control import (Row, busy, down, pid, protection, restart, start_one, status, stop_one,
                                    stop_process, up)
from ftops.services.records import (DOWN, FAILED, UP, Restarts, Wish, adopt, desired, folder, heartbeat_file, mark,
                                    now_iso, restarts, save_restart)
from ftops.services.table import SUPERVISED, environment, prefect_headers, prefect_service

__all__ = ["DOWN", "FAILED", "SUPERVISED", "UP", "Restarts", "Row", "Wish", "adopt", "busy", "desired", "down",
           "environment", "folder", "heartbeat_file", "mark", "now_iso", "pid", "prefect_headers", "prefect_service",
           "protection", "restart", "restarts", "save_restart", "start_one", "status", "stop_one", "stop_process", "up"]
