"""The data stage: load, validate, clean, align labels, split, augment, snapshot.

A snapshot is an immutable folder (Parquet splits + labels + manifest with sha256 of every
file) named by its content hash; later stages reference it by that id. Errors name the
file, the row (records counted from 1 after any header) and the field. A set that cannot
train and judge a classifier is refused before anything is written. When retraining,
labelled traffic joins the champion's rows under limits: its split comes from a hash, a
curated row outranks it, and one sender's share is capped.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import re
import shutil
import tempfile
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from ftops import atomic, corpora
from ftops.config import Config, DataSection, FeedbackSection
from ftops.errors import DataError

SPLITS = ("train", "validation", "test")
FEEDBACK = "feedback"  # the `source` of labelled traffic; anything else is curated
LINEAGE = ("request_id", "sender", "ts")  # feedback bookkeeping: summarised in the manifest, not stored
MIN_TO_STRATIFY = 3  # rows of a label a two-step stratified split needs (2 must reach the second step)
MAX_LISTED = 8  # problems listed in one error message; the rest are counted
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
            ".json": "json", ".parquet": "parquet", ".pq": "parquet"}


@dataclass
class CleaningReport:
    rows_in: int = 0
    rows_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[int]] = field(default_factory=dict)
    truncated: int = 0
    subsampled: int = 0
    senders: dict[str, dict[str, int]] = field(default_factory=dict)  # feedback offered / kept per sender
    kept_in_train: dict[str, int] = field(default_factory=dict)  # rows per label too few to split or hold out

    def drop(self, reason: str, rows: pd.Series) -> None:
        if len(rows):
            self.dropped[reason] = self.dropped.get(reason, 0) + len(rows)
            self.examples.setdefault(reason, []).extend(int(r) for r in rows[:3])


@dataclass
class Snapshot:
    id: str
    path: Path
    labels: list[str]
    counts: dict[str, int]
    label_counts: dict[str, dict[str, int]]
    report: CleaningReport
    source: str
    source_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> source -> rows

    def split(self, name: str) -> pd.DataFrame:
        return pd.read_parquet(self.path / f"{name}.parquet")


# ---------------------------------------------------------------- load


def read_source(cfg: DataSection) -> tuple[pd.DataFrame, str]:
    """Rows with columns text, label, row (+ any other columns), and a sha256 of the input."""
    if corpora.is_builtin(cfg.source):
        frame, path = corpora.load_builtin(cfg.source)
        return frame, _sha256(path)
    path = Path(cfg.source).expanduser()
    frame = read_table(path, cfg.encoding)
    frame = _pick_columns(frame, cfg, path)
    return frame, _sha256(path)


def read_table(path: Path, encoding: str = "utf-8") -> pd.DataFrame:
    """Any of CSV / TSV / JSONL / JSON records / Parquet, with a `row` column from 1."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unsupported file type '{path.suffix}'. "
                        f"Use one of {', '.join(sorted(SUFFIXES))}.")
    if not path.is_file():
        raise DataError(f"{path}: file not found. Check data.source (or --data).")
    if kind == "parquet":
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise DataError(f"{path}: not a readable Parquet file ({exc}).") from None
    else:
        text = _decode(path, encoding)
        frame = _parse_text(path, kind, text)
    if "row" in frame.columns:  # `row` is ours: the record number used in every message
        frame = frame.rename(columns={"row": "row_original"})
    frame.insert(0, "row", range(1, len(frame) + 1))
    return frame


def _decode(path: Path, encoding: str) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        bad = raw[exc.start:exc.end]
        raise DataError(
            f"{path}, line {line} (byte {exc.start}): bytes {bad!r} are not valid {encoding}. "
            "Re-save the file as UTF-8, or set data.encoding to the file's encoding "
            "(e.g. latin-1 or cp1252)."
        ) from None


