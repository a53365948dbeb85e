"""The train room: the one training loop and the tasks that plug into it. :class:`Trainer` (resume,
preemption, non-finite policy, checkpoint rotation, metrics, compile), the run folder, the optimiser and
schedule pieces of the recipe, pre-training and classification tasks, and the L-BFGS linear probe.
Floor 6: it may import every room but cli.
"""

from anymae.core.train.results import ClassifyResult
from anymae.core.train.task_classify import train_classifier
from anymae.core.train.task_pretrain import PretrainResult, pretrain
from anymae.core.train.trainer import Trainer

__all__ = ["ClassifyResult", "PretrainResult", "Trainer", "pretrain", "train_classifier"]
