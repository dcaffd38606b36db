"""Training: :func:`fit` runs (or resumes) an ``srdl-train`` run from a :class:`TrainConfig`.

SRDL trains with object erasing and ``L = L_ori + L_era`` (eqs. 11-13); any timm classifier trains as a
multi-label baseline with the same loop. ``srdl-train`` (:mod:`srdl_timm.cli.train`) only maps flags to a
:class:`TrainConfig`::

    from srdl_timm.training import TrainConfig, fit
    result = fit(TrainConfig(recipe='paper', data='voc', root='/data/VOCdevkit', output='runs/voc'))

Modules: :mod:`.config` (:class:`TrainConfig`, the ``paper`` recipe, :func:`resolve_config`), :mod:`.task`
(:class:`SRDLTask`, timm's task API with OE), :mod:`.loop` (setup, one epoch, evaluation), :mod:`.run`
(:func:`fit`: a whole run with resume), :mod:`.run_folder` (the output folder one run owns, its logs),
:mod:`.checkpoint` (atomic, verified checkpoints). The training samplers live with the data
(:mod:`srdl_timm.data.samplers`).
"""
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint
from .config import RECIPES, SCHEDULERS, TrainConfig, resolve_config
from .loop import NonFiniteLossError, TrainingError
from .run import fit
from .run_folder import OutputDirError
from .task import SRDLTask

__all__ = ['fit', 'TrainConfig', 'RECIPES', 'SCHEDULERS', 'resolve_config', 'SRDLTask', 'TrainingError',
           'NonFiniteLossError', 'OutputDirError', 'CheckpointError', 'Checkpoint', 'load_checkpoint']