def _parse_text(path: Path, kind: str, text: str) -> pd.DataFrame:
    if kind in ("csv", "tsv"):
        try:
            return pd.read_csv(io.StringIO(text), sep="\t" if kind == "tsv" else ",",
                               dtype=str, keep_default_na=False, na_values=[""])
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise DataError(f"{path}: not a readable {kind.upper()} file ({exc}).") from None
    if kind == "json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {exc.lineno}: invalid JSON ({exc.msg}).") from None
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise DataError(f"{path}: a .json file must hold a list of objects, one per row.")
        return pd.DataFrame.from_records(records)
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {number}: invalid JSON ({exc.msg}). "
                            "JSONL needs one JSON object per line.") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object, "
                            f"got {type(record).__name__}.")
        records.append(record)
    return pd.DataFrame.from_records(records)


def _pick_columns(frame: pd.DataFrame, cfg: DataSection, path: Path) -> pd.DataFrame:
    wanted = {"text": cfg.text_column, "label": cfg.label_column}
    missing = [f"{role} column '{col}'" for role, col in wanted.items() if col not in frame.columns]
    if missing:
        have = ", ".join(str(c) for c in frame.columns if c != "row") or "none"
        raise DataError(f"{path}: no {' and no '.join(missing)}. Columns found: {have}. "
                        "Set data.text_column / data.label_column (or --text-column / "
                        "--label-column).")
    others = [c for c in frame.columns
              if c not in ("row", cfg.text_column, cfg.label_column, "text", "label")]
    out = frame[["row", cfg.text_column, cfg.label_column, *others]]
    out.columns = ["row", "text", "label", *others]
    return out


# ---------------------------------------------------------------- validate


def validate(frame: pd.DataFrame, cfg: DataSection, origin: str, report: CleaningReport) -> pd.DataFrame:
    """Row-level checks. With on_invalid=error any problem stops the stage, listing rows;
    with on_invalid=drop the rows are dropped and counted in the report."""
    problems: list[tuple[str, pd.Series, str]] = []

    text = frame["text"]
    is_str = text.map(lambda v: isinstance(v, str))
    missing = text.isna()
    non_text = ~is_str & ~missing
    blank = is_str & text.map(lambda v: isinstance(v, str) and not v.strip())
    problems.append(("text is empty", frame.loc[missing | blank, "row"], "field 'text': empty"))
    problems.append(("text is not text", frame.loc[non_text, "row"],
                     "field 'text': not text (a number, list or object)"))

    label = frame["label"]
    no_label = label.isna() | label.map(lambda v: isinstance(v, str) and not v.strip())
    problems.append(("label is empty", frame.loc[no_label, "row"], "field 'label': empty"))
    labels_as_text = label.map(_label_text)
    if cfg.labels:
        outside = ~no_label & ~labels_as_text.isin(cfg.labels)
        allowed = ", ".join(cfg.labels)
        problems.append(("label not in data.labels", frame.loc[outside, "row"],
                         f"field 'label': value not one of {allowed} (data.labels)"))

    bad_rows = pd.Series(dtype="int64")
    messages = []
    for reason, rows, message in problems:
        if len(rows) == 0:
            continue
        bad_rows = pd.concat([bad_rows, rows])
        if cfg.on_invalid == "drop":
            report.drop(reason, rows)
            continue
        listed = ", ".join(str(r) for r in rows[:MAX_LISTED])
        more = f" and {len(rows) - MAX_LISTED} more" if len(rows) > MAX_LISTED else ""
        example = ""
        if reason == "label not in data.labels":
            seen = labels_as_text[frame["row"].isin(rows)].unique()[:MAX_LISTED]
            example = f" (found: {', '.join(repr(s) for s in seen)})"
        noun = "row" if len(rows) == 1 else "rows"
        messages.append(f"{noun} {listed}{more}: {message}{example}")
    if messages:
        raise DataError(f"{origin}: {'; '.join(messages)}. Fix these rows, or set "
                        "data.on_invalid: drop to drop them (they are then counted in the "
                        "cleaning report).")
    out = frame[~frame["row"].isin(bad_rows)].copy()
    out["label"] = out["label"].map(_label_text)
    return out


