import pandas as pd

from ftops import data
from ftops.config import DataSection
from ftops.data import cleaning


def frame(texts, labels=None):
    labels = labels or ["a"] * len(texts)
    return pd.DataFrame({"row": range(1, len(texts) + 1), "text": texts, "label": labels})


def test_clean_text_normalises_unicode_controls_and_whitespace():
    assert cleaning.clean_text("ﬁne\u00a0ＡＢＣ") == "fine ABC"          # NFKC: ligature, NBSP, fullwidth
    assert cleaning.clean_text("a\x00b\u200bc\td\n\ne ") == "a b c d e"  # control, zero-width, whitespace
    assert cleaning.clean_text("\ufeff  \x07 ") == ""


def test_exact_duplicates_keep_the_first_row():
    report = data.CleaningReport()
    out = cleaning.clean(frame(["same text", "same text", "Same text!"]), DataSection(dedup="exact"), report)
    assert list(out["row"]) == [1, 3]
    assert report.dropped == {"duplicate (exact)": 1}


def test_normalised_duplicates_ignore_case_punctuation_and_spacing():
    report = data.CleaningReport()
    out = cleaning.clean(frame(["Great flight!!", "great   flight", "GREAT, flight.", "bad flight"]),
                     DataSection(dedup="normalized"), report)
    assert list(out["row"]) == [1, 4]
    assert report.dropped == {"duplicate (normalized)": 2}
    assert report.examples["duplicate (normalized)"] == [2, 3]


def test_conflicting_labels_drop_every_copy():
    report = data.CleaningReport()
    out = cleaning.clean(frame(["ok then", "OK then", "fine"], ["pos", "neg", "pos"]),
                     DataSection(dedup="normalized"), report)
    assert list(out["row"]) == [3]
    assert report.dropped == {"duplicate text with conflicting labels": 2}


def test_length_limits_drop_short_and_truncate_long():
    report = data.CleaningReport()
    out = cleaning.clean(frame(["hi", "a fine text", "x" * 50]),
                     DataSection(min_chars=3, max_chars=20, dedup="none"), report)
    assert list(out["row"]) == [2, 3]
    assert out["text"].str.len().max() == 20
    assert report.dropped == {"shorter than 3 chars": 1}
    assert report.truncated == 1


def test_text_that_is_only_noise_is_dropped_as_empty():
    report = data.CleaningReport()
    out = cleaning.clean(frame(["\u200b\u200b", "real words"]), DataSection(), report)
    assert list(out["row"]) == [2]
    assert report.dropped == {"empty after cleaning": 1}


def test_dedup_none_keeps_duplicates():
    report = data.CleaningReport()
    out = cleaning.clean(frame(["same", "same"]), DataSection(dedup="none"), report)
    assert len(out) == 2 and report.dropped == {}


def sourced(texts, labels, sources):
    return frame(texts, labels).assign(source=sources)


def test_feedback_contradicting_a_curated_row_loses_and_is_counted():
    report = data.CleaningReport()
    rows = sourced(["Great flight!", "great flight", "GREAT flight", "bad seat"],
                   ["pos", "neg", "neg", "neg"], ["feedback", "original", "feedback", "original"])
    out = cleaning.clean(rows, DataSection(dedup="normalized"), report)
    # the curated row (2) is kept although it comes after the feedback rows; the contradicting
    # feedback row (1) is dropped and counted; the agreeing one (3) is an ordinary duplicate
    assert list(out["row"]) == [2, 4]
    assert report.dropped == {"feedback contradicting a curated row": 1, "duplicate (normalized)": 1}


def test_conflicts_among_feedback_alone_drop_those_copies():
    report = data.CleaningReport()
    rows = sourced(["ok then", "OK then", "fine", "fine!"], ["pos", "neg", "pos", "pos"],
                   ["feedback", "feedback", "original", "feedback"])
    out = cleaning.clean(rows, DataSection(dedup="normalized"), report)
    assert list(out["row"]) == [3]
    assert report.dropped == {"duplicate text with conflicting labels": 2, "duplicate (normalized)": 1}
