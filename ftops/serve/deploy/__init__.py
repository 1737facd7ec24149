"""Deploy with gates: load a new version beside the champion, smoke-test it against the
exported ONNX in-process, load-test it against the P99 SLO, then route to it and move the
registry aliases after the route.

A deploy cannot hurt what serves: only what it added is ever removed, a routed version is
verified but never rewritten, and deploy, stage / unstage and rollback hold the project's
promotion lock (ftops.lock), so two of them never interleave. Nothing is loaded unverified.

- routes.py   routing.json (the truth about what serves) and the registry aliases that follow it
- trial.py    the sequence deploy and stage share: a verified export placed and loaded on trial
- gates.py    the smoke parity and load gates
- promote.py  deploy: gate, then promote or reject, and record the outcome
- stage.py    stage / unstage a challenger
- rollback.py route back to the previous version
- upkeep.py   prune what no route names; reload the routes after a server restart
"""

from ftops.serve.deploy.gates import reference_probs
from ftops.serve.deploy.promote import PROMOTED, REJECTED, UNCHANGED, DeployResult, deploy
from ftops.serve.deploy.rollback import rollback
from ftops.serve.deploy.routes import Route, champion_model, routing, routing_file, save_routing, wanted_aliases
from ftops.serve.deploy.stage import stage, unstage
from ftops.serve.deploy.trial import tag_for
from ftops.serve.deploy.upkeep import prune_repository, reload_routes

__all__ = ["PROMOTED", "REJECTED", "UNCHANGED", "DeployResult", "Route", "champion_model", "deploy",
           "prune_repository", "reference_probs", "reload_routes", "rollback", "routing", "routing_file",
           "save_routing", "stage", "tag_for", "unstage", "wanted_aliases"]
