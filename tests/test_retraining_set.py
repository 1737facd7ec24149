"""The retraining set: labelled traffic trains the next model but never decides its gate,
never erases curated rows, and no single sender makes up more than its share."""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from ftops import data, evaluate
from ftops.config import Config, GatesSection
from ftops.data import splitting
from ftops.data.feedback import feedback_split, sender_allowance

LABELS = ["neg", "neu", "pos"]


@pytest.fixture
def settings(tmp_path):
    """A Config for the project under tmp_path; `feedback` keys as keywords."""

    def make(**feedback) -> Config:
        return Config.model_validate({"project": {"name": "shop", "dir": str(tmp_path / "proj")},
                                      "data": {"labels": LABELS, "min_chars": 3}, "feedback": feedback})

    return make


@pytest.fixture
def champion(settings):
    """The champion's snapshot: 60 curated rows per label."""
    rows = pd.DataFrame({"text": [f"curated {label} text number {i}" for label in LABELS for i in range(60)],
                         "label": [label for label in LABELS for _ in range(60)]})
    return data.prepare(settings(), rows, origin="curated")


def labelled(texts, labels, sender="anonymous", start="2025-01-01", prefix="r"):
    """Rows as predlog.labelled returns them (oldest first)."""
    n = len(texts)
    return pd.DataFrame({"request_id": [f"{prefix}-{sender}-{i}" for i in range(n)], "text": list(texts),
                         "label": list(labels), "sender": [sender] * n,
                         "ts": pd.date_range(start, periods=n, freq="min", tz="UTC")})


def traffic(n, sender="anonymous", start="2025-01-01"):
    return labelled([f"new domain {sender} words {i}" for i in range(n)],
                    [LABELS[i % 3] for i in range(n)], sender, start, prefix=start)


def retrain(config, old, feedback):
    return data.prepare(config, data.retraining_frame(old, feedback, config), origin="retrain")


def every_row(snapshot):
    return pd.concat([snapshot.split(s).assign(split=s) for s in data.SPLITS], ignore_index=True)


# ---------------------------------------------------------------- feedback never decides the gate


def test_the_split_of_a_request_id_is_a_salted_deterministic_hash():
    ids = [f"req-{i}" for i in range(20000)]
    splits = [feedback_split(r, "shop", 0.2, 0.15 / 0.85) for r in ids]
    shares = pd.Series(splits).value_counts(normalize=True)
    assert abs(shares["test"] - 0.2) < 0.01
    assert abs(shares["validation"] - 0.8 * 0.15 / 0.85) < 0.01
    assert splits == [feedback_split(r, "shop", 0.2, 0.15 / 0.85) for r in ids]
    other = [feedback_split(r, "another-project", 0.2, 0.15 / 0.85) for r in ids]
    assert np.mean(np.array(other) != np.array(splits)) > 0.3  # the salt changes which rows
    assert "test" not in {feedback_split(r, "shop", 0.0, 0.15 / 0.85) for r in ids[:500]}


def test_the_caller_cannot_choose_split_or_source(settings, champion):
    config = settings(max_sender_share=0.9)
    feedback = traffic(300).assign(split_hint="test", source="original")  # a caller's wishes
    frame = data.retraining_frame(champion, feedback, config)
    new = frame[frame["source"] == "feedback"]
    assert len(new) == 300
    expected = [feedback_split(r, "shop", 0.2, 0.15 / 0.85) for r in feedback["request_id"]]
    assert list(new["split_hint"]) == expected
    shuffled = data.retraining_frame(champion, feedback.sample(frac=1.0, random_state=1), config)
    by_id = shuffled[shuffled["source"] == "feedback"].set_index("request_id")["split_hint"]
    assert by_id.to_dict() == dict(zip(feedback["request_id"], expected))  # order does not matter


