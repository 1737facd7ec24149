"""Champion / challenger A/B on the same held-out rows, recorded and acted on.

Wiring between trained models (local folders or registry versions), the pure statistics
of ftops.evaluate and the registry: predict both models on the same snapshot's test
split, compare, time both at batch 1, write the decision (JSON + Markdown) to MLflow and
the project folder, tag the version, and promote on "promote".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from ftops import evaluate, registry, strategies
from ftops.artifacts.batches import batched_forward
from ftops.config import Config
from ftops.errors import FtopsError
from ftops.names import BASELINE_FILE
from ftops.train.baseline import BaselineModel, is_baseline, load_baseline

LATENCY_TEXTS = 200


@dataclass
class ModelRef:
    """A model the A/B can load: a registry version or a trained candidate folder."""

    label: str            # how the user named it (champion, v3, a path)
    folder: Path          # holds model/ (ftops.train layout)
    version: str | None   # registry version, when it is one


def resolve(config: Config, ref: str) -> ModelRef:
    """`champion` / `challenger` / `previous`, `3` / `v3`, or a trained candidate folder."""
    path = Path(ref).expanduser()
    if (path / "model" / "ftops.json").is_file() or is_baseline(path):
        return ModelRef(ref, path, None)
    if (path / "ftops.json").is_file():
        return ModelRef(ref, path.parent, None)
    if ref in registry.ALIASES or ref.removeprefix("v").isdigit():
        version = registry.get(config, ref)
        return ModelRef(ref, registry.download(config, version.version), version.version)
    raise FtopsError(f"Cannot find model '{ref}': not a registry alias ({', '.join(registry.ALIASES)}), "
                     "not a version number, and not a trained candidate folder (with model/ftops.json).")


def load(ref: ModelRef):
    """(model, tokenizer, labels); a TF-IDF baseline comes back as (BaselineModel, None, labels)."""
    from ftops.artifacts.candidate import load_trained

    if is_baseline(ref.folder):
        baseline = load_baseline(ref.folder)
        return baseline, None, baseline.labels
    model, tokenizer, labels = load_trained(ref.folder)
    model = strategies.holding(model).merge(model)  # faster inference; same function
    return model.eval(), tokenizer, labels


def predict(model, tokenizer, labels: list[str], frame: pd.DataFrame, max_length: int,
            batch_size: int = 64) -> evaluate.Predictions:
    """Softmax probabilities in fp32, batches sorted by length (less padding, same result);
    a baseline's (tokenizer None) are scikit-learn's own."""
    import torch

    label2id = {label: i for i, label in enumerate(labels)}
    y_true = frame["label"].map(label2id).to_numpy()
    if tokenizer is None:
        probs = model.probs(list(frame["text"])).astype(np.float64)
        return evaluate.Predictions(labels, y_true, probs, frame.reset_index(drop=True))

    def forward(chunk: list[str]) -> np.ndarray:
        batch = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return torch.softmax(model(**batch).logits.float(), dim=-1).numpy()

    with torch.inference_mode():
        probs = batched_forward(list(frame["text"]), batch_size, forward, dtype=np.float64, columns=len(labels))
    return evaluate.Predictions(labels, y_true, probs, frame.reset_index(drop=True))


def latency(models: dict[str, tuple], texts: list[str], max_length: int) -> dict[str, dict[str, float]]:
    """Batch-1 p50/p99 in ms of each model on the same texts, interleaved so that machine
    noise hits every model alike."""
    import torch

    from ftops.artifacts import timing

    def runner(model, tokenizer):
        if tokenizer is None:
            return lambda text: model.probs([text])
        return lambda text: model(**tokenizer([text], truncation=True, max_length=max_length, return_tensors="pt"))

    runners = {name: runner(model, tokenizer) for name, (model, tokenizer) in models.items()}
    with torch.inference_mode():
        seconds = timing.interleaved(runners, texts, warmup=5)
    return {name: {**timing.percentiles_ms(s), "n": len(s),
                   "runtime": "pytorch" if models[name][1] is not None else "scikit-learn"}
            for name, s in seconds.items()}


def size(model) -> float:
    """Parameters: a transformer's weights, a baseline's coefficients."""
    if isinstance(model, BaselineModel):
        return float(model.n_params)
    return float(sum(w.numel() for w in model.parameters()))


def baseline_predictions(snapshot, frame: pd.DataFrame) -> evaluate.Predictions:
    from ftops.train import fit_baseline

    baseline = BaselineModel(fit_baseline(snapshot).pipeline, snapshot.labels)
    return predict(baseline, None, snapshot.labels, frame, max_length=0)


def compare_refs(config: Config, snapshot, challenger: ModelRef, champion: ModelRef | None,
                 protected: list[str] | None = None, with_baseline: bool = True) -> evaluate.Decision:
    """Both models (and the baseline) on the snapshot's test split; batch-1 latency of both."""
    test = snapshot.split("test")
    max_length = config.model.max_length
    loaded = {"challenger": load(challenger)}
    if champion is not None:
        loaded["champion"] = load(champion)
    for name, (_, _, labels) in loaded.items():
        if labels != snapshot.labels:
            raise FtopsError(f"The {name} predicts labels {labels} but snapshot {snapshot.id} has "
                             f"{snapshot.labels}: they cannot be compared on the same rows.")
    preds = {name: predict(m, t, l, test, max_length) for name, (m, t, l) in loaded.items()}
    base = baseline_predictions(snapshot, test) if with_baseline else None
    texts = list(test["text"].sample(n=min(LATENCY_TEXTS, len(test)), random_state=0))
    timed = latency({n: (m, t) for n, (m, t, _) in loaded.items()}, texts, max_length)
    decision = evaluate.compare(preds["challenger"], preds.get("champion"), config.gates,
                                protected=protected, baseline=base,
                                costs={name: {"p50_ms": timed[name]["p50_ms"], "params": size(model)}
                                       for name, (model, _, _) in loaded.items()})
    decision.context.update({
        "snapshot": snapshot.id,
        "challenger": challenger.version or str(challenger.folder),
        "champion": None if champion is None else champion.version or str(champion.folder),
        "latency_batch1": timed,
    })
    return decision


