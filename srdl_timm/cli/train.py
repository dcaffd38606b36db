"""``srdl-train``: train or fine-tune SRDL (or any timm classifier, as a multi-label baseline).

    srdl-train --recipe paper --data coco --root /data/coco --output runs/coco_r101
    torchrun --nproc_per_node 8 -m srdl_timm.cli.train --recipe paper --data coco --root /data/coco --output runs/x

This module maps flags to a :class:`~srdl_timm.training.TrainConfig` for :func:`srdl_timm.training.fit`. Exit
status: 0 done, 2 bad input, 3 non-finite loss, 1 other failure.
"""
import argparse
import dataclasses
import os
import sys
from typing import Any, Optional, Sequence

from ..data import DATASETS
from ..loss import ASL_DEFAULTS, LOSSES
from ..training import RECIPES, SCHEDULERS, TrainConfig, fit
from ..training.run_folder import write_failure_note
from ..utils import parse_model_kwargs
from . import STORAGE_ERRNOS, add_common_args, run_cli

__all__ = ['build_parser', 'config_from_args', 'run', 'main']


def build_parser() -> argparse.ArgumentParser:
    """The ``srdl-train`` argument parser (timm's flag names where the concept exists)."""
    p = argparse.ArgumentParser(
        prog='srdl-train', description='Train or fine-tune SRDL (multi-label) on COCO, VOC or your own data.',
        epilog='Recipe-controlled flags default to the recipe (--recipe paper) or to the listed default; an explicit '
               'flag always wins.')
    g = p.add_argument_group('recipe')
    g.add_argument('--recipe', default=None, choices=sorted(RECIPES),
                   help='paper: §4.2 (Adam 0.9/0.999, lr 1e-5, wd 5e-4, global batch 16, 20 epochs, step /10 every 10, '
                        '448 px + paper augmentation, ImageNet backbone, OE top-3 alpha 0.5)')
    _add_data_args(p)
    _add_loss_args(_add_model_args(p))
    _add_optimisation_args(p)
    _add_run_args(p)
    return add_common_args(p)


def _add_data_args(p: argparse.ArgumentParser) -> None:
    """The data flags of srdl-train."""
    g = p.add_argument_group('data')
    g.add_argument('--data', required=True, choices=sorted(DATASETS), help='dataset format')
    g.add_argument('--root', required=True, help='dataset root folder')
    g.add_argument('--train-split', default=None, help='default: train (VOC: trainval)')
    g.add_argument('--val-split', default=None, help='default: val (VOC: test)')
    g.add_argument('--voc-difficult', default='ignore', choices=('positive', 'negative', 'ignore'),
                   help='training label of VOC difficult-only objects (evaluation always ignores them)')
    g.add_argument('--ann-file', default=None, help='csv/coco-json: annotation file of the train split')
    g.add_argument('--image-dir', default=None, help='csv/coco-json: image folder of the train split')
    g.add_argument('--keep-empty', action='store_true', help='keep images without any label')
    g.add_argument('--on-corrupt', default='error', choices=('error', 'skip'), help='unreadable images')


def _add_model_args(p: argparse.ArgumentParser) -> Any:
    """The model flags of srdl-train; returns their group."""
    B = argparse.BooleanOptionalAction
    g = p.add_argument_group('model')
    g.add_argument('--model', default='srdl_resnet101', help='timm model name (srdl_* or any timm classifier)')
    g.add_argument('--pretrained', action='store_true', help='start from the model\'s pretrained SRDL weights')
    g.add_argument('--pretrained-backbone', action=B, default=None,
                   help='ImageNet-pretrained backbone (recipe paper: on; default: off)')
    g.add_argument('--num-classes', type=int, default=None, help='must match the dataset (checked)')
    g.add_argument('--label-embeddings', default=None,
                   help="label-graph node init: auto (coco/voc arrays, else GloVe 6B-50d), none, coco, voc, "
                        "glove-6b-50d, or a word-vector file")
    g.add_argument('--oe', action=B, default=None, help='object erasing (default: on for SRDL)')
    g.add_argument('--oe-topk', type=int, default=None, help='OE top-K categories (default 3)')
    g.add_argument('--oe-alpha', type=float, default=None, help='OE threshold alpha (default 0.5)')
    return g


