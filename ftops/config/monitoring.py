"""The monitoring stage's settings: drift windows and thresholds, and the schedules of drift
checks and retraining."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from ftops.config.section import Section


class MonitoringSection(Section):
    window_size: int = Field(500, ge=10)
    min_window: int = Field(200, ge=10)
    drift_share: float = Field(0.5, gt=0, le=1)
    text_auc_threshold: float = Field(0.55, gt=0.5, lt=1)
    persistence_windows: int = Field(3, ge=1)
    persistence_hits: int = Field(2, ge=1)
    cooldown_hours: float = Field(24, ge=0)
    ui_port: int = Field(8085, ge=1, le=65535)
    window_hours: float | None = Field(None, gt=0, description="window = the last H hours instead of the last window_size rows")
    strong_auc: float = Field(0.75, gt=0.5, le=1, description="a text / embedding domain-classifier ROC AUC this high is drift on its own")
    min_feedback: int = Field(30, ge=1, description="labelled rows a window needs for label drift and live quality")
    embedding_sample: int = Field(200, ge=20, description="rows a side for embedding drift")
    embedding_dims: int = Field(10, ge=2, description="PCA components embeddings are reduced to")
    keep_reports: int = Field(100, ge=1, description="newest HTML reports kept (each is ~4 MB, Evidently inlines its JS)")

    @model_validator(mode="after")
    def _hits_fit_windows(self) -> MonitoringSection:
        if self.persistence_hits > self.persistence_windows:
            raise ValueError("persistence_hits cannot exceed persistence_windows")
        if self.min_window > self.window_size:
            raise ValueError("min_window cannot exceed window_size")
        if self.strong_auc < self.text_auc_threshold:
            raise ValueError("strong_auc cannot be below text_auc_threshold")
        return self


class SchedulesSection(Section):
    retrain_cron: str = "0 3 1 1,4,7,10 *"
    monitor_interval_minutes: int = Field(15, ge=1)
    timezone: str = "UTC"

    @field_validator("retrain_cron")
    @classmethod
    def _five_fields(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError("a cron expression has 5 fields: minute hour day month weekday")
        return value
