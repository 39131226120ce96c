"""Training: the schedule runner, the stages of ``prune()``, argument checks,
checkpoints, per-epoch seeding and distributed training."""

from .pipeline import prune
from .result import GroupReport, PruneReport, PruneResult
from .runner import EpochRecord, Runner, TrainingDivergedError, evaluate

__all__ = ["PruneReport", "PruneResult", "GroupReport", "prune", "EpochRecord", "Runner",
           "TrainingDivergedError", "evaluate"]