def _add_loss_args(g: Any) -> None:
    """The loss, ablation and input flags of srdl-train (in the model group ``g``)."""
    B = argparse.BooleanOptionalAction
    g.add_argument('--loss', default='bce', choices=LOSSES,
                   help='per-entry loss of L_ori and L_era: bce (the paper) or asl (asymmetric loss, Ben-Baruch et al. '
                        '2020; computed in float32)')
    g.add_argument('--asl-gamma-neg', type=float, default=None,
                   help=f'ASL focusing of negatives (default {ASL_DEFAULTS["gamma_neg"]:g}, the ASL paper\'s)')
    g.add_argument('--asl-gamma-pos', type=float, default=None,
                   help=f'ASL focusing of positives (default {ASL_DEFAULTS["gamma_pos"]:g})')
    g.add_argument('--asl-clip', type=float, default=None,
                   help=f'ASL probability margin of negatives (default {ASL_DEFAULTS["clip"]:g})')
    g.add_argument('--era-scope', default='all', choices=('all', 'erased'),
                   help='entries of L_era (eq. 12): all (the paper as written) or only the K erased classes')
    g.add_argument('--era-weight', type=float, default=1.0, help='weight of L_era in L = L_ori + w L_era (eq. 13: 1)')
    g.add_argument('--loss-reduction', default=None, choices=('mean', 'sum'),
                   help="eqs. 11-12 over a mini-batch: mean (default) or sum (as written); under Adam this changes "
                        'how strong --weight-decay is relative to the data gradient (MODEL_CARD.md)')
    g.add_argument('--no-gcn', dest='use_gcn', action='store_false', help='ablation: no label graph convolution')
    g.add_argument('--no-ca', dest='use_ca', action='store_false', help='ablation: no channel attention')
    g.add_argument('--no-sa', dest='use_sa', action='store_false', help='ablation: no spatial attention')
    g.add_argument('--drop', type=float, default=0.0, dest='drop_rate', help='dropout before the classifier')
    g.add_argument('--model-kwargs', nargs='*', default=None, metavar='K=V', help='extra timm.create_model kwargs')
    g.add_argument('--img-size', type=int, default=None, help='input size (recipe paper: 448; default: model cfg)')
    g.add_argument('--train-resize', type=int, default=None, help='first resize of the paper augmentation '
                                                                   '(default img-size*512/448)')
    g.add_argument('--aug', default=None, choices=('paper', 'none'), help='training augmentation (default paper)')
    g.add_argument('--tune-thresholds', action=B, default=True,
                   help='at the end, tune per-class decision thresholds (best F1 per class) on the validation split '
                        'and store them in OUTPUT/train_config.json, where srdl-predict and srdl-publish find them')


def _add_optimisation_args(p: argparse.ArgumentParser) -> None:
    """The optimiser, schedule, precision and EMA flags of srdl-train."""
    B = argparse.BooleanOptionalAction
    g = p.add_argument_group('optimisation')
    g.add_argument('--opt', default=None, help='timm optimizer name (default adam)')
    g.add_argument('--opt-betas', type=float, nargs=2, default=None, help='(default: optimizer\'s; paper 0.9 0.999)')
    g.add_argument('--opt-eps', type=float, default=None)
    g.add_argument('--momentum', type=float, default=0.9, help='SGD momentum')
    g.add_argument('--lr', type=float, default=None, help='learning rate (default 1e-5)')
    g.add_argument('--weight-decay', type=float, default=None, help='weight decay (default 5e-4)')
    g.add_argument('--wd-exclude-bias-norm', action=B, default=None,
                   help='no weight decay on biases and norm weights (timm default: on; recipe paper: off)')
    g.add_argument('-b', '--batch-size', type=int, default=None, help='batch size per process (default 16)')
    g.add_argument('--val-batch-size', type=int, default=None)
    g.add_argument('--epochs', type=int, default=None, help='(default 20)')
    g.add_argument('--sched', default=None, choices=SCHEDULERS, help='lr schedule (default step)')
    g.add_argument('--decay-epochs', type=float, default=None, help='step: epochs between decays (default 10)')
    g.add_argument('--decay-milestones', type=int, nargs='+', default=None, help='multistep milestones')
    g.add_argument('--decay-rate', type=float, default=None, help='lr multiplier per decay (default 0.1)')
    g.add_argument('--warmup-epochs', type=int, default=None, help='(default 0)')
    g.add_argument('--warmup-lr', type=float, default=1e-7)
    g.add_argument('--min-lr', type=float, default=0.0)
    g.add_argument('--sched-on-updates', action='store_true', help='update the lr every optimizer step')
    g.add_argument('--clip-grad', type=float, default=None, help='clip the gradient norm')
    g.add_argument('--grad-accum-steps', type=int, default=1, help='micro-batches per optimizer step')
    g = p.add_argument_group('precision and speed')
    g.add_argument('--amp', action='store_true', help='mixed precision (autocast); loss in float32')
    g.add_argument('--amp-dtype', default='bfloat16', choices=('bfloat16', 'float16'),
                   help='float16 adds a GradScaler')
    g.add_argument('--channels-last', action='store_true')
    g.add_argument('--compile', action='store_true', help='torch.compile the model')
    g.add_argument('--fast-depthwise', default='auto', choices=('auto', 'on', 'off'),
                   help="depthwise convolutions with a faster backward (srdl_timm.layers.depthwise); auto: on for "
                        "CPU training, off on CUDA (where it has not been checked)")
    g.add_argument('--freeze-bn', action='store_true', help='BatchNorm in eval mode (running statistics) in training')
    g.add_argument('--sync-bn', action='store_true', help='SyncBatchNorm under multi-GPU DDP')
    g = p.add_argument_group('EMA')
    g.add_argument('--model-ema', action='store_true', help='keep an EMA of the weights (timm ModelEmaV3)')
    g.add_argument('--model-ema-decay', type=float, default=0.9998)
    g.add_argument('--report-checkpoint', default='final', choices=('final', 'ema'),
                   help='which weights are evaluated and reported, declared before training')