def _label_text(value: Any) -> Any:
    """Labels are strings everywhere downstream; 1 and 1.0 both become '1'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else (None if pd.isna(value) else str(value))


def check_rows(frame: pd.DataFrame, cfg: DataSection, origin: str, report: CleaningReport) -> None:
    """Refuse, before anything is written, a set no classifier can be trained and judged on."""
    if frame.empty:
        dropped = "; ".join(f"{reason}: {n}" for reason, n in drop_summary(report)) or "nothing dropped"
        raise DataError(f"{origin}: no rows left after cleaning ({report.rows_in} read; {dropped}). "
                        "Check that the file holds data rows (not just a header), data.text_column / "
                        "data.label_column, and data.min_chars / data.on_invalid.")
    present = frame["label"].value_counts()
    if len(present) < 2:
        missing = [l for l in cfg.labels or [] if l not in present.index]
        absent = f"; absent: {', '.join(missing)}" if missing else ""
        raise DataError(f"{origin}: only one label occurs ('{present.index[0]}', {present.iloc[0]} rows"
                        f"{absent}); a classifier needs rows of at least two labels. Add rows of the "
                        "other labels, or check data.label_column.")
    check_class_counts(frame, cfg, origin)


def check_class_counts(frame: pd.DataFrame, cfg: DataSection, origin: str) -> None:
    """Every label present, and every data.labels label (absent ones count as 0 unless
    data.absent_labels is allow), needs min_rows_per_class rows."""
    counts = frame["label"].value_counts()
    if cfg.labels and cfg.absent_labels == "error":
        counts = counts.reindex(list(dict.fromkeys([*cfg.labels, *counts.index])), fill_value=0)
    needed = max(cfg.min_rows_per_class, MIN_TO_STRATIFY)  # one row per split at the very least
    few = counts[counts < needed]
    if len(few):
        listed = ", ".join(f"'{k}' has {v}" for k, v in few.items())
        absent = ("; a data.labels label with no rows counts as 0 (data.absent_labels: allow keeps it "
                  "without rows)") if (few == 0).any() else ""
        raise DataError(f"{origin}: too few rows per class after cleaning ({listed}); "
                        f"data.min_rows_per_class is {cfg.min_rows_per_class}{absent}. Add labelled "
                        "rows, merge rare labels, or lower data.min_rows_per_class.")


# ---------------------------------------------------------------- clean

CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\ufeff]")
WHITESPACE = re.compile(r"\s+")
NON_WORD = re.compile(r"[\W_]+")


def clean_text(text: str) -> str:
    """NFKC, control/zero-width characters out, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text)
    text = CONTROL.sub(" ", text)
    return WHITESPACE.sub(" ", text).strip()


def normalized_key(text: str) -> str:
    """Duplicate key that ignores case, punctuation and spacing (keeps @mentions' words)."""
    return NON_WORD.sub(" ", text.casefold()).strip()


def clean(frame: pd.DataFrame, cfg: DataSection, report: CleaningReport) -> pd.DataFrame:
    out = frame.copy()
    out["text"] = out["text"].map(clean_text)
    report.drop("empty after cleaning", out.loc[out["text"] == "", "row"])
    out = out[out["text"] != ""]
    short = out["text"].str.len() < cfg.min_chars
    report.drop(f"shorter than {cfg.min_chars} chars", out.loc[short, "row"])
    out = out[~short]
    long = out["text"].str.len() > cfg.max_chars
    report.truncated = int(long.sum())
    out.loc[long, "text"] = out.loc[long, "text"].str.slice(0, cfg.max_chars)
    if cfg.dedup != "none":
        out = _dedup(out, cfg.dedup, report)
    return out


def _dedup(frame: pd.DataFrame, mode: str, report: CleaningReport) -> pd.DataFrame:
    key = frame["text"] if mode == "exact" else frame["text"].map(normalized_key)
    curated = _curated(frame)
    # Labelled traffic cannot overrule the curated data: a feedback row that gives a curated
    # text another label is dropped, the curated row kept (else crafted feedback erases it).
    contradicting = _contradicts_curated(key, frame["label"], curated)
    report.drop("feedback contradicting a curated row", frame.loc[contradicting, "row"])
    frame, key, curated = frame[~contradicting], key[~contradicting], curated[~contradicting]
    # Otherwise the same text with different labels cannot be learned from: drop every copy.
    labels_per_key = frame.groupby(key)["label"].transform("nunique")
    conflicting = labels_per_key > 1
    report.drop("duplicate text with conflicting labels", frame.loc[conflicting, "row"])
    kept, kept_key, kept_curated = frame[~conflicting], key[~conflicting], curated[~conflicting]
    curated_first = kept.index[np.argsort(~kept_curated.to_numpy(), kind="stable")]
    repeated = kept_key.loc[curated_first].duplicated(keep="first").reindex(kept.index)
    report.drop(f"duplicate ({mode})", kept.loc[repeated, "row"])
    return kept[~repeated]


