"""`ftops run`: the lifecycle once, from the CLI, with its progress live and its outcome at
the end.

Through the Prefect deployment `lifecycle/lifecycle` when this project's deployments are
served (the run is in the Prefect UI, one at a time with the scheduled and drift-triggered
ones); otherwise the same flow function in this process. A deployment run is followed by
polling its logs and those of its subflows; in-process, the flows' prints reach the
terminal directly.

What the lifecycle decided is a JSON summary it writes to `<project dir>/runs/lifecycle-<flow
run id>.json` (`summary_file`); its state's NAME says the same in the Prefect UI (`outcome`),
and a markdown artifact (key `lifecycle-<project>`) holds the decision, the export variants
and the deploy gates. A gate refusing the challenger is an answer (exit 0), a failed or
crashed run is not (exit 1).

- summary.py  what the lifecycle decided: the outcome, the summary file, the stage rows and markdown
- follow.py   following a deployment run: its logs and states, and its subflows', in time order
- launch.py   where it runs, running it, and how it ended (exit code, the report at the end)
"""

from __future__ import annotations

from ftops.run.following import DRAIN_QUIET_S, FOLLOW_LIMIT_S, LOG_OVERLAP, PAGE, POLL_S, SETTLE, Follower, follow
from ftops.run.launch import (DEPLOYMENT, EPHEMERAL_START_S, Finished, Plan, config_path_of, exit_code, in_process,
                              links, outcome_line, plan, prefect_api, report, run, run_url, served_by_a_worker,
                              via_deployment)
from ftops.run.summary import (PROMOTED, REJECTED_AB, REJECTED_DEPLOY, REJECTED_EXPORT, SKIPPED, STAGED, UNCHANGED,
                               Outcome, artifact_key, load_summary, markdown, outcome, save_summary, stage_rows,
                               summary_file)

__all__ = ["DEPLOYMENT", "DRAIN_QUIET_S", "EPHEMERAL_START_S", "FOLLOW_LIMIT_S", "LOG_OVERLAP", "PAGE", "POLL_S",
           "PROMOTED", "REJECTED_AB", "REJECTED_DEPLOY", "REJECTED_EXPORT", "SETTLE", "SKIPPED", "STAGED", "UNCHANGED",
           "Finished", "Follower", "Outcome", "Plan", "artifact_key", "config_path_of", "exit_code", "follow",
           "in_process", "links", "load_summary", "markdown", "outcome", "outcome_line", "plan", "prefect_api",
           "report", "run", "run_url", "save_summary", "served_by_a_worker", "stage_rows", "summary_file",
           "via_deployment"]
