"""The whole config: every section under its key, and the resolved copy in which empty
URIs point at the embedded defaults under project.dir."""

from __future__ import annotations

from pydantic import field_validator

from ftops.config.data import DataSection, FeedbackSection
from ftops.config.gates import GatesSection
from ftops.config.monitoring import MonitoringSection, SchedulesSection
from ftops.config.project import (ProjectSection, RetentionSection, SecuritySection, SupervisorSection,
                                  TimeoutsSection, UrisSection)
from ftops.config.section import Section
from ftops.config.serving import ServingSection
from ftops.config.training import CandidateSection, ModelSection, TrainingSection
from ftops.config.tuning import TuningSection


class Config(Section):
    project: ProjectSection = ProjectSection()
    data: DataSection = DataSection()
    model: ModelSection = ModelSection()
    candidates: list[CandidateSection] = [
        CandidateSection(name="lora", strategy="lora"),
        CandidateSection(name="full", strategy="full"),
    ]
    training: TrainingSection = TrainingSection()
    tuning: TuningSection = TuningSection()
    gates: GatesSection = GatesSection()
    serving: ServingSection = ServingSection()
    monitoring: MonitoringSection = MonitoringSection()
    schedules: SchedulesSection = SchedulesSection()
    feedback: FeedbackSection = FeedbackSection()
    security: SecuritySection = SecuritySection()
    retention: RetentionSection = RetentionSection()
    timeouts: TimeoutsSection = TimeoutsSection()
    supervisor: SupervisorSection = SupervisorSection()
    uris: UrisSection = UrisSection()

    @field_validator("candidates")
    @classmethod
    def _unique_names(cls, value: list[CandidateSection]) -> list[CandidateSection]:
        names = [c.name for c in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"candidate names must be unique; repeated: {', '.join(duplicates)}")
        return value

    def resolved(self) -> Config:
        """A copy with project.dir absolute and every empty URI set to its embedded default."""
        out = self.model_copy(deep=True)
        root = out.project.dir.expanduser().resolve()
        out.project.dir = root
        uris = out.uris
        uris.mlflow_tracking = uris.mlflow_tracking or f"sqlite:///{root / 'mlflow.db'}"
        uris.prediction_log = uris.prediction_log or f"sqlite:///{root / 'predictions.db'}"
        uris.evidently_workspace = uris.evidently_workspace or str(root / "evidently")
        uris.tuning = uris.tuning or f"sqlite:///{root / 'tuning.db'}"
        return out
