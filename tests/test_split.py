import json
import random

import pandas as pd
import pytest

from ftops import data
from ftops.config import DataSection, FeedbackSection
from ftops.data import augmentation, splitting
from ftops.errors import DataError

from conftest import write_csv


def labelled(n=1000, shares=(0.6, 0.3, 0.1)):
    rng = random.Random(0)
    labels = rng.choices(["neg", "neu", "pos"], weights=shares, k=n)
    return pd.DataFrame({"row": range(1, n + 1), "text": [f"text {i}" for i in range(n)], "label": labels})


def test_split_is_stratified_disjoint_and_sized():
    frame = labelled()
    parts = splitting.split(frame, DataSection(validation_size=0.15, test_size=0.15))
    rows = [set(p["row"]) for p in parts.values()]
    assert set.union(*rows) == set(frame["row"])
    assert sum(len(r) for r in rows) == len(frame)
    assert abs(len(parts["validation"]) - 150) <= 1 and abs(len(parts["test"]) - 150) <= 1
    overall = frame["label"].value_counts(normalize=True)
    for part in parts.values():
        share = part["label"].value_counts(normalize=True)
        assert (share - overall).abs().max() < 0.01


def test_split_is_deterministic_per_seed():
    frame = labelled()
    a = splitting.split(frame, DataSection(seed=1))
    b = splitting.split(frame, DataSection(seed=1))
    c = splitting.split(frame, DataSection(seed=2))
    assert list(a["test"]["row"]) == list(b["test"]["row"])
    assert list(a["test"]["row"]) != list(c["test"]["row"])


def test_max_rows_is_a_stratified_sample():
    frame = labelled(2000)
    report = data.CleaningReport()
    kept = splitting.subsample(frame, DataSection(max_rows=500), report)
    assert len(kept) == 500 and report.subsampled == 1500
    assert abs(kept["label"].value_counts(normalize=True)["pos"] - frame["label"].value_counts(normalize=True)["pos"]) < 0.01


def test_augmentation_touches_train_only_and_is_seeded(tmp_path, project):
    rows = [(f"the flight number {i} was late again today", "neg") for i in range(30)] + \
           [(f"lovely crew on flight number {i} thanks", "pos") for i in range(30)]
    path = write_csv(tmp_path / "d.csv", rows)
    cfg = project(source=str(path), dedup="none", augment={"enabled": True, "copies": 2})
    snap = data.prepare(cfg)
    train = snap.split("train")
    original = train[~train["augmented"]]
    augmented = train[train["augmented"]]
    assert len(augmented) == 2 * len(original)
    assert (augmented["text"].to_numpy() != pd.concat([original, original])["text"].to_numpy()).mean() > 0.9
    assert "augmented" not in snap.split("test").columns or not snap.split("test")["augmented"].any()
    again = data.prepare(cfg)
    assert again.id == snap.id  # same seed, same content, same snapshot


def test_eda_keeps_words_of_the_text():
    rng = random.Random(3)
    text = "one two three four five six"
    out = augmentation.eda(text, rng, 0.2, 0.2, 0.2)
    assert out != text and set(out.split()) <= set(text.split())


def test_snapshot_manifest_hashes_and_label_map(tmp_path, project):
    rows = [(f"row {i} negative words", "neg") for i in range(40)] + [(f"row {i} positive words", "pos") for i in range(40)]
    cfg = project(source=str(write_csv(tmp_path / "d.csv", rows)), labels=["pos", "neg"])
    snap = data.prepare(cfg)
    manifest = json.loads((snap.path / "manifest.json").read_text())
    assert manifest["id"] == snap.id and len(manifest["sha256"]) == 64
    assert set(manifest["files"]) == {"train.parquet", "validation.parquet", "test.parquet", "labels.json"}
    assert json.loads((snap.path / "labels.json").read_text())["label2id"] == {"pos": 0, "neg": 1}
    assert manifest["counts"] == snap.counts and sum(snap.counts.values()) == 80
    root = snap.path.parent
    assert (root / "LATEST").read_text().strip() == snap.id
    assert data.load_snapshot(root).id == snap.id
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp")]


