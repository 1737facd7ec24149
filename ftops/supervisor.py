"""The embedded set-up's self-healing: `python -m ftops.supervisor --config <yaml>`, started
by `ftops up` as its last service and stopped first by `ftops down`.

Every `supervisor.interval_s` it checks each service that is wanted up (services.desired):
a process that is gone, or a Triton that answers but is neither ready nor serving the
champion for `supervisor.unready_s`, is restarted with the start `ftops up` uses (for
Triton: the same ports, then the routes are loaded again). A service restarted
`supervisor.max_restarts` times within `supervisor.window_s` is left down as `failed`,
with its log tail in `services/supervisor.log`; `ftops up` clears that. A service a person
stopped (services.stop_one, `ftops down`) is never restarted.

Compose and Kubernetes do not run this: their restart policies and probes do the same job
(infra/). After the checks, every function in TICK_HOOKS runs once per round.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ftops import atomic, procs, services
from ftops.config import Config, load_config
from ftops.services import UP, Restarts, Wish

log = logging.getLogger("ftops.supervisor")

UNREADY_CHECKS = 3      # and supervisor.unready_s: a Triton busy loading a model is not hung
RESEND_EVERY_S = 30.0   # how often undelivered drift alerts are retried while Prefect is healthy
LOGS = {"triton": ("triton", "server.log"), "gateway": ("gateway", "gateway.log"),
        "evidently": ("evidently-ui", "ui.log")}  # the rest log to services/<name>.log


class Stopping(BaseException):
    """SIGTERM during a round: unwinds a start in progress (its process is stopped by
    `ftops down` through its state file). Not an Exception: no handler swallows it."""


class Supervisor:
    def __init__(self, config: Config, config_path: str | None = None):
        self.config, self.config_path = config, config_path
        self.seen: dict[str, int] = {}            # PID last seen alive, per service
        self.unready: dict[str, list[float]] = {}  # Triton: monotonic times of consecutive unready checks
        self.exits: dict[int, int] = {}           # our children's exit codes (negative: the signal)
        self.stop = threading.Event()
        self.busy = False
        self.rounds = 0
        self.resend_checked_at: float | None = None  # resend_drift_alerts: when it last probed Prefect
        self.restarted: set[str] = set()          # restarted this round (hooks may react)

    # ------------------------------------------------------------ the loop

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        cfg = self.config.supervisor
        log.info("supervising %s every %.1f s (at most %d restarts of one service within %.0f s); pid %d",
                 ", ".join(services.SUPERVISED), cfg.interval_s, cfg.max_restarts, cfg.window_s, os.getpid())
        self._heartbeat()  # what `ftops up` waits for: the config loaded, SIGTERM handled
        try:
            while not self.stop.is_set():
                self._round()
                self.busy = False
                self.stop.wait(cfg.interval_s)
        except Stopping:
            log.info("stopped by SIGTERM during a round")
        log.info("supervisor stopped")

    def _round(self) -> None:
        """A round that fails (a record file unreadable, a full disk) is logged; the next runs."""
        try:
            self.tick()
            self._heartbeat()
        except Exception:  # noqa: BLE001 - the loop must outlive any one round
            log.exception("a round of checks failed; the next one runs in %.1f s", self.config.supervisor.interval_s)

    def _on_sigterm(self, signum, frame) -> None:
        self.stop.set()
        if self.busy:
            raise Stopping()

    def tick(self) -> None:
        """One round: every supervised service checked (and healed) in dependency order, then the hooks."""
        self.busy = True
        self.restarted = set()
        self._reap()
        wishes = services.desired(self.config)
        for name in services.SUPERVISED:
            if name == "triton" and self.config.uris.triton:
                continue  # the team's Triton: its own platform restarts it
            self._check(name, wishes.get(name))
        for hook in list(TICK_HOOKS):
            try:
                hook(self)
            except Exception:  # noqa: BLE001 - a hook's failure is logged; the loop goes on
                log.exception("tick hook %s failed (the supervisor goes on)", getattr(hook, "__name__", hook))
        self.rounds += 1

    def _heartbeat(self) -> None:
        atomic.write_text(services.heartbeat_file(self.config),
                          json.dumps({"pid": os.getpid(), "rounds": self.rounds, "at": services.now_iso()}))

    # ------------------------------------------------------------ checks

    def _check(self, name: str, wish: Wish | None) -> None:
        if services.busy(self.config, name):
            return  # someone is starting or stopping it: judged next round
        pid = services.pid(self.config, name)
        if pid is not None and (wish is None or wish.state != UP):
            adopted = services.adopt(self.config, name)  # started by its own module's start
            if adopted is not None:
                log.info("%s runs (pid %d) though %s: supervised from now on", name, pid,
                         f"recorded {wish.state}" if wish else "nothing was recorded")
            wish = adopted or services.desired(self.config).get(name)
        if wish is None or wish.state != UP:
            self.seen.pop(name, None)
            self.unready.pop(name, None)
            return
        problem = self._problem(name, pid)
        if problem is None:
            self.seen[name] = pid
            return
        self._heal(name, problem, wish, pid)

    def _problem(self, name: str, pid: int | None) -> str | None:
        """What is wrong with a wanted service, in words; None when it is fine."""
        if pid is None:
            return self._gone(name)
        if name != "triton" or self._triton_serving():
            self.unready.pop(name, None)
            return None
        times = self.unready.setdefault(name, [])
        times.append(time.monotonic())
        if len(times) >= UNREADY_CHECKS and times[-1] - times[0] >= self.config.supervisor.unready_s:
            return (f"running (pid {pid}) but not ready, nor the champion, on {len(times)} checks over "
                    f"{times[-1] - times[0]:.0f} s")
        return None

    def _gone(self, name: str) -> str:
        previous = self.seen.pop(name, None)
        if previous is None:
            return "not running"
        self._reap()
        code = self.exits.pop(previous, None)
        if code is None:
            found = f"process {previous} gone (exit status unknown: the supervisor did not start it)"
        elif code < 0:
            found = f"process {previous} gone (killed by {signal.Signals(-code).name})"
        else:
            found = f"process {previous} gone (exit code {code})"
        if procs.kill_group(previous):
            found += "; what was left of its process group is killed"
        return found

    def _triton_serving(self) -> bool:
        """Ready, or at least serving the champion (strict readiness is false while another
        model loads or after one failed to load: no reason to take the champion down)."""
        from ftops.serve import deploy
        from ftops.serve.triton import server

        info = server.status(self.config)
        if info is None:
            return False
        timeout = self.config.timeouts.triton_probe_s
        if server.ready(info, timeout):
            return True
        champion = deploy.routing(self.config).get("champion")
        return champion is not None and server.model_ready(info, champion.ensemble, timeout)

    def _reap(self) -> None:
        """Collect the exit status of services this process started (else they stay zombies)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.exits[pid] = os.waitstatus_to_exitcode(status)

    # ------------------------------------------------------------ healing

    def _heal(self, name: str, problem: str, wish: Wish, pid: int | None) -> None:
        """Restart a wanted service that is dead or hung, unless it is in a crash loop;
        a crash loop counts the restarts within window_s since it was last wanted up."""
        cfg = self.config.supervisor
        record = services.restarts(self.config).get(name, Restarts())
        recent = [t for t in record.attempts if t >= max(time.time() - cfg.window_s, wish.since)]
        if len(recent) >= cfg.max_restarts:
            self._give_up(name, problem, record, len(recent))
            return
        log.warning("%s: %s; restarting it (restart %d of at most %d within %.0f s)",
                    name, problem, len(recent) + 1, cfg.max_restarts, cfg.window_s)
        if pid is not None:  # alive but hung: the start below needs it gone
            services.stop_process(self.config, name)
        self.unready.pop(name, None)
        started = time.monotonic()
        try:
            done, loaded = services.restart(self.config, name, self.config_path)
        except Exception as exc:  # noqa: BLE001 - every start error is reported and counted
            self._record(name, record, recent, f"{problem}; {self._failed_start(name, exc)}", started)
            return
        if not done:
            log.info("%s: not restarted, it was stopped on purpose or is being started or stopped meanwhile", name)
            return
        seconds = self._record(name, record, recent, problem, started)
        log.warning("%s is back after %.1f s (pid %s)%s", name, seconds, self.seen.get(name),
                    f"; loaded: {loaded}" if loaded else "")

    def _record(self, name: str, record: Restarts, recent: list[float], reason: str, started: float) -> float:
        """Count the restart (restarts.json); the seconds it took to be ready again."""
        seconds = time.monotonic() - started
        pid = services.pid(self.config, name)
        record.count += 1
        record.attempts = [*recent, time.time()]
        record.last_restart = services.now_iso()
        record.last_reason = reason
        record.recover_s = round(seconds, 2) if pid is not None else None
        services.save_restart(self.config, name, record)
        self.restarted.add(name)
        if pid is not None:
            self.seen[name] = pid
        return seconds

    def _failed_start(self, name: str, exc: Exception) -> str:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if services.pid(self.config, name) is not None:
            log.error("%s is running again but its start reported: %s", name, exc)
        else:
            log.error("%s did not come back: %s (log: %s)", name, first, service_log(self.config, name))
        return f"restart failed: {first}"

    def _give_up(self, name: str, problem: str, record: Restarts, restarts: int) -> None:
        cfg = self.config.supervisor
        if services.mark(self.config, name, services.FAILED, "supervisor", only_if=UP) is None:
            return  # stopped on purpose meanwhile
        record.failed_at = services.now_iso()
        record.last_reason = (f"{record.last_reason or problem}; left down after {restarts} restarts "
                              f"within {cfg.window_s:.0f} s")
        services.save_restart(self.config, name, record)
        self.seen.pop(name, None)
        log.error("%s FAILED: %s again after %d restarts within %.0f s (supervisor.max_restarts); left down. "
                  "Fix the cause, then `ftops up` starts it and the supervisor watches it again. "
                  "Last log lines (%s):\n%s", name, problem, restarts, cfg.window_s, service_log(self.config, name),
                  procs.tail(service_log(self.config, name)))


