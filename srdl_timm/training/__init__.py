"""Training: :func:`fit` runs (or resumes) an ``srdl-train`` run from a :class:`TrainConfig`.

    from srdl_timm.training import TrainConfig, fit
    result = fit(TrainConfig(recipe='paper', data='voc', root='/data/VOCdevkit', output='runs/voc'))
"""
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint
from .config import RECIPES, SCHEDULERS, TrainConfig, resolve_config
from .loop import NonFiniteLossError, TrainingError
from .run import fit
from .run_folder import OutputDirError
from .task import SRDLTask

__all__ = ['fit', 'TrainConfig', 'RECIPES', 'SCHEDULERS', 'resolve_config', 'SRDLTask', 'TrainingError',
           'NonFiniteLossError', 'OutputDirError', 'CheckpointError', 'Checkpoint', 'load_checkpoint']