def _curated(frame: pd.DataFrame) -> pd.Series:
    """Rows not from labelled traffic; without a `source` column every row is curated."""
    if "source" not in frame:
        return pd.Series(True, index=frame.index)
    return frame["source"] != FEEDBACK


def _contradicts_curated(key: pd.Series, label: pd.Series, curated: pd.Series) -> pd.Series:
    curated_pairs = set(zip(key[curated], label[curated]))
    curated_keys = {k for k, _ in curated_pairs}
    return pd.Series([not c and k in curated_keys and (k, l) not in curated_pairs
                      for k, l, c in zip(key, label, curated)], index=key.index, dtype=bool)


# ---------------------------------------------------------------- labels, split, augment


def label_map(frame: pd.DataFrame, cfg: DataSection) -> list[str]:
    """Stable label order: data.labels when given, else sorted; saved with the snapshot."""
    if cfg.labels:
        return list(cfg.labels)
    return sorted(frame["label"].unique())


def subsample(frame: pd.DataFrame, cfg: DataSection, report: CleaningReport) -> pd.DataFrame:
    if cfg.max_rows is None or len(frame) <= cfg.max_rows:
        return frame
    kept, _ = train_test_split(frame, train_size=cfg.max_rows, stratify=frame["label"],
                               random_state=cfg.seed)
    report.subsampled = len(frame) - len(kept)
    return kept.sort_values("row")


def split(frame: pd.DataFrame, cfg: DataSection, report: CleaningReport | None = None) -> dict[str, pd.DataFrame]:
    """Stratified, seeded train / validation / test. Rows with a `split_hint` keep that
    split: when retraining, the champion's training rows must never land in the test split
    it is judged on (it has memorised them), and feedback rows go where their request id's
    hash sends them. A label with too few unhinted rows to stratify stays in train (counted
    in `report.kept_in_train`) instead of failing the split."""
    if "split_hint" not in frame:
        frame = frame.assign(split_hint=None)
    frame = _small_labels_to_train(frame, frame["split_hint"].isna(), MIN_TO_STRATIFY, report)
    hinted = frame[frame["split_hint"].notna()]
    free = frame.drop(hinted.index)
    parts = dict(zip(SPLITS, _stratified(free, cfg))) if len(free) else {s: free for s in SPLITS}
    out = {}
    for name in SPLITS:
        part = pd.concat([parts[name], hinted[hinted["split_hint"] == name]])
        out[name] = part.drop(columns=["split_hint"], errors="ignore").sort_values("row").reset_index(drop=True)
    return out


def _small_labels_to_train(frame: pd.DataFrame, among: pd.Series, fewer_than: int,
                           report: CleaningReport | None) -> pd.DataFrame:
    """Hint to train the rows (of `among`) of every label with fewer than `fewer_than` of them."""
    counts = frame.loc[among, "label"].value_counts()
    small = counts[counts < fewer_than]
    if small.empty:
        return frame
    moved = among & frame["label"].isin(small.index)
    out = frame.copy()
    out.loc[moved, "split_hint"] = "train"
    if report is not None:
        for label, n in small.items():
            report.kept_in_train[label] = report.kept_in_train.get(label, 0) + int(n)
    return out


def rare_feedback_to_train(frame: pd.DataFrame, cfg: DataSection, report: CleaningReport) -> pd.DataFrame:
    """New feedback rows of a label with under min_rows_per_class of them train instead of
    being held out: a handful of test rows measures nothing (slices that small are not
    gated on) and would withhold the only examples training has of that label's traffic."""
    if "request_id" not in frame or "split_hint" not in frame:
        return frame
    new = ~_curated(frame) & frame["request_id"].notna()
    return _small_labels_to_train(frame, new, cfg.min_rows_per_class, report)