def service_log(config: Config, name: str) -> Path:
    where = LOGS.get(name)
    root = config.resolved().project.dir
    return root / where[0] / where[1] if where else services.folder(config) / f"{name}.log"


# ---------------------------------------------------------------- per-round work


def resend_drift_alerts(supervisor: Supervisor) -> None:
    """Undelivered drift alerts go out again once the Prefect API answers: probed every
    RESEND_EVERY_S, and at once in a round that restarted Prefect."""
    config = supervisor.config
    now = time.monotonic()
    last = supervisor.resend_checked_at
    if last is not None and now - last < RESEND_EVERY_S and "prefect" not in supervisor.restarted:
        return
    supervisor.resend_checked_at = now
    env = services.environment(config, None)
    url = f"{config.uris.prefect_api.rstrip('/')}/health"
    if not procs.healthy(url, timeout=config.timeouts.prefect_s, headers=services.prefect_headers(env)):
        return
    from ftops import monitor

    resend = getattr(monitor, "resend_pending", None)  # absent in an older ftops: nothing to re-send
    sent = resend(config) if resend is not None else 0
    if sent:
        log.info("re-sent %d undelivered drift alert(s) to Prefect", sent)


# Per-round work after the services' checks: each gets the Supervisor (its config, the
# services restarted this round); one that raises is logged and the loop goes on.
TICK_HOOKS: list[Callable[[Supervisor], None]] = [resend_drift_alerts]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Restart the project's services that die (ftops up starts it).")
    parser.add_argument("--config", default=None, help="project YAML")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("filelock").setLevel(logging.WARNING)
    Supervisor(load_config(args.config), args.config).run()


if __name__ == "__main__":
    main()
