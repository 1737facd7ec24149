"""Domain adaptation and auxiliary tasks: extra heads trained beside the classifier."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from ftops import adapt, strategies
from ftops.config import AdaptationSection, CandidateSection, Config, TaskSection
from ftops.errors import ConfigError, DataError
from ftops.train.dataset import DOMAIN_KEY, Encoded, TASK_PREFIX


def task_vocab(frame: pd.DataFrame, tasks: list[TaskSection], candidate: str) -> dict[str, tuple[str, list[str]]]:
    """{task: (column, its classes)} from the training rows; a missing column is a ConfigError."""
    out = {}
    for task in tasks:
        if task.column not in frame:
            have = ", ".join(c for c in frame.columns if c not in ("row", "text", "label"))
            raise ConfigError(f"Candidate '{candidate}': task '{task.name}' reads column '{task.column}', "
                              f"which the data snapshot does not have (it has: {have or 'no extra columns'}).")
        vocab = sorted(frame[task.column].dropna().astype(str).unique())
        if len(vocab) < 2:
            raise ConfigError(f"Candidate '{candidate}': task '{task.name}' needs at least 2 classes in "
                              f"column '{task.column}'; the training rows have {vocab}.")
        out[task.name] = (task.column, vocab)
    return out


def target_texts(config: Config, section: AdaptationSection) -> list[str]:
    """Unlabelled target-domain texts: the prediction log's latest rows, or a data source
    (its labels are not used)."""
    if section.target == "traffic":
        from ftops import predlog

        url = config.resolved().uris.prediction_log
        texts = predlog.read(predlog.engine(url), last=section.max_target_rows)["text"].dropna().tolist()
        where = f"the prediction log ({url})"
    else:
        from ftops import data

        frame, _ = data.read_source(config.data.model_copy(update={"source": section.target}))
        texts = frame["text"].dropna().astype(str).tolist()
        texts = pd.Series(texts).sample(n=min(len(texts), section.max_target_rows), random_state=config.data.seed).tolist()
        where = f"data source {section.target}"
    if len(texts) < 10:
        raise DataError(f"Domain adaptation needs unlabelled target texts; {where} has {len(texts)}. "
                        "Serve traffic first, or set adaptation.target to a data source.")
    return texts


class Extras(torch.nn.Module):
    """What a candidate trains beside its primary head, on the head's own input features:
    a DANN domain classifier and / or auxiliary task heads. Attached to the model while
    training (so the optimizer and DDP see it) and taken off before saving."""

    def __init__(self, model: torch.nn.Module, adaptation: AdaptationSection | None,
                 tasks: list[TaskSection], vocab: dict[str, tuple[str, list[str]]]):
        super().__init__()
        hidden = model.config.hidden_size
        self.adaptation, self.weights = adaptation, {t.name: t.weight for t in tasks}
        self.vocab = vocab
        self.domain = (adapt.DomainClassifier(hidden, adaptation.domain_hidden)
                       if adaptation is not None and adaptation.method == "dann" else None)
        self.tasks = adapt.TaskHeads(hidden, {n: len(v) for n, (_, v) in vocab.items()}) if vocab else None
        self.features = adapt.PooledFeatures(model)

    def loss(self, side: dict[str, torch.Tensor], progress: float) -> dict[str, torch.Tensor]:
        """The extra loss terms of one training batch (the primary loss is the caller's)."""
        # The hook saw the head's input in the autocast dtype (bf16 on CPUs that have it), but
        # the loss runs outside the model's autocast: the small extra heads compute in fp32.
        features, terms = self.features.features.float(), {}
        section = self.adaptation
        if section is not None:
            domain = side[DOMAIN_KEY]
            weight = adapt.reversal_weight(progress, section.weight, section.schedule)
            if self.domain is not None:
                terms["dann"] = adapt.dann_loss(self.domain(features, weight), domain)
            else:
                terms[section.method] = weight * adapt.alignment_loss(
                    section.method, features[domain == 0].float(), features[domain == 1].float())
        if self.tasks is not None:
            labels = {name: side[TASK_PREFIX + name] for name in self.weights}
            terms["tasks"], per_task = adapt.multitask_loss(self.tasks(features), labels, self.weights)
            terms.update({f"task_{name}": value.detach() for name, value in per_task.items()})
        return terms

    @torch.no_grad()
    def task_metrics(self, model, dataset: Encoded, collator, batch_size: int = 64) -> dict[str, dict[str, float]]:
        """Each auxiliary head's accuracy and macro-F1 on a labelled split."""
        if self.tasks is None:
            return {}
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        logits: dict[str, list] = {n: [] for n in self.weights}
        gold: dict[str, list] = {n: [] for n in self.weights}
        for start in range(0, len(dataset), batch_size):
            batch = collator(dataset.rows[start:start + batch_size])
            side = {k: batch.pop(k) for k in list(batch) if k.startswith(TASK_PREFIX) or k == DOMAIN_KEY}
            batch.pop("labels")
            model(**{k: v.to(device) for k, v in batch.items()})
            for name, out in self.tasks(self.features.features.float()).items():
                logits[name].append(out.float().cpu())
                gold[name].append(side[TASK_PREFIX + name])
        model.train(was_training)
        return {n: adapt.task_metrics(torch.cat(logits[n]), torch.cat(gold[n])) for n in self.weights}

    def save(self, folder: Path) -> None:
        """Auxiliary heads beside the primary model (export and serving use the primary)."""
        if self.tasks is None:
            return
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.tasks.state_dict().items()}, folder / "task_heads.safetensors")
        (folder / "tasks.json").write_text(json.dumps(
            {n: {"column": c, "classes": v, "weight": self.weights[n]} for n, (c, v) in self.vocab.items()}, indent=2))


def attach_extras(prepared: strategies.Prepared, candidate: CandidateSection,
                  vocab: dict[str, tuple[str, list[str]]]) -> Extras | None:
    """The candidate's extra heads, as a submodule of the model while it trains (so the
    optimizer and DDP see them), or None without adaptation or tasks."""
    if candidate.adaptation is None and not candidate.tasks:
        return None
    extras = Extras(prepared.model, candidate.adaptation, candidate.tasks, vocab)
    prepared.model.ftops_extras = extras
    prepared.param_groups += strategies.decay_groups(list(extras.named_parameters()), candidate.learning_rate,
                                                     candidate.weight_decay, "extras")
    return extras


def with_target_rows(train_frame: pd.DataFrame, texts: list[str]) -> pd.DataFrame:
    """Labelled source rows (domain 0) + unlabelled target texts (domain 1, no label)."""
    return pd.concat([train_frame.assign(**{DOMAIN_KEY: 0}), pd.DataFrame({"text": texts, DOMAIN_KEY: 1})],
                     ignore_index=True)


def describe_extras(candidate: CandidateSection) -> str:
    parts = []
    if candidate.adaptation is not None:
        a = candidate.adaptation
        parts.append(f"{a.method} w{a.weight:g} ({a.target})")
    parts += [f"+{t.name}" for t in candidate.tasks]
    return " ".join(parts)