def test_held_out_feedback_is_tested_on_and_never_trained_on(settings, champion):
    config = settings(max_sender_share=0.9)
    feedback = traffic(600)
    snapshot = retrain(config, champion, feedback)
    rows = every_row(snapshot)
    fed = rows[rows["source"] == "feedback"]
    expected = {t: feedback_split(r, "shop", 0.2, 0.15 / 0.85)
                for r, t in zip(feedback["request_id"], feedback["text"])}
    assert dict(zip(fed["text"], fed["split"])) == expected
    assert 0.15 < (fed["split"] == "test").mean() < 0.25
    test_texts = set(fed.loc[fed["split"] == "test", "text"])
    assert not test_texts & set(rows.loc[rows["split"] != "test", "text"])
    assert snapshot.source_counts["test"] == {"original": champion.counts["test"],
                                              "feedback": len(test_texts)}
    manifest = json.loads((snapshot.path / "manifest.json").read_text())
    assert manifest["source_counts"] == snapshot.source_counts
    for name in data.SPLITS:  # curated rows keep the champion's splits
        assert set(champion.split(name)["text"]) == set(rows.loc[(rows["split"] == name)
                                                                 & (rows["source"] == "original"), "text"])


def test_one_feedback_row_of_a_class_trains_and_is_reported(settings, champion):
    config = settings(max_sender_share=0.9)
    lone = next(f"lone{i}" for i in range(1000)
                if feedback_split(f"lone{i}-anonymous-0", "shop", 0.2, 0.15 / 0.85) == "test")
    feedback = pd.concat([traffic(60).query("label != 'neu'"),
                          labelled(["the only neutral one"], ["neu"], prefix=lone)])
    snapshot = retrain(config, champion, feedback)
    rows = every_row(snapshot)
    assert rows.loc[rows["text"] == "the only neutral one", "split"].tolist() == ["train"]  # its hash said test
    assert snapshot.report.kept_in_train == {"neu": 1}


def test_a_stratified_split_keeps_labels_too_small_to_stratify_in_train():
    frame = pd.DataFrame({"row": range(1, 43), "text": [f"t {i}" for i in range(42)],
                          "label": ["a"] * 20 + ["b"] * 20 + ["c"] * 2})
    frame["split_hint"] = None
    frame.loc[frame["label"] == "c", "split_hint"] = [None, "test"]
    report = data.CleaningReport()
    parts = splitting.split(frame, Config().data, report)
    assert list(parts["train"].query("label == 'c'")["row"]) == [41]
    assert list(parts["test"].query("label == 'c'")["row"]) == [42]
    assert report.kept_in_train == {"c": 1}


# ---------------------------------------------------------------- curated rows win


def test_crafted_feedback_cannot_delete_a_curated_row(settings, champion):
    config = settings(max_sender_share=0.9)
    curated = every_row(champion)
    flipped = curated["label"].map({"neg": "pos", "neu": "neg", "pos": "neu"})
    attack = labelled(curated["text"].str.upper() + "!!", flipped, sender="mallory")  # same normalized text
    snapshot = retrain(config, champion, pd.concat([attack, traffic(90)], ignore_index=True))
    rows = every_row(snapshot)
    kept = rows[rows["source"] == "original"]
    assert len(kept) == len(curated)
    assert dict(zip(kept["text"], kept["label"])) == dict(zip(curated["text"], curated["label"]))
    assert snapshot.report.dropped["feedback contradicting a curated row"] == len(curated)
    assert not rows["text"].str.endswith("!!").any()
    assert snapshot.report.senders["mallory"] == {"offered": len(curated), "kept": 0}


# ---------------------------------------------------------------- one sender's share is capped


