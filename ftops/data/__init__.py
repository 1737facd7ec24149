"""The data stage: load, validate, clean, align labels, split, augment, snapshot.

A snapshot is an immutable folder (Parquet splits + labels + manifest with sha256 of every
file) named by its content hash; later stages reference it by that id. Errors name the
file, the row (records counted from 1 after any header) and the field. A set that cannot
train and judge a classifier is refused before anything is written. When retraining,
labelled traffic joins the champion's rows under limits: its split comes from a hash, a
curated row outranks it, and one sender's share is capped.

- corpora: the builtin corpora (`builtin:tweets`, `builtin:movies`), read from installed wheels
- load: a file or a builtin spec -> rows with a `row` number
- validation: row-level checks; refusing a set that cannot train a classifier
- cleaning: text normalisation, length limits, dedup
- splitting: label order, subsample, the stratified split
- augmentation: EDA on the train split
- feedback: labelled traffic in a retraining set (hashed split, sender cap)
- snapshot: writing and loading content-addressed snapshots
- report: the cleaning report
- stage: `prepare`, the stage end to end
"""

from ftops.data.feedback import retraining_frame
from ftops.data.load import read_source
from ftops.data.report import CleaningReport, drop_summary
from ftops.data.snapshot import Snapshot, load_snapshot, snapshot_root
from ftops.data.splitting import SPLITS
from ftops.data.stage import prepare

__all__ = ["SPLITS", "CleaningReport", "Snapshot", "drop_summary", "load_snapshot", "prepare", "read_source",
           "retraining_frame", "snapshot_root"]