def _add_run_args(p: argparse.ArgumentParser) -> None:
    """The run flags of srdl-train (output, resume, logging)."""
    g = p.add_argument_group('run')
    g.add_argument('--output', default='output/srdl-train', help='output directory')
    g.add_argument('--resume', default=None, help='checkpoint dir, output dir, or "auto" (OUTPUT/last if present)')
    g.add_argument('--overwrite', action='store_true',
                   help='OUTPUT holds another run: move its files to a sibling OUTPUT.old-<time> folder and start over '
                        '(without it such an OUTPUT is refused)')
    g.add_argument('--seed', type=int, default=42)
    g.add_argument('-j', '--workers', type=int, default=min(4, os.cpu_count() or 1),
                   help='data loader workers per process (default: 4, at most the CPU count)')
    g.add_argument('--device', default=None, help='cuda or cpu (default: cuda when available)')
    g.add_argument('--log-interval', type=int, default=50, help='optimizer steps between log lines')
    g.add_argument('--checkpoint-interval-steps', type=int, default=0,
                   help='also checkpoint every N optimizer steps (0: at epoch ends only)')
    g.add_argument('--keep-checkpoints', type=int, default=1, help='newest checkpoints kept')
    g.add_argument('--max-steps', type=int, default=None,
                   help='stop (with a checkpoint) after N optimizer steps in total; resume later')
    g.add_argument('--deterministic', action='store_true', help='torch deterministic algorithms')
    g.add_argument('--no-progress', '--quiet', '-q', dest='progress', action='store_false',
                   help='no progress bars (they show only when stderr is a terminal)')

def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """A :class:`TrainConfig` from parsed ``srdl-train`` arguments (unresolved: recipe fields may be None)."""
    values = vars(args).copy()
    values.pop('log_level', None)
    values.pop('debug', None)
    values['model_kwargs'] = parse_model_kwargs(values.get('model_kwargs'))
    if values.get('opt_betas') is not None:
        values['opt_betas'] = tuple(values['opt_betas'])
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(values) - names
    if unknown:
        raise TypeError(f'internal: arguments without a TrainConfig field: {sorted(unknown)}')
    return TrainConfig(**values)


def run(args: argparse.Namespace) -> int:
    """Train with the parsed flags (errors propagate to the :func:`~srdl_timm.cli.run_cli` boundary; a write the
    file system refused gets a note saying what is intact and how to resume)."""
    cfg = config_from_args(args)
    try:
        fit(cfg)
    except OSError as e:
        if e.errno in STORAGE_ERRNOS:
            e.add_note(write_failure_note(cfg.output, e))
        raise
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point of ``srdl-train``."""
    return run_cli('srdl-train', build_parser, run, argv)


if __name__ == '__main__':
    sys.exit(main())