def feedback_split(request_id: str, salt: str, holdout_share: float, validation_share: float) -> str:
    """The split of one feedback row, from a salted hash of its request id (which the
    gateway assigns), never from the caller: `holdout_share` of rows are test, and of the
    rest `validation_share` are validation. The same id always gets the same split."""
    digest = hashlib.sha256(f"{salt}\x00{request_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2 ** 64
    if u < holdout_share:
        return "test"
    return "validation" if (u - holdout_share) / (1 - holdout_share) < validation_share else "train"


def _stratified(frame: pd.DataFrame, cfg: DataSection) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rest, test = train_test_split(frame, test_size=cfg.test_size, stratify=frame["label"],
                                  random_state=cfg.seed)
    share = cfg.validation_size / (1 - cfg.test_size)
    train, validation = train_test_split(rest, test_size=share, stratify=rest["label"],
                                         random_state=cfg.seed)
    return train, validation, test


def augment(train: pd.DataFrame, cfg: DataSection) -> pd.DataFrame:
    """EDA random swap / deletion / insertion on the train split only.

    EDA's synonym replacement and insertion use WordNet, which is a download; insertion here
    repeats a word of the same text instead, so augmentation works offline.
    """
    aug = cfg.augment
    out = train.assign(augmented=False)
    if not aug.enabled:
        return out
    rng = random.Random(cfg.seed)
    copies = []
    for _ in range(aug.copies):
        variant = train.copy()
        variant["text"] = [eda(t, rng, aug.swap, aug.delete, aug.insert) for t in train["text"]]
        copies.append(variant.assign(augmented=True))
    return pd.concat([out, *copies], ignore_index=True)


def eda(text: str, rng: random.Random, swap: float, delete: float, insert: float) -> str:
    words = text.split()
    if len(words) < 2:
        return text
    n_swap = max(1, round(swap * len(words))) if swap else 0
    for _ in range(n_swap):
        i, j = rng.randrange(len(words)), rng.randrange(len(words))
        words[i], words[j] = words[j], words[i]
    if delete:
        kept = [w for w in words if rng.random() >= delete]
        words = kept or [rng.choice(words)]
    n_insert = max(1, round(insert * len(words))) if insert else 0
    for _ in range(n_insert):
        words.insert(rng.randrange(len(words) + 1), rng.choice(words))
    return " ".join(words)


# ---------------------------------------------------------------- snapshot


def snapshot_root(config: Config) -> Path:
    return config.resolved().project.dir / "data"


def write_snapshot(splits: dict[str, pd.DataFrame], labels: list[str], report: CleaningReport,
                   cfg: DataSection, source_sha: str, root: Path) -> Snapshot:
    """Write atomically: a temp folder renamed into place, so a crash leaves nothing half
    written and an existing snapshot is never modified."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        files = {}
        for name, part in splits.items():
            target = tmp / f"{name}.parquet"
            _to_parquet(part, target)
            files[target.name] = _sha256(target)
        labels_file = tmp / "labels.json"
        labels_file.write_text(json.dumps({"labels": labels,
                                           "label2id": {l: i for i, l in enumerate(labels)}},
                                          indent=2))
        files[labels_file.name] = _sha256(labels_file)
        content = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
        snapshot_id = content[:12]
        counts = {name: len(part) for name, part in splits.items()}
        label_counts = {name: {l: int(c) for l, c in part["label"].value_counts().items()}
                        for name, part in splits.items()}
        source_counts = {name: {s: int(c) for s, c in part["source"].value_counts().items()}
                         for name, part in splits.items() if "source" in part}
        manifest = {
            "id": snapshot_id, "sha256": content, "created_at": datetime.now(UTC).isoformat(),
            "source": cfg.source, "source_sha256": source_sha, "config": cfg.model_dump(mode="json"),
            "labels": labels, "counts": counts, "label_counts": label_counts,
            "source_counts": source_counts, "cleaning": asdict(report), "files": files,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        final = root / snapshot_id
        if final.exists():
            shutil.rmtree(tmp)  # same content already snapshotted: keep the original
        else:
            os.rename(tmp, final)
        _write_pointer(root / "LATEST", snapshot_id)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Snapshot(snapshot_id, final, labels, counts, label_counts, report, cfg.source, source_counts)


def _to_parquet(frame: pd.DataFrame, target: Path) -> None:
    frame = frame.copy()
    for column in frame.columns:  # mixed-type object columns (JSONL) cannot go to Parquet
        if frame[column].dtype == object and column not in ("text", "label"):
            frame[column] = frame[column].map(lambda v: None if v is None else str(v))
    frame.to_parquet(target, index=False)


def _write_pointer(path: Path, value: str) -> None:
    atomic.write_text(path, value + "\n")


def load_snapshot(root: Path, snapshot_id: str | None = None) -> Snapshot:
    """A snapshot by id (or the latest), its files checked against the manifest."""
    if snapshot_id is None:
        pointer = root / "LATEST"
        if not pointer.is_file():
            raise DataError(f"No data snapshot under {root}. Run `ftops data prepare` first.")
        snapshot_id = pointer.read_text().strip()
    path = root / snapshot_id
    manifest_file = path / "manifest.json"
    if not manifest_file.is_file():
        raise DataError(f"Data snapshot '{snapshot_id}' not found under {root}.")
    manifest = json.loads(manifest_file.read_text())
    for name, digest in manifest["files"].items():
        if _sha256(path / name) != digest:
            raise DataError(f"Data snapshot {path}: {name} does not match its sha256 in "
                            "manifest.json (modified or damaged). Run `ftops data prepare` again.")
    return Snapshot(manifest["id"], path, manifest["labels"], manifest["counts"],
                    manifest["label_counts"], CleaningReport(**manifest["cleaning"]),
                    manifest["source"], manifest.get("source_counts", {}))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- the stage


def prepare(config: Config, frame: pd.DataFrame | None = None, origin: str | None = None) -> Snapshot:
    """Source -> validated, cleaned, split (and optionally augmented) snapshot.

    `frame` (columns text, label and any others) replaces the configured source, e.g. the
    old training rows plus labelled traffic when retraining (`retraining_frame`); `origin`
    names it in messages. Refuses, writing nothing, a set with no rows, one label, a label
    under min_rows_per_class, or an empty split.
    """
    cfg = config.data
    in_memory = frame is not None
    if frame is None:
        frame, source_sha = read_source(cfg)
        origin = cfg.source
    else:
        frame = frame.reset_index(drop=True)
        if "row" not in frame:
            frame.insert(0, "row", range(1, len(frame) + 1))
        source_sha = hashlib.sha256(pd.util.hash_pandas_object(frame[["text", "label"]].astype(str), index=False)
                                    .to_numpy().tobytes()).hexdigest()
        origin = origin or "in-memory rows"
        cfg = cfg.model_copy(update={"source": origin})
    report = CleaningReport(rows_in=len(frame))
    offered = sender_counts(frame) if in_memory else {}
    frame = validate(frame, cfg, origin, report)
    frame = clean(frame, cfg, report)
    if in_memory:
        frame = limit_feedback(frame, config, offered, report)
    check_rows(frame, cfg, origin, report)
    frame = subsample(frame, cfg, report)
    labels = label_map(frame, cfg)
    splits = split_or_refuse(frame, cfg, origin, report)
    splits["train"] = augment(splits["train"], cfg)
    report.rows_out = sum(len(p) for p in splits.values())
    return write_snapshot(splits, labels, report, cfg, source_sha, snapshot_root(config))


def split_or_refuse(frame: pd.DataFrame, cfg: DataSection, origin: str,
                    report: CleaningReport) -> dict[str, pd.DataFrame]:
    """`split`, refusing (before anything is written) a split that fails or comes out empty."""
    try:
        splits = split(frame, cfg, report)
    except ValueError as exc:  # sklearn: too few rows to stratify at these sizes
        raise DataError(f"{origin}: cannot split {len(frame)} rows into train / validation / test "
                        f"({exc}). Add rows, or raise data.min_rows_per_class.") from None
    empty = [name for name, part in splits.items() if part.empty]
    if empty:
        sizes = ", ".join(f"{name} {len(part)}" for name, part in splits.items())
        raise DataError(f"{origin}: the {' and '.join(empty)} split would be empty ({sizes} rows). "
                        "Every split needs rows: add rows, or check the split hints of in-memory rows.")
    return splits


def retraining_frame(old: Snapshot, feedback: pd.DataFrame, config: Config) -> pd.DataFrame:
    """The champion's labelled rows (each kept in its split and source) plus labelled
    traffic (`predlog.labelled` columns), each tagged with its `source`. A feedback row's
    split comes from a hash of its request id salted with the project name, so whoever
    sends labels cannot choose the rows the A/B gate measures on."""
    missing = [c for c in ("request_id", "text", "label", "sender") if c not in feedback]
    if missing:
        raise DataError(f"Labelled traffic lacks column(s) {', '.join(missing)}: pass "
                        "predlog.labelled(...) rows (request_id, text, label, ts, sender).")
    parts = []
    for name in SPLITS:
        part = old.split(name)
        if "augmented" in part:
            part = part[~part["augmented"].astype(bool)]
        source = part["source"] if "source" in part else "original"
        parts.append(part[["text", "label"]].assign(source=source, split_hint=name))
    validation_share = config.data.validation_size / (1 - config.data.test_size)
    hints = [feedback_split(str(r), config.project.name, config.feedback.holdout_share, validation_share)
             for r in feedback["request_id"]]
    ts = feedback["ts"] if "ts" in feedback else pd.NaT
    new = feedback[["text", "label", "request_id", "sender"]].assign(
        source=FEEDBACK, split_hint=hints, ts=ts, sender=feedback["sender"].fillna("anonymous"))
    return pd.concat([*parts, new], ignore_index=True)


def limit_feedback(frame: pd.DataFrame, config: Config, offered: dict[str, int],
                   report: CleaningReport) -> pd.DataFrame:
    """Labelled traffic's limits: one sender's share capped, rare labels kept in train,
    per sender offered / kept recorded; the lineage columns then leave the rows."""
    frame = cap_senders(frame, config.feedback, report)
    frame = rare_feedback_to_train(frame, config.data, report)
    kept = sender_counts(frame)
    report.senders = {s: {"offered": n, "kept": kept.get(s, 0)} for s, n in offered.items()}
    return frame.drop(columns=[c for c in LINEAGE if c in frame])


def cap_senders(frame: pd.DataFrame, feedback: FeedbackSection, report: CleaningReport) -> pd.DataFrame:
    """Rows of one sender make up at most feedback.max_sender_share of the set that is
    kept, so no single credential can outweigh the curated data; beyond it the sender's
    newest rows are left out (counted in the report)."""
    if "sender" not in frame:
        return frame
    sent = ~_curated(frame) & frame["sender"].notna()
    offered = frame.loc[sent, "sender"].value_counts()
    cap = sender_allowance(int((~sent).sum()), offered.tolist(), feedback.max_sender_share)
    order = frame[sent].sort_values(["ts", "row"], kind="stable") if "ts" in frame else frame[sent]
    rank = order.groupby("sender").cumcount().reindex(frame.index)
    beyond = sent & (rank >= cap)
    report.drop("feedback beyond one sender's share (feedback.max_sender_share)", frame.loc[beyond, "row"])
    return frame[~beyond]


def sender_allowance(others: int, offered: list[int], share: float) -> int:
    """Largest per-sender row count c such that every sender keeps min(offered, c) rows
    and none exceeds `share` of the rows kept in total (`others` + what senders keep).
    The share is of the kept set, so flooding with more rows cannot raise one's own cap."""
    total = others + sum(offered)
    while True:
        cap = math.floor(share * total + 1e-9)
        kept = others + sum(min(n, cap) for n in offered)
        if kept == total:
            return cap
        total = kept


def sender_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Feedback rows per sender."""
    if "sender" not in frame:
        return {}
    return {str(k): int(v) for k, v in frame.loc[~_curated(frame), "sender"].value_counts().items()}


def drop_summary(report: CleaningReport) -> list[tuple[str, int]]:
    return Counter(report.dropped).most_common()
