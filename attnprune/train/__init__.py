"""Training: the schedule runner, the stages of ``prune()``, argument checks,
checkpoints and distributed training."""

from .pipeline import PruneReport, PruneResult, prune
from .runner import EpochRecord, Runner, TrainingDivergedError, evaluate

__all__ = ["PruneReport", "PruneResult", "prune", "EpochRecord", "Runner", "TrainingDivergedError", "evaluate"]
