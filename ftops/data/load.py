"""Reading the rows: a file (CSV, TSV, JSONL, JSON records, Parquet) or a builtin corpus,
with a `row` column counted from 1 after any header, so every message can name the record."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd

from ftops.artifacts.exported import sha256 as file_sha256
from ftops.config import DataSection
from ftops.data import corpora
from ftops.errors import DataError

SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
            ".json": "json", ".parquet": "parquet", ".pq": "parquet"}


def read_source(cfg: DataSection) -> tuple[pd.DataFrame, str]:
    """Rows with columns text, label, row (+ any other columns), and a sha256 of the input."""
    if corpora.is_builtin(cfg.source):
        frame, path = corpora.load_builtin(cfg.source)
        return frame, file_sha256(path)
    path = Path(cfg.source).expanduser()
    frame = read_table(path, cfg.encoding)
    frame = _pick_columns(frame, cfg, path)
    return frame, file_sha256(path)


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