def record(config: Config, decision: evaluate.Decision, run_id: str | None = None,
           version: str | None = None) -> Path:
    """Write decision.json + decision.md under the project and, when known, to the
    challenger's MLflow run and registry version."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    folder = config.resolved().project.dir / "decisions" / stamp
    decision.write(folder)
    if run_id is not None:
        client = registry.client(config)
        client.log_artifact(run_id, str(folder / "decision.json"), "decision")
        client.log_artifact(run_id, str(folder / "decision.md"), "decision")
        client.set_tag(run_id, registry.TAG_DECISION, decision.outcome)
    if version is not None:
        registry.tag_decision(config, version, decision.outcome, decision.summary)
    return folder


def decide(config: Config, snapshot, run_id: str, protected: list[str] | None = None,
           promote: bool = True) -> tuple[evaluate.Decision, registry.Version]:
    """Register a candidate run as the challenger, A/B it against the champion (or, for the
    first model, the baseline) and record the decision. With promote=False the caller moves
    the alias later (after the serving gates)."""
    version = registry.register(config, run_id)
    registry.set_alias(config, registry.CHALLENGER, version.version)
    challenger = ModelRef(f"v{version.version}", registry.download(config, version.version), version.version)
    current = registry.find(config, registry.CHAMPION)
    champion = None if current is None else ModelRef("champion", registry.download(config, current.version), current.version)
    decision = compare_refs(config, snapshot, challenger, champion, protected)
    decision.context["tuned"] = tuning_lineage(config, run_id)
    record(config, decision, run_id, version.version)
    if promote and decision.outcome == "promote":
        version = registry.promote(config, version.version)
    return decision, version


def serve_baseline(config: Config, rejected: evaluate.Decision, candidate: registry.Version,
                   baseline_run_id: str | None) -> tuple[evaluate.Decision, registry.Version] | None:
    """No champion, and the best candidate lost the baseline rule (not better than the TF-IDF
    baseline, or not significantly: gates.baseline_serves): register the round's baseline as
    the challenger instead, so the lifecycle still ends with the best model it found serving.
    None when that does not apply."""
    decision = evaluate.baseline_serves(rejected, f"v{candidate.version}")
    if decision is None or config.gates.baseline_serves == "never" or baseline_run_id is None:
        return None
    logged = {f.path for f in registry.client(config).list_artifacts(baseline_run_id, "model")}
    if f"model/{BASELINE_FILE}" not in logged:
        raise FtopsError(f"The baseline run {baseline_run_id} has no model/{BASELINE_FILE} (a round of an older "
                         "ftops): it cannot be served. Train a new round, or set gates.baseline_serves: never.")
    version = registry.register(config, baseline_run_id)
    registry.set_alias(config, registry.CHALLENGER, version.version)
    record(config, decision, baseline_run_id, version.version)
    return decision, version


def tuning_lineage(config: Config, run_id: str) -> dict[str, str] | None:
    """Where the candidate's settings came from: the tuning study and trial its run is
    tagged with (`ftops tune`), or None for settings taken as configured."""
    tags = registry.client(config).get_run(run_id).data.tags
    tuned = {key.removeprefix("ftops."): value for key, value in tags.items() if key.startswith("ftops.tuned")}
    return tuned or None
