"""Online A/B and shadow experiments: a registry version staged beside the champion, live
traffic split to it (`ab`) or mirrored to it (`shadow`), and a decision from the answers
that got feedback. `ftops ab start / report / decide / stop` are thin wiring over these
functions, and so are the flows (`gates.promotion: online_ab | shadow`).

experiment: the record (experiment.json, the ended ones, the registry tag) and its types.
control: start (export, stage behind the smoke gate, record) and stop.
follow: the running gateway made to route by the record.
decide: the online figures held to config.gates; a win goes through the serving gates.

Everything that moves routes or the record holds the promotion lock (ftops.lock).
"""

from __future__ import annotations

from ftops.online.control import start, stop
from ftops.online.decide import decide, feedback_counts, judge, window
from ftops.online.experiment import (AB, POLICY_OF_PROMOTION, REJECT, SHADOW, TAG_EXPERIMENT, Experiment, current,
                                     history)

__all__ = ["AB", "POLICY_OF_PROMOTION", "REJECT", "SHADOW", "TAG_EXPERIMENT", "Experiment", "current", "decide",
           "feedback_counts", "history", "judge", "start", "stop", "window"]
