"""Shared training infrastructure (teacher and distillation trainers).

Public API:
- `loop`: `OptimizerConfig`, `LoopConfig`, `make_optimizer`, `make_schedule`, `UpdateRule`,
  `Trainer` (sharded jitted steps, gradient accumulation, NaN/Inf guard, checkpoints, exact
  resume, tqdm, metrics), `ShuffledBatches` (deterministic resumable data order);
- `sharding`: `maybe_initialize_distributed`, `make_mesh`, `replicate`, `shard_batch`;
- `checkpointing`: `CheckpointManager` (orbax state + JSON meta), `latest_step` (whether a run
  has started);
- `periods`: `select_init_times`, `training_period` (the training-window rule of the teacher
  and the distillation);
- `metrics`: `MetricsWriter`, `read_metrics` (JSON lines).
"""

from gencast_rmmd.training.checkpointing import CheckpointManager
from gencast_rmmd.training.loop import (
    LoopConfig,
    OptimizerConfig,
    ShuffledBatches,
    Trainer,
    UpdateRule,
    make_optimizer,
    make_schedule,
)
from gencast_rmmd.training.metrics import MetricsWriter, read_metrics
from gencast_rmmd.training.sharding import (
    make_mesh,
    maybe_initialize_distributed,
    replicate,
    shard_batch,
)

__all__ = [
    "CheckpointManager",
    "LoopConfig",
    "MetricsWriter",
    "OptimizerConfig",
    "ShuffledBatches",
    "Trainer",
    "UpdateRule",
    "make_mesh",
    "make_optimizer",
    "make_schedule",
    "maybe_initialize_distributed",
    "read_metrics",
    "replicate",
    "shard_batch",
]