def test_one_sender_is_capped_and_its_newest_rows_are_left_out(settings, champion):
    config = settings(max_sender_share=0.05)
    flood, few = traffic(200, sender="mallory"), traffic(5, sender="alice", start="2025-02-01")
    snapshot = retrain(config, champion, pd.concat([flood, few], ignore_index=True))
    rows = every_row(snapshot)
    total = len(rows)
    assert snapshot.report.senders == {"mallory": {"offered": 200, "kept": 9},
                                       "alice": {"offered": 5, "kept": 5}}
    assert total == 180 + 9 + 5 and 9 <= 0.05 * total < 10  # a share of the set kept, not of what was offered
    kept = set(rows["text"]) & set(flood["text"])
    assert kept == set(flood["text"].head(9))  # the oldest nine
    assert snapshot.report.dropped["feedback beyond one sender's share (feedback.max_sender_share)"] == 191
    manifest = json.loads((snapshot.path / "manifest.json").read_text())
    assert manifest["cleaning"]["senders"] == snapshot.report.senders
    assert not {"sender", "request_id", "ts"} & set(rows.columns)  # summarised, not stored per row


def test_sender_allowance_is_a_share_of_the_kept_set():
    assert sender_allowance(3000, [1290], 0.4) == 1716  # the demo: nothing left out
    cap = sender_allowance(3000, [10**6], 0.005)
    assert cap == 15 and cap <= 0.005 * (3000 + cap)        # flooding does not raise the cap
    cap = sender_allowance(100, [50, 50, 3], 0.2)
    assert cap <= 0.2 * (100 + 2 * cap + 3) < cap + 1


# ---------------------------------------------------------------- the record and the lifecycle


def test_the_decision_records_test_rows_per_source():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=100)
    frame = pd.DataFrame({"row": range(1, 101), "text": ["w"] * 100,
                          "source": ["original"] * 70 + ["feedback"] * 30})
    probs = np.full((100, 3), 0.1)
    probs[np.arange(100), y] = 0.8
    preds = evaluate.Predictions(LABELS, y, probs, frame)
    decision = evaluate.compare(preds, None, GatesSection(), resamples=50)
    assert decision.context["test_rows_by_source"] == {"original": 70, "feedback": 30}
    assert "test_rows_by_source: {'original': 70, 'feedback': 30}" in decision.to_markdown()
    assert json.loads(decision.to_json())["context"]["test_rows_by_source"]["feedback"] == 30


def test_prepare_data_never_fails_on_the_shape_of_traffic(tmp_path, settings, champion, monkeypatch):
    from flows import lifecycle
    from ftops import predlog, registry

    path = tmp_path / "ftops.yaml"
    path.write_text(json.dumps({"project": {"name": "shop", "dir": str(tmp_path / "proj")},
                                "data": {"labels": LABELS, "min_chars": 3, "on_invalid": "error"},
                                "feedback": {"max_sender_share": 0.5}}))
    feedback = pd.concat([traffic(60).query("label != 'neu'"),
                          labelled(["one neutral row"], ["neu"], prefix="b"),
                          labelled(["a label nobody knows"], ["maybe"], prefix="c"),
                          labelled(["   "], ["pos"], prefix="d")], ignore_index=True)
    calls = []
    monkeypatch.setattr(registry, "find", lambda config, alias: SimpleNamespace(
        version="1", tags={"ftops.data_snapshot": champion.id}))
    monkeypatch.setattr(predlog, "engine", lambda url: "engine")
    monkeypatch.setattr(predlog, "labelled", lambda eng, **bounds: calls.append(bounds) or feedback)
    out = lifecycle.prepare_data.fn(str(path))
    assert calls == [{"max_rows": lifecycle.FEEDBACK_WINDOW}]
    assert out["retrain"] and out["parent_version"] == "1" and out["feedback_rows"] == 43
    assert out["senders"] == {"anonymous": {"offered": 43, "kept": 41}}
    assert out["kept_in_train"] == {"neu": 1}
    assert out["dropped"] == {"text is empty": 1, "label not in data.labels": 1}
    assert out["sources"]["test"]["original"] == champion.counts["test"]
    json.dumps(out)  # the run's lineage is JSON
