"""Retention: everything that grows with use is bounded by the `retention` settings.

`apply(config)` runs every step and reports what each removed; the monitor_drift flow calls
it after each check and `ftops prune` on demand. Each step touches only what ftops itself
wrote, and a step that fails is reported without stopping the others.

- prediction log: rows older than prediction_days (of `predictions`, and of the `feedback`
  label log where the store has one) go to Parquet under `<project dir>/archive/<table>/`,
  then are deleted, a chunk at a time;
- Triton model repository: the routed versions (champion, previous, challenger) stay,
  every other version of the project is unloaded and removed;
- service logs: rotated by size (ftops.procs.rotate);
- registry downloads (`<project dir>/downloads`): the aliased versions' and the most
  recently used stay; temp folders of downloads that died are removed;
- Evidently workspace: the newest snapshots stay;
- training checkpoints: deleted once a candidate finished (its result.json exists).
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ftops import atomic
from ftops.config import Config

log = logging.getLogger(__name__)

ARCHIVED_TABLES = ("predictions", "feedback")  # prediction-log tables archived, each where it exists
LOG_DIRS = ("services", "triton", "gateway", "evidently-ui")  # where services write their logs
STALE_PARTIAL_S = 24 * 3600  # a download temp folder this old belongs to a download that died


@dataclass
class Report:
    archived: dict[str, int] = field(default_factory=dict)  # table -> rows archived and deleted
    archive_files: list[str] = field(default_factory=list)
    repository: list[str] = field(default_factory=list)   # ensembles unloaded and removed
    logs: list[str] = field(default_factory=list)         # logs rotated
    downloads: list[str] = field(default_factory=list)    # download folders removed
    snapshots: int = 0                                    # Evidently snapshots deleted
    checkpoints: list[str] = field(default_factory=list)  # checkpoint folders deleted
    errors: dict[str, str] = field(default_factory=dict)  # step -> what went wrong

    def lines(self) -> list[str]:
        tables = ", ".join(f"{name} {rows}" for name, rows in self.archived.items())
        out = [f"prediction log: {sum(self.archived.values())} rows archived" + (f" ({tables})" if tables else "")
               + (f" into {len(self.archive_files)} Parquet files under "
                  f"{', '.join(sorted({str(Path(f).parent) for f in self.archive_files}))}" if self.archive_files else ""),
               f"triton repository: {len(self.repository)} versions removed{_names(self.repository)}",
               f"service logs: {len(self.logs)} rotated{_names(self.logs)}",
               f"registry downloads: {len(self.downloads)} removed{_names(self.downloads)}",
               f"evidently workspace: {self.snapshots} snapshots deleted",
               f"training checkpoints: {len(self.checkpoints)} folders deleted{_names(self.checkpoints)}"]
        return out + [f"FAILED {step}: {error}" for step, error in self.errors.items()]

    def as_dict(self) -> dict:
        return asdict(self)


def _names(items: list[str]) -> str:
    return f" ({', '.join(items)})" if items else ""


def apply(config: Config, now: datetime | None = None) -> Report:
    """Every retention step, each on its own: one failing (e.g. Triton unreachable) is
    recorded in the report and logged, and the others still run."""
    cfg = config.resolved()
    report = Report()
    steps: dict[str, Callable[[], None]] = {
        "prediction log": lambda: archive_predictions(cfg, report, now or datetime.now(UTC)),
        "triton repository": lambda: report.repository.extend(prune_repository(cfg)),
        "service logs": lambda: report.logs.extend(rotate_logs(cfg)),
        "registry downloads": lambda: report.downloads.extend(prune_downloads(cfg)),
        "evidently workspace": lambda: setattr(report, "snapshots", prune_snapshots(cfg)),
        "training checkpoints": lambda: report.checkpoints.extend(prune_checkpoints(cfg)),
    }
    for name, step in steps.items():
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - one store down must not keep the rest growing
            report.errors[name] = f"{type(exc).__name__}: {exc}"
            log.warning("retention step %s failed: %s", name, report.errors[name])
    return report


# ---------------------------------------------------------------- prediction log


def archive_dir(config: Config) -> Path:
    return config.resolved().project.dir / "archive"


def archive_predictions(config: Config, report: Report, now: datetime) -> None:
    """Archive and delete the prediction log's rows older than retention.prediction_days."""
    from ftops import predlog

    url = config.resolved().uris.prediction_log
    if _absent_sqlite(url):
        return  # nothing logged yet; engine() would create the database
    cutoff = now - timedelta(days=config.retention.prediction_days)
    eng = predlog.engine(url)
    try:
        for name in ARCHIVED_TABLES:
            table = predlog.metadata.tables.get(name)
            if table is None or not {"id", "ts"} <= set(table.c.keys()):
                continue  # not in this release of the log, or no row age to go by
            files = archive_table(eng, table, cutoff, archive_dir(config) / name, config.retention.archive_chunk_rows)
            report.archived[name] = sum(rows for _, rows in files)
            report.archive_files += [str(path) for path, _ in files]
    finally:
        eng.dispose()


