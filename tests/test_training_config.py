"""Tests of srdl_timm/training/config.py (:class:`TrainConfig`, recipes, :func:`resolve_config`)."""
import pytest

from srdl_timm.cli.train import build_parser, config_from_args
from srdl_timm.errors import InputError
from srdl_timm.loss import ASL_DEFAULTS
from srdl_timm.training import RECIPES, resolve_config


def test_recipe_paper_resolves_to_section_4_2_and_flags_override(csv_root):
    """--recipe paper gives exactly §4.2 (Adam 0.9/0.999, lr 1e-5, wd 5e-4 on all parameters, global batch 16,
    20 epochs, step ÷10 every 10 epochs, 448 px with resize 512, paper augmentation, ImageNet backbone, OE top-3
    α 0.5); the global batch is split over processes; an explicit flag overrides the recipe."""
    args = build_parser().parse_args(['--recipe', 'paper', '--data', 'coco', '--root', csv_root])
    cfg = resolve_config(config_from_args(args))
    assert (cfg.opt, cfg.opt_betas, cfg.lr, cfg.weight_decay, cfg.wd_exclude_bias_norm) == \
           ('adam', (0.9, 0.999), 1e-5, 5e-4, False)
    assert (cfg.batch_size, cfg.epochs, cfg.sched, cfg.decay_epochs, cfg.decay_rate, cfg.warmup_epochs) == \
           (16, 20, 'step', 10, 0.1, 0)
    assert (cfg.img_size, cfg.train_resize, cfg.aug, cfg.pretrained_backbone) == (448, 512, 'paper', True)
    assert (cfg.oe, cfg.oe_topk, cfg.oe_alpha, cfg.model) == (True, 3, 0.5, 'srdl_resnet101')
    assert resolve_config(config_from_args(args), world_size=4).batch_size == 4
    args = build_parser().parse_args(['--recipe', 'paper', '--data', 'coco', '--root', csv_root, '--lr', '1e-4',
                                      '--batch-size', '8', '--no-oe', '--epochs', '3'])
    cfg = resolve_config(config_from_args(args), world_size=2)
    assert (cfg.lr, cfg.batch_size, cfg.oe, cfg.epochs, cfg.weight_decay) == (1e-4, 8, False, 3, 5e-4)
    assert set(cfg.explicit) >= {'lr', 'batch_size', 'oe', 'epochs'}
    assert set(RECIPES['paper']) >= {'opt', 'lr', 'weight_decay', 'epochs', 'sched', 'img_size', 'oe_topk'}


def test_loss_choice_resolves_the_asl_parameters(csv_root):
    """BCE by default (no ASL parameters); --loss asl takes the ASL paper's gamma-/gamma+/clip unless a flag sets
    one; ASL flags without --loss asl and out-of-range values are errors naming the flag; the threshold tuning is on
    by default."""
    def resolved(*flags):
        return resolve_config(config_from_args(build_parser().parse_args(['--data', 'csv', '--root', csv_root,
                                                                          *flags])))
    cfg = resolved()
    assert cfg.loss == 'bce' and cfg.asl_params() is None and cfg.asl_gamma_neg is None and cfg.tune_thresholds
    assert resolved('--loss', 'asl').asl_params() == ASL_DEFAULTS
    cfg = resolved('--loss', 'asl', '--asl-gamma-neg', '2', '--no-tune-thresholds')
    assert cfg.asl_params() == dict(ASL_DEFAULTS, gamma_neg=2.0) and cfg.to_dict()['asl_clip'] == 0.05
    assert not cfg.tune_thresholds
    with pytest.raises(InputError, match='--asl-clip is a parameter of the asymmetric loss: add --loss asl'):
        resolved('--asl-clip', '0.1')
    with pytest.raises(InputError, match='--asl-clip must be >= 0 and < 1, got 1.5'):
        resolved('--loss', 'asl', '--asl-clip', '1.5')
    with pytest.raises(InputError, match='--asl-gamma-pos must be >= 0'):
        resolved('--loss', 'asl', '--asl-gamma-pos', '-1')
