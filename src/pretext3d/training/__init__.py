"""The training core the loops share.

:class:`TaskSpec` and :class:`PretextStep` (encoder + weighted tasks + their draw streams
-> loss, accuracy, state), :class:`Optimization` (optimizer, warm-up and schedule,
precision with its gradient scaler, clipping, the non-finite check, checkpoint state), and
the seeded, resumable loading of pretraining data. The
:class:`~pretext3d.pretrainer.Pretrainer`, :class:`~pretext3d.lightning.PretextLightningModule`
and the fine-tuning :class:`~pretext3d.finetune.Trainer` are thin drivers around them.
"""

from pretext3d.training.loading import ResumableBatches, SeededCrops, case_ids, stack_images
from pretext3d.training.optim import (
    Optimization,
    OptimSettings,
    build_optimizer,
    check_finite,
    lr_factor,
    lr_schedule,
)
from pretext3d.training.step import (
    PretextStep,
    StepResult,
    TaskHeads,
    TaskSpec,
    image_of,
    switch_checkpointing,
    task_specs,
)

__all__ = [
    "OptimSettings",
    "Optimization",
    "PretextStep",
    "ResumableBatches",
    "SeededCrops",
    "StepResult",
    "TaskHeads",
    "TaskSpec",
    "build_optimizer",
    "case_ids",
    "check_finite",
    "image_of",
    "lr_factor",
    "lr_schedule",
    "stack_images",
    "switch_checkpointing",
    "task_specs",
]