def _absent_sqlite(url: str) -> bool:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and bool(parsed.database) and \
        parsed.database != ":memory:" and not Path(parsed.database).exists()


def archive_table(eng, table, cutoff: datetime, folder: Path, chunk_rows: int) -> list[tuple[Path, int]]:
    """Rows with ts < cutoff, oldest id first, one Parquet file per chunk: each file is
    complete on disk before its rows are deleted, so a crash loses nothing (a chunk
    archived but not deleted is archived again under the same name)."""
    import pandas as pd
    from sqlalchemy import delete, select

    written = []
    while True:
        query = select(table).where(table.c.ts < cutoff).order_by(table.c.id).limit(chunk_rows)
        with eng.connect() as conn:
            frame = pd.read_sql(query, conn)
        if frame.empty:
            return written
        first, last = int(frame["id"].min()), int(frame["id"].max())
        path = folder / f"{table.name}-{first:012d}-{last:012d}.parquet"
        folder.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        atomic.write_bytes(path, buffer.getvalue())  # a chunk of at most archive_chunk_rows
        with eng.begin() as conn:
            conn.execute(delete(table).where(table.c.id.between(first, last), table.c.ts < cutoff))
        written.append((path, len(frame)))


# ---------------------------------------------------------------- Triton, logs


def prune_repository(config: Config) -> list[str]:
    from ftops.serve import deploy

    return deploy.prune_repository(config)


def rotate_logs(config: Config) -> list[str]:
    """Rotate every service log of the project that outgrew retention.log_max_mb."""
    from ftops import procs

    root = config.resolved().project.dir
    logs = sorted(p for name in LOG_DIRS for p in (root / name).glob("*.log"))
    return [str(p) for p in logs if procs.rotate_log(p, config.retention)]


# ---------------------------------------------------------------- downloads, snapshots, checkpoints


def prune_downloads(config: Config) -> list[str]:
    """Keep the download folders of aliased versions and the `downloads_keep` most recently
    used others; remove the rest, and temp folders of downloads that died."""
    from ftops import registry

    root = registry.downloads_dir(config)
    if not root.is_dir():
        return []
    aliased = {f"v{v.version}" for v in (registry.find(config, a) for a in registry.ALIASES) if v is not None}
    folders = sorted((p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"v\d+", p.name)),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    others = [p for p in folders if p.name not in aliased]
    removed = []
    for folder in others[config.retention.downloads_keep:]:
        shutil.rmtree(folder)
        removed.append(folder.name)
    for partial in root.glob(f"*/{registry.PARTIAL}*"):
        if time.time() - partial.stat().st_mtime > STALE_PARTIAL_S:
            shutil.rmtree(partial, ignore_errors=True)
            removed.append(str(partial.relative_to(root)))
    return removed


def prune_snapshots(config: Config) -> int:
    from ftops import monitor

    return monitor.prune_workspace(config)


def prune_checkpoints(config: Config) -> list[str]:
    """Delete `checkpoints/` of every finished candidate (result.json written: training is
    over, the best weights are in model/); a run still training has no result.json yet."""
    if config.retention.keep_checkpoints:
        return []
    runs = config.resolved().project.dir / "runs"
    removed = []
    for result in sorted(runs.glob("*/*/result.json")):
        folder = result.parent / "checkpoints"
        if folder.is_dir():
            shutil.rmtree(folder)
            removed.append(str(folder.relative_to(runs)))
    return removed
