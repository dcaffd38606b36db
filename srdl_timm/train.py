"""Compatibility module: ``from srdl_timm.train import TrainConfig, fit`` and ``torchrun -m srdl_timm.train``.

The code lives in :mod:`srdl_timm.train_config` (:class:`TrainConfig`, recipes), :mod:`srdl_timm.training` (the
loop on :class:`~srdl_timm.task.SRDLTask`), :mod:`srdl_timm.fit` (:func:`fit`, a whole run) and
:mod:`srdl_timm.cli.train` (the ``srdl-train`` flags); ``python -m srdl_timm.train ...`` runs ``srdl-train``.
"""
from .fit import fit
from .train_config import RECIPES, TrainConfig, resolve_config
from .training import NonFiniteLossError, TrainingError

__all__ = ['TrainConfig', 'RECIPES', 'resolve_config', 'fit', 'TrainingError', 'NonFiniteLossError']

if __name__ == '__main__':
    import sys

    from .cli.train import main
    sys.exit(main())
