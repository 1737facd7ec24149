"""The data stage's settings: where rows come from, how they are checked, cleaned, split and
augmented, and what labelled traffic may do to the next retraining set."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ftops.config.section import Section


class AugmentSection(Section):
    """EDA-style augmentation of the train split (Wei & Zou 2019), without WordNet."""

    enabled: bool = False
    copies: int = Field(1, ge=1, le=8)
    swap: float = Field(0.1, ge=0, le=0.5)
    delete: float = Field(0.1, ge=0, le=0.5)
    insert: float = Field(0.1, ge=0, le=0.5)


class DataSection(Section):
    source: str = Field("builtin:tweets?domain=airline", description=(
        "a file (CSV, TSV, JSONL, JSON records, Parquet) or builtin:<corpus>; a relative path "
        "in a YAML file is read from that file's folder"))
    text_column: str = "text"
    label_column: str = "label"
    labels: list[str] | None = None
    encoding: str = "utf-8"
    on_invalid: Literal["error", "drop"] = "error"
    min_rows_per_class: int = Field(10, ge=1)
    absent_labels: Literal["error", "allow"] = Field("error", description=(
        "a data.labels label with no rows: error (it counts as 0 rows per class), or allow "
        "(the model keeps the label and learns nothing of it)"))
    min_chars: int = Field(1, ge=1)
    max_chars: int = Field(2000, ge=1)
    dedup: Literal["none", "exact", "normalized"] = "normalized"
    max_rows: int | None = Field(None, ge=10)
    validation_size: float = Field(0.15, gt=0, lt=0.5)
    test_size: float = Field(0.15, gt=0, lt=0.5)
    seed: int = 13
    augment: AugmentSection = AugmentSection()

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        import codecs

        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError("unknown text encoding; use e.g. utf-8, latin-1, cp1252") from None
        return value

    @model_validator(mode="after")
    def _sizes_leave_training_rows(self) -> DataSection:
        if self.validation_size + self.test_size >= 0.6:
            raise ValueError(
                f"validation_size + test_size = {self.validation_size + self.test_size:.2f} "
                "leaves too little to train on; keep the sum below 0.6"
            )
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) is above max_chars ({self.max_chars})")
        return self


class FeedbackSection(Section):
    """What delayed labels may do to the next model: they train it, but never decide the gate."""

    holdout_share: float = Field(0.2, ge=0, lt=1, description=(
        "share of feedback rows (chosen by a hash of the request id, never by the caller) held out "
        "as the A/B gate's test rows; training never sees them"))
    max_sender_share: float = Field(0.005, gt=0, le=1, description=(
        "largest share of a retraining set that one sender's labels may make up; beyond it the "
        "sender's newest rows are left out and counted"))
    per_minute: int = Field(600, ge=1, description="feedback requests one credential may send per minute (429 beyond)")
