"""Following a deployment run: its log lines and those of its subflows, and their state
changes, polled from the Prefect API and printed in time order until the run ends.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from ftops.errors import FtopsError

FOLLOW_LIMIT_S = 4 * 3600 + 600  # the lifecycle's own timeout, and time to be picked up
POLL_S = 2.0
LOG_OVERLAP = timedelta(seconds=60)  # logs arrive in batches, a little out of timestamp order
SETTLE = timedelta(seconds=3)  # a line is printed this long after it happened: the batch before it is in
PAGE = 200  # the Prefect API's largest page
DRAIN_QUIET_S = 4.0  # two of Prefect's log batch intervals without a new line: the run's lines are in


class Follower:
    """Prints the new log lines of a flow run and of its subflow runs (found by their parent
    task runs), and their state changes, in time order. Lines reach the API in batches, so
    each is held back `settle` before it is printed; `flush` prints the rest."""

    def __init__(self, client, flow_run_id, say: Callable[[str], None], settle: timedelta = SETTLE):
        self.client, self.root, self.say, self.settle = client, flow_run_id, say, settle
        self.names: dict = {}    # flow run id -> flow name
        self.states: dict = {}   # flow run id -> state name last seen
        self.flows: dict = {}    # flow id -> flow name
        self.tasks: dict = {}    # task run id -> task run name
        self.seen: set = set()   # log ids taken
        self.since = None        # newest log timestamp taken
        self.pending: list = []  # (timestamp, order, line) not printed yet
        self.order = itertools.count()

    def poll(self):
        """One round; the root flow run as it is now."""
        root = self.client.read_flow_run(self.root)
        runs = [root, *self._children()]
        for run in runs:
            self.names.setdefault(run.id, self._flow_name(run))
        self._states(runs)
        self.logs()
        self.flush(datetime.now(UTC) - self.settle)
        return root

    def flush(self, until: datetime | None = None) -> None:
        """Print the held lines up to `until` (default: all), oldest first."""
        ready = sorted(e for e in self.pending if until is None or e[0] <= until)
        self.pending = [e for e in self.pending if not (until is None or e[0] <= until)]
        for _, _, line in ready:
            self.say(line)

    def _hold(self, when: datetime, line: str) -> None:
        self.pending.append((when, next(self.order), f"  {when.astimezone():%H:%M:%S} {line}"))

    def _children(self) -> list:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

        return self.client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=list(self.names) or [self.root])))

    def _flow_name(self, run) -> str:
        if run.flow_id not in self.flows:
            self.flows[run.flow_id] = self.client.read_flow(run.flow_id).name
        return self.flows[run.flow_id]

    def _states(self, runs: list) -> None:
        for run in runs:
            state = run.state
            if state and self.states.get(run.id) != state.name:
                self.states[run.id] = state.name
                # a completed lifecycle logged its outcome line itself; a failure's message says why
                message = f" ({state.message})" if state.message and state.is_final() and not state.is_completed() else ""
                self._hold(state.timestamp, f"{self.names[run.id]} [{run.name}] -> {state.name}{message}")

    def logs(self) -> int:
        """Take the log lines not taken yet; how many."""
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterTimestamp
        from prefect.client.schemas.sorting import LogSort

        window = LogFilterTimestamp(after_=self.since - LOG_OVERLAP) if self.since else None
        flt = LogFilter(flow_run_id=LogFilterFlowRunId(any_=list(self.names) or [self.root]), timestamp=window)
        taken, offset = 0, 0
        while True:
            page = self.client.read_logs(log_filter=flt, limit=PAGE, offset=offset, sort=LogSort.TIMESTAMP_ASC)
            for entry in page:
                if entry.id not in self.seen:
                    self.seen.add(entry.id)
                    self.since = max(self.since, entry.timestamp) if self.since else entry.timestamp
                    self._hold(entry.timestamp, self._line(entry))
                    taken += 1
            if len(page) < PAGE:
                return taken
            offset += PAGE

    def _line(self, entry) -> str:
        level = "" if entry.level < 30 else "WARNING " if entry.level < 40 else "ERROR "
        who = self.names.get(entry.flow_run_id, "lifecycle")
        if entry.task_run_id:
            who += f"/{self._task_name(entry.task_run_id)}"
        return f"{who}: {level}{entry.message}"

    def _task_name(self, task_run_id) -> str:
        if task_run_id not in self.tasks:
            self.tasks[task_run_id] = self.client.read_task_run(task_run_id).name
        return self.tasks[task_run_id]


def follow(flow_run_id, say: Callable[[str], None], limit_s: float = FOLLOW_LIMIT_S, poll_s: float = POLL_S):
    """Follow a flow run to its end, printing its logs and states; the final flow run."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + limit_s
    with get_client(sync_client=True) as client:
        follower = Follower(client, flow_run_id, say)
        while time.monotonic() < deadline:
            run = follower.poll()
            if run.state and run.state.is_final():
                _drain(follower)
                follower.flush()
                return run
            time.sleep(poll_s)
    raise FtopsError(f"The lifecycle run {flow_run_id} did not finish within {limit_s / 3600:.1f} h of following; "
                     "it goes on in Prefect: see its page in the Prefect UI.")


def _drain(follower: Follower, quiet_s: float = DRAIN_QUIET_S, limit_s: float = 15.0) -> None:
    """The last lines reach the API after the final state (the run's process sends them in
    batches, every 2 s by default): read until none came for `quiet_s`."""
    end = time.monotonic() + limit_s
    last = time.monotonic()
    while time.monotonic() < end and time.monotonic() - last < quiet_s:
        time.sleep(0.5)
        if follower.logs():
            last = time.monotonic()
