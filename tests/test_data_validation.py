"""One test per class of bad input: each asserts the message names file, row and field."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ftops import data
from ftops.errors import DataError

from conftest import sentiment_rows, write_csv


def nothing_written(cfg) -> bool:
    root = cfg.resolved().project.dir / "data"
    return not root.exists() or not any(p for p in root.iterdir() if not p.name.startswith(".tmp"))


def test_missing_column_lists_the_columns_found(tmp_path, project):
    path = write_csv(tmp_path / "d.csv", sentiment_rows(), header=("body", "label"))
    cfg = project(source=str(path))
    with pytest.raises(DataError) as exc:
        data.prepare(cfg)
    assert f"{path}: no text column 'text'" in str(exc.value)
    assert "Columns found: body, label" in str(exc.value)
    assert nothing_written(cfg)


def test_empty_text_names_the_row(tmp_path, project):
    rows = sentiment_rows()
    rows[4] = ("   ", "neg")
    path = write_csv(tmp_path / "d.csv", rows)
    with pytest.raises(DataError, match=rf"{path}: row 5: field 'text': empty"):
        data.prepare(project(source=str(path)))


def test_non_text_value_in_jsonl_names_the_row(tmp_path, project):
    path = tmp_path / "d.jsonl"
    records = [{"text": t, "label": l} for t, l in sentiment_rows()]
    records[2]["text"] = 42
    path.write_text("\n".join(json.dumps(r) for r in records))
    with pytest.raises(DataError, match=r"row 3: field 'text': not text"):
        data.prepare(project(source=str(path)))


def test_empty_label_names_the_row(tmp_path, project):
    rows = sentiment_rows()
    rows[9] = ("a perfectly fine text", "")
    path = write_csv(tmp_path / "d.csv", rows)
    with pytest.raises(DataError, match=r"row 10: field 'label': empty"):
        data.prepare(project(source=str(path)))


def test_label_outside_the_label_set_shows_what_was_found(tmp_path, project):
    rows = sentiment_rows() + [("typo in the label", "postive")]
    path = write_csv(tmp_path / "d.csv", rows)
    with pytest.raises(DataError) as exc:
        data.prepare(project(source=str(path), labels=["neg", "pos"]))
    assert "row 41: field 'label': value not one of neg, pos (data.labels)" in str(exc.value)
    assert "'postive'" in str(exc.value)


def test_too_few_rows_per_class(tmp_path, project):
    rows = sentiment_rows(20) + [(f"rare example {i}", "rare") for i in range(3)]
    path = write_csv(tmp_path / "d.csv", rows)
    with pytest.raises(DataError, match=r"too few rows per class.*'rare' has 3.*min_rows_per_class is 10"):
        data.prepare(project(source=str(path)))


def test_undecodable_bytes_name_line_and_byte(tmp_path, project):
    path = tmp_path / "d.csv"
    body = "text,label\n" + "".join(f"{t},{l}\n" for t, l in sentiment_rows())
    raw = body.encode() + b"caf\xe9 au lait,neg\n"
    path.write_bytes(raw)
    with pytest.raises(DataError) as exc:
        data.prepare(project(source=str(path)))
    assert f"{path}, line 42 (byte {len(body.encode()) + 3})" in str(exc.value)
    assert "not valid utf-8" in str(exc.value) and "data.encoding" in str(exc.value)
    # ...and the same file reads once the encoding is declared.
    snapshot = data.prepare(project(source=str(path), encoding="latin-1"))
    assert "café au lait" in set(pd.concat(snapshot.split(s) for s in data.SPLITS)["text"])


def test_invalid_jsonl_line(tmp_path, project):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", label: "y"}\n')
    with pytest.raises(DataError, match=r"d.jsonl, line 2: invalid JSON"):
        data.prepare(project(source=str(path)))


def test_unsupported_file_type(tmp_path, project):
    path = tmp_path / "d.xlsx"
    path.write_text("x")
    with pytest.raises(DataError, match=r"unsupported file type '.xlsx'"):
        data.prepare(project(source=str(path)))


def test_on_invalid_drop_counts_instead_of_failing(tmp_path, project):
    rows = sentiment_rows() + [("", "neg"), ("no label here", ""), ("odd", "other")]
    path = write_csv(tmp_path / "d.csv", rows)
    snapshot = data.prepare(project(source=str(path), labels=["neg", "pos"], on_invalid="drop"))
    assert snapshot.report.dropped == {"text is empty": 1, "label is empty": 1,
                                       "label not in data.labels": 1}
    assert snapshot.report.examples["label not in data.labels"] == [43]
    assert sum(snapshot.counts.values()) == 40


def test_parquet_with_numeric_labels(tmp_path, project):
    frame = pd.DataFrame({"review": [t for t, _ in sentiment_rows()],
                          "stars": [0] * 20 + [1] * 20, "meta": [{"a": 1}] * 40})
    path = tmp_path / "d.parquet"
    frame.to_parquet(path)
    snapshot = data.prepare(project(source=str(path), text_column="review", label_column="stars"))
    assert snapshot.labels == ["0", "1"]
    assert set(snapshot.split("train").columns) >= {"row", "text", "label", "meta", "augmented"}


def test_cli_prints_one_paragraph_and_exits_2_without_traceback(tmp_path):
    rows = sentiment_rows()
    rows[0] = ("", "neg")
    path = write_csv(tmp_path / "d.csv", rows)
    done = subprocess.run([sys.executable, "-m", "ftops", "data", "prepare", "--data", str(path),
                           "--project-dir", str(tmp_path / "p")], capture_output=True, text=True)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "row 1: field 'text': empty" in done.stderr
    assert not (tmp_path / "p" / "data").exists()


def test_cli_help_documents_every_option():
    done = subprocess.run([sys.executable, "-m", "ftops", "data", "prepare", "--help"],
                          capture_output=True, text=True, env={"COLUMNS": "200", "PATH": ""})
    assert done.returncode == 0
    for option in ["--data", "--text-column", "--label-column", "--labels", "--encoding",
                   "--on-invalid", "--max-rows", "--validation-size", "--test-size", "--seed",
                   "--augment", "--project-dir", "--config"]:
        assert option in done.stdout, option


# ---------------------------------------------------------------- refused before anything is written


def test_header_only_file_is_refused(tmp_path, project):
    path = write_csv(tmp_path / "d.csv", [])
    cfg = project(source=str(path))
    with pytest.raises(DataError, match=rf"{path}: no rows left after cleaning \(0 read"):
        data.prepare(cfg)
    assert nothing_written(cfg)


def test_rows_that_all_clean_away_are_refused_with_the_reasons(tmp_path, project):
    path = write_csv(tmp_path / "d.csv", [("", "neg"), ("x", "pos")])
    cfg = project(source=str(path), on_invalid="drop", min_chars=3)
    with pytest.raises(DataError, match=r"no rows left after cleaning \(2 read; text is empty: 1; shorter than 3"):
        data.prepare(cfg)
    assert nothing_written(cfg)


def test_a_single_label_is_refused(tmp_path, project):
    path = write_csv(tmp_path / "d.csv", sentiment_rows(30, labels=("neg",)))
    cfg = project(source=str(path))
    with pytest.raises(DataError, match=rf"{path}: only one label occurs \('neg', 30 rows\).*at least two"):
        data.prepare(cfg)
    assert nothing_written(cfg)


def test_a_single_label_names_the_absent_configured_ones(tmp_path, project):
    path = write_csv(tmp_path / "d.csv", sentiment_rows(30, labels=("neg",)))
    cfg = project(source=str(path), labels=["neg", "neu", "pos"])
    with pytest.raises(DataError, match=r"only one label occurs \('neg', 30 rows; absent: neu, pos\)"):
        data.prepare(cfg)
    assert nothing_written(cfg)


def test_an_absent_configured_label_counts_as_zero(tmp_path, project):
    path = write_csv(tmp_path / "d.csv", sentiment_rows(20))
    cfg = project(source=str(path), labels=["neg", "neu", "pos"])
    with pytest.raises(DataError, match=rf"{path}: too few rows per class.*'neu' has 0.*data.absent_labels: allow"):
        data.prepare(cfg)
    assert nothing_written(cfg)
    snapshot = data.prepare(project(source=str(path), labels=["neg", "neu", "pos"], absent_labels="allow"))
    assert snapshot.labels == ["neg", "neu", "pos"] and "neu" not in snapshot.label_counts["train"]


def test_a_configured_label_under_the_minimum_is_refused(tmp_path, project):
    path = write_csv(tmp_path / "d.csv", sentiment_rows(20) + [(f"neutral words {i}", "neu") for i in range(4)])
    cfg = project(source=str(path), labels=["neg", "neu", "pos"], absent_labels="allow")
    with pytest.raises(DataError, match=r"too few rows per class after cleaning \('neu' has 4\)"):
        data.prepare(cfg)
    assert nothing_written(cfg)


def test_an_empty_split_is_refused(project):
    rows = pd.DataFrame({"text": [t for t, _ in sentiment_rows()], "label": [l for _, l in sentiment_rows()],
                         "split_hint": "train"})
    cfg = project(labels=None)
    with pytest.raises(DataError, match=r"hinted rows: the validation and test split would be empty \(train 40"):
        data.prepare(cfg, rows, origin="hinted rows")
    assert nothing_written(cfg)


def test_a_split_too_small_to_stratify_is_refused(project):
    rows = pd.DataFrame({"text": [f"text {i}" for i in range(6)], "label": ["a", "b"] * 3})
    cfg = project(labels=None, min_rows_per_class=1)
    with pytest.raises(DataError, match=r"tiny: cannot split 6 rows into train / validation / test"):
        data.prepare(cfg, rows, origin="tiny")
    assert nothing_written(cfg)


def test_cli_refuses_a_header_only_file(tmp_path):
    path = write_csv(tmp_path / "d.csv", [])
    done = subprocess.run([sys.executable, "-m", "ftops", "data", "prepare", "--data", str(path),
                           "--project-dir", str(tmp_path / "p")], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "no rows left after cleaning" in done.stderr
    assert not (tmp_path / "p" / "data").exists()
