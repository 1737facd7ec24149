"""Snapshots: an immutable folder (Parquet splits + labels + manifest with the sha256 of
every file) named by its content hash, written atomically and checked when loaded."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from ftops import atomic
from ftops.config import Config, DataSection
from ftops.data.load import file_sha256
from ftops.data.report import CleaningReport
from ftops.errors import DataError


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
            files[target.name] = file_sha256(target)
        labels_file = tmp / "labels.json"
        labels_file.write_text(json.dumps({"labels": labels,
                                           "label2id": {l: i for i, l in enumerate(labels)}},
                                          indent=2))
        files[labels_file.name] = file_sha256(labels_file)
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
        if file_sha256(path / name) != digest:
            raise DataError(f"Data snapshot {path}: {name} does not match its sha256 in "
                            "manifest.json (modified or damaged). Run `ftops data prepare` again.")
    return Snapshot(manifest["id"], path, manifest["labels"], manifest["counts"],
                    manifest["label_counts"], CleaningReport(**manifest["cleaning"]),
                    manifest["source"], manifest.get("source_counts", {}))
