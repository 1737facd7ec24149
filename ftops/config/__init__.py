"""One typed config per project, loaded from YAML with `FTOPS_...` environment overrides.

Every section forbids unknown keys, so a typo is an error rather than a silently ignored
setting. URIs left empty resolve to the embedded defaults under `project.dir`.

- section: the base every section derives from (unknown keys forbidden)
- data: data, data.augment, feedback
- training: model, candidates[] (distillation, ewc, adaptation, tasks), training
- tuning: tuning (search space, pruner)
- gates: gates
- serving: serving (Triton, the gateway, the prediction log writer)
- monitoring: monitoring, schedules
- project: project, security, retention, timeouts, supervisor, uris
- root: `Config`, the whole file, and `Config.resolved`
- load: `load_config` (YAML, `FTOPS_` environment, overrides, errors naming their source)
"""

from ftops.config.data import DataSection, FeedbackSection
from ftops.config.gates import GatesSection
from ftops.config.load import DEFAULT_CONFIG, ENV_NESTING, ENV_PREFIX, load_config
from ftops.config.project import RetentionSection
from ftops.config.root import Config
from ftops.config.serving import ServingSection
from ftops.config.training import AdaptationSection, CandidateSection, DistillationSection, TaskSection, TrainingSection
from ftops.config.tuning import DimSection, TuningSection

__all__ = ["DEFAULT_CONFIG", "ENV_NESTING", "ENV_PREFIX", "AdaptationSection", "CandidateSection", "Config",
           "DataSection", "DimSection", "DistillationSection", "FeedbackSection", "GatesSection", "RetentionSection",
           "ServingSection", "TaskSection", "TrainingSection", "TuningSection", "load_config"]
