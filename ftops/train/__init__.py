"""The training stage: one HF Trainer run per candidate, a TF-IDF baseline beside it, and
the retraining aids (distillation from the champion, EWC, rehearsal).

A trained candidate is a folder (ftops.artifacts.candidate): `model/` in the form its
strategy saves, the tokenizer, labels.json, plots and result.json. The modules, in the
order a round runs them: checks, dataset, extras, losses, trainer, candidate, rounds
(baseline and plots beside).
"""

import warnings

from ftops.artifacts.candidate import load_trained, save_trained
from ftops.names import META_FILE, MODEL_DIR
from ftops.train.baseline import BaselineResult, fit_baseline, is_baseline
from ftops.train.candidate import (checkpoints, drop_partial_checkpoints, initial_model, last_checkpoint,
                                   resume_point, train_candidate)
from ftops.train.checks import check_candidates, select_candidates
from ftops.train.dataset import Encoded, rehearsal_mix
from ftops.train.losses import Ewc, class_weights, distillation_loss
from ftops.train.results import RESULT_FILE, RetrainSources, TrainResult, load_result
from ftops.train.rounds import (TAG_FLOW_RUN, ResumeError, RoundResult, find_round, saved_round,
                               train_round)
from ftops.train.trainer import EarlyStopping, FtopsTrainer, cpu_flags, one_class_macro_f1, precision

# peft calls a transformers property that transformers 5 renamed; nothing for us to change.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

__all__ = ["META_FILE", "MODEL_DIR", "RESULT_FILE", "TAG_FLOW_RUN", "BaselineResult", "EarlyStopping", "Encoded",
           "Ewc", "FtopsTrainer", "ResumeError", "RetrainSources", "RoundResult", "TrainResult", "check_candidates",
           "checkpoints", "class_weights", "cpu_flags", "distillation_loss", "drop_partial_checkpoints",
           "find_round", "fit_baseline", "is_baseline", "initial_model", "last_checkpoint", "load_result", "load_trained",
           "one_class_macro_f1", "precision", "rehearsal_mix", "resume_point", "save_trained", "saved_round",
           "select_candidates", "train_candidate", "train_round"]