def test_a_modified_snapshot_is_detected(tmp_path, project):
    rows = [(f"row {i} negative words", "neg") for i in range(40)] + [(f"row {i} positive words", "pos") for i in range(40)]
    snap = data.prepare(project(source=str(write_csv(tmp_path / "d.csv", rows))))
    frame = snap.split("test")
    frame.loc[0, "label"] = "pos" if frame.loc[0, "label"] == "neg" else "neg"
    frame.to_parquet(snap.path / "test.parquet", index=False)
    with pytest.raises(DataError, match="test.parquet does not match its sha256"):
        data.load_snapshot(snap.path.parent, snap.id)


def test_a_failed_prepare_keeps_the_previous_snapshot(tmp_path, project):
    rows = [(f"row {i} negative words", "neg") for i in range(40)] + [(f"row {i} positive words", "pos") for i in range(40)]
    path = write_csv(tmp_path / "d.csv", rows)
    first = data.prepare(project(source=str(path)))
    write_csv(path, rows + [("", "neg")])
    with pytest.raises(DataError):
        data.prepare(project(source=str(path)))
    assert data.load_snapshot(first.path.parent).id == first.id


def test_prepare_accepts_rows_in_memory(project):
    frame = pd.DataFrame({"text": [f"old text {i}" for i in range(40)] + [f"new text {i}" for i in range(40)],
                          "label": ["a", "b"] * 40, "source": ["original"] * 40 + ["feedback"] * 40})
    snap = data.prepare(project(labels=None), frame, origin="retrain: original + feedback")
    manifest = json.loads((snap.path / "manifest.json").read_text())
    assert manifest["source"] == "retrain: original + feedback" and len(manifest["source_sha256"]) == 64
    assert set(snap.split("test")["source"]) == {"original", "feedback"}


def feedback(texts, labels, sender="anonymous"):
    """Rows as predlog.labelled returns them."""
    n = len(texts)
    return pd.DataFrame({"request_id": [f"req-{t}" for t in texts], "text": texts, "label": labels,
                         "ts": pd.date_range("2025-01-01", periods=n, freq="min", tz="UTC"),
                         "sender": [sender] * n})


def test_retraining_frame_keeps_originals_and_tags_sources(tmp_path, project):
    rows = [(f"row {i} negative words", "neg") for i in range(40)] + [(f"row {i} positive words", "pos") for i in range(40)]
    cfg = project(source=str(write_csv(tmp_path / "d.csv", rows)), augment={"enabled": True})
    snap = data.prepare(cfg)
    frame = data.retraining_frame(snap, feedback(["new domain text"], ["pos"]), cfg)
    assert (frame["source"] == "original").sum() == 80  # augmented copies are not training data of record
    assert frame[frame["source"] == "feedback"]["text"].tolist() == ["new domain text"]
    texts = [f"new domain text {i}" for i in range(60)]
    retrain = project(labels=None).model_copy(update={"feedback": FeedbackSection(max_sender_share=0.5)})
    again = data.prepare(retrain, data.retraining_frame(snap, feedback(texts, ["pos", "neg"] * 30), retrain),
                         origin="retrain")
    for name in data.SPLITS:  # the champion's rows stay where they were: no train row is tested on
        old = snap.split(name)
        old_texts = set(old[~old["augmented"].astype(bool)]["text"] if "augmented" in old else old["text"])
        new_part = again.split(name)
        assert old_texts == set(new_part[new_part["source"] == "original"]["text"])
    assert set(again.split("test")["source"]) == {"original", "feedback"}
    assert again.source_counts["test"]["original"] == snap.counts["test"]


def test_retraining_frame_needs_the_labelled_columns(tmp_path, project):
    rows = [(f"row {i} negative words", "neg") for i in range(40)] + [(f"row {i} positive words", "pos") for i in range(40)]
    cfg = project(source=str(write_csv(tmp_path / "d.csv", rows)))
    snap = data.prepare(cfg)
    with pytest.raises(DataError, match=r"lacks column\(s\) request_id, sender"):
        data.retraining_frame(snap, pd.DataFrame({"text": ["x"], "label": ["pos"]}), cfg)
