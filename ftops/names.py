"""One vocabulary: the names that cross a boundary (MLflow tags, registry aliases, routes,
Prefect events, candidate and export files).

A name written on one side and read on another lives here once, so that renaming it cannot
silently break the reader (a drift event the lifecycle trigger no longer matches, a tag
the registry no longer finds). Names used inside one module stay in that module.
"""

from __future__ import annotations

# Roles: the registry alias, the route in routing.json and the gateway's word are the same.
CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
ROLES = (CHAMPION, CHALLENGER, PREVIOUS)

# Prefect events: the monitor emits, the lifecycle deployment's trigger matches.
EVENT_DRIFT = "ftops.drift.detected"


def model_resource(project: str) -> str:
    """The Prefect resource id a project's drift events are about (matched by the trigger)."""
    return f"ftops.model.{project}"


# MLflow tags on training runs: lineage.
TAG_PREFIX = "ftops."
TAG_SNAPSHOT = "ftops.data_snapshot"
TAG_SNAPSHOT_SHA = "ftops.data_sha256"
TAG_CONFIG_SHA = "ftops.config_sha256"
TAG_GIT_SHA = "ftops.git_sha"
TAG_PARENT_MODEL = "ftops.parent_model_version"
TAG_CANDIDATE = "ftops.candidate"
TAG_STRATEGY = "ftops.strategy"
TAG_ROUND = "ftops.round"
TAG_ROUND_DIR = "ftops.round_dir"            # where the round's candidate folders are
TAG_FLOW_RUN = "ftops.prefect_flow_run"      # the Prefect flow run that trains the round
TAG_TUNED_PREFIX = "ftops.tuned"
TAG_TUNED_STUDY = "ftops.tuned_study"        # on a training run: where its settings came from
TAG_TUNED_TRIAL = "ftops.tuned_trial"

# MLflow tags on tuning runs.
TAG_STUDY = "ftops.study"
TAG_TRIAL = "ftops.trial"
TAG_TRIAL_STATE = "ftops.trial_state"        # complete / pruned / failed
TAG_IMPORTANCES = "ftops.tune.importances"   # why the importance plot is missing, when it is

# MLflow tags on registry versions and the runs behind them.
TAG_DECISION = "ftops.decision"
TAG_DECISION_SUMMARY = "ftops.decision_summary"
TAG_ROLLED_BACK = "ftops.rolled_back"
TAG_DEPLOY = "ftops.deploy"                  # the outcome of the deploy gate
TAG_EXPORT_SELECTED = "ftops.export.selected"
TAG_ONLINE_EXPERIMENT = "ftops.online_experiment"

# The candidate folder (what training writes, what every later stage reads).
MODEL_DIR = "model"
META_FILE = "ftops.json"
BASELINE_FILE = "baseline.json"   # beside the TF-IDF baseline's MLflow model: its labels, in id order

# The export folder (what export writes, what serving reads).
EXPORT_FORMAT = "ftops.export/1"
ONNX_FILE = "model.onnx"
MANIFEST_FILE = "export.json"
LABELS_FILE = "labels.json"
CARD_FILE = "model_card.md"
VOCAB_FILE = "vocab.txt"
OUTPUT_NAME = "logits"
TOKENIZER_FILE = "tokenizer.json"     # the fast tokenizer serving encodes with
TEXT_INPUT = "text"                   # the input of an ONNX model that takes raw text (the baseline)

# The Prefect deployment of the lifecycle (flow/deployment): `ftops run` and the demo start it.
LIFECYCLE_DEPLOYMENT = "lifecycle/lifecycle"
