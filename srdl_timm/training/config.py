"""``srdl-train``'s configuration: :class:`TrainConfig`, the ``paper`` recipe and :func:`resolve_config`.

``recipe='paper'`` is §4.2: Adam (0.9, 0.999), lr 1e-5, weight decay 5e-4 on every parameter, global batch 16,
20 epochs, lr ÷10 every 10 epochs, 448×448 input with the paper's augmentation, an ImageNet backbone, OE top-3
α 0.5. An explicitly set field overrides the recipe's value.
"""
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import timm

from ..data import DATASETS, DEFAULT_SPLITS
from ..errors import InputError
from ..loss import ASL_DEFAULTS, ERA_SCOPES, LOSSES, REDUCTIONS

__all__ = ['TrainConfig', 'RECIPES', 'SCHEDULERS', 'SUMMARY_KEYS', 'resolve_config', 'is_srdl_model_name']

SCHEDULERS = ('step', 'multistep', 'cosine', 'poly', 'none')
#: The validation metrics logged per epoch (``val_<key>``) and reported at the end of a run.
SUMMARY_KEYS = ('mAP_interpolated', 'mAP_non_interpolated', 'CP', 'CR', 'CF1', 'OP', 'OR', 'OF1')

#: Values a recipe sets (a field left at None takes the recipe's value, else the default below).
RECIPES: Dict[str, Dict[str, Any]] = {
    'paper': dict(
        opt='adam', opt_betas=(0.9, 0.999), lr=1e-5, weight_decay=5e-4, wd_exclude_bias_norm=False,
        global_batch_size=16, epochs=20, sched='step', decay_epochs=10, decay_rate=0.1, warmup_epochs=0,
        img_size=448, train_resize=512, aug='paper', pretrained_backbone=True, oe=True, oe_topk=3, oe_alpha=0.5,
        label_embeddings='auto', loss_reduction='mean',
    ),
}

#: Defaults of the recipe-controlled fields when no recipe (or the recipe does not set them).
_DEFAULTS: Dict[str, Any] = dict(
    opt='adam', opt_betas=None, lr=1e-5, weight_decay=5e-4, wd_exclude_bias_norm=True, batch_size=16,
    global_batch_size=None, epochs=20, sched='step', decay_epochs=10, decay_rate=0.1, warmup_epochs=0, img_size=None,
    train_resize=None, aug='paper', pretrained_backbone=False, oe=None, oe_topk=3, oe_alpha=0.5,
    label_embeddings='auto', loss_reduction='mean',
)


@dataclass
class TrainConfig:
    """Everything that defines a training run, field for field the ``srdl-train`` flags (their help says what
    each does). Fields left at None are filled by :func:`resolve_config` from the recipe or the defaults; explicitly
    set fields always win."""
    # data
    data: str = 'csv'
    root: str = ''
    train_split: Optional[str] = None
    val_split: Optional[str] = None
    voc_difficult: str = 'ignore'
    ann_file: Optional[str] = None
    image_dir: Optional[str] = None
    keep_empty: bool = False
    on_corrupt: str = 'error'
    # model
    model: str = 'srdl_resnet101'
    pretrained: bool = False
    pretrained_backbone: Optional[bool] = None
    num_classes: Optional[int] = None
    label_embeddings: Optional[str] = None
    use_gcn: bool = True
    use_ca: bool = True
    use_sa: bool = True
    oe: Optional[bool] = None
    oe_topk: Optional[int] = None
    oe_alpha: Optional[float] = None
    loss: str = 'bce'
    asl_gamma_neg: Optional[float] = None
    asl_gamma_pos: Optional[float] = None
    asl_clip: Optional[float] = None
    era_scope: str = 'all'
    era_weight: float = 1.0
    loss_reduction: Optional[str] = None
    tune_thresholds: bool = True
    drop_rate: float = 0.0
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    # input
    img_size: Optional[int] = None
    train_resize: Optional[int] = None
    aug: Optional[str] = None
    # optimisation
    recipe: Optional[str] = None
    opt: Optional[str] = None
    opt_betas: Optional[Tuple[float, float]] = None
    opt_eps: Optional[float] = None
    momentum: float = 0.9
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    wd_exclude_bias_norm: Optional[bool] = None
    batch_size: Optional[int] = None
    global_batch_size: Optional[int] = None
    val_batch_size: Optional[int] = None
    epochs: Optional[int] = None
    sched: Optional[str] = None
    decay_epochs: Optional[float] = None
    decay_milestones: Optional[List[int]] = None
    decay_rate: Optional[float] = None
    warmup_epochs: Optional[int] = None
    warmup_lr: float = 1e-7
    min_lr: float = 0.0
    sched_on_updates: bool = False
    clip_grad: Optional[float] = None
    grad_accum_steps: int = 1
    # precision / speed
    amp: bool = False
    amp_dtype: str = 'bfloat16'
    channels_last: bool = False
    compile: bool = False
    fast_depthwise: str = 'auto'
    freeze_bn: bool = False
    sync_bn: bool = False
    # EMA
    model_ema: bool = False
    model_ema_decay: float = 0.9998
    report_checkpoint: str = 'final'
    # run
    output: str = 'output/srdl-train'
    resume: Optional[str] = None
    overwrite: bool = False
    seed: int = 42
    workers: int = 4
    device: Optional[str] = None
    log_interval: int = 50
    checkpoint_interval_steps: int = 0
    keep_checkpoints: int = 1
    max_steps: Optional[int] = None
    progress: bool = True
    deterministic: bool = False
    # filled by resolve_config
    world_size: int = 1
    explicit: List[str] = field(default_factory=list)

    def asl_params(self) -> Optional[Dict[str, float]]:
        """The ASL hyper-parameters ``{'gamma_neg', 'gamma_pos', 'clip'}`` of ``loss='asl'`` (None for 'bce')."""
        if self.loss != 'asl':
            return None
        return {k: float(getattr(self, f'asl_{k}')) for k in ASL_DEFAULTS}

    def to_dict(self) -> Dict[str, Any]:
        """JSON-friendly dict of every field."""
        out = dataclasses.asdict(self)
        if out.get('opt_betas') is not None:
            out['opt_betas'] = list(out['opt_betas'])
        return out


def is_srdl_model_name(name: str) -> bool:
    """True when ``name`` is a registered ``srdl_*`` architecture (or a Hub/local folder, decided later)."""
    if name.startswith(('hf-hub:', 'local-dir:')):
        return True  # decided after creation
    try:
        return timm.models.model_entrypoint(name).__module__.startswith('srdl_timm')
    except RuntimeError:
        return False


def resolve_config(config: TrainConfig, world_size: int = 1, model: Optional[Any] = None) -> TrainConfig:
    """Fill the recipe-controlled fields (explicit > recipe > default) and validate every value.

    Args:
        config: the requested configuration (not modified).
        world_size: number of training processes (the recipe's global batch is split over them).
        model: a model instance trained instead of building ``config.model``.

    Raises:
        InputError: an unknown choice or an out-of-range value, naming the flag.
    """
    cfg = dataclasses.replace(config, model_kwargs=dict(config.model_kwargs))
    if cfg.recipe is not None and cfg.recipe not in RECIPES:
        raise InputError(f'unknown --recipe {cfg.recipe!r}; choose one of {sorted(RECIPES)}')
    recipe = RECIPES.get(cfg.recipe or '', {})
    explicit = []
    for key, default in _DEFAULTS.items():
        value = getattr(cfg, key)
        if value is not None:
            explicit.append(key)
            continue
        setattr(cfg, key, recipe.get(key, default))
    cfg.explicit = sorted(set(explicit) | set(config.explicit))
    cfg.world_size = int(world_size)
    if model is not None:
        is_srdl = hasattr(model, 'set_object_erasing')
    elif not cfg.model.startswith(('hf-hub:', 'local-dir:')) and not timm.is_model(cfg.model.split('.')[0]):
        raise InputError(f'unknown --model {cfg.model!r}: not a timm architecture (see timm.list_models(\'srdl*\'))')
    else:
        is_srdl = is_srdl_model_name(cfg.model)
    if cfg.oe is None:
        cfg.oe = is_srdl and cfg.use_sa
    if cfg.data not in DATASETS:
        raise InputError(f'unknown --data {cfg.data!r}; choose one of {sorted(DATASETS)}')
    default_train, default_val = DEFAULT_SPLITS[cfg.data]
    cfg.train_split = cfg.train_split or default_train
    cfg.val_split = cfg.val_split or default_val
    if 'batch_size' not in cfg.explicit and cfg.global_batch_size:
        per_step = world_size * cfg.grad_accum_steps
        if cfg.global_batch_size % per_step:
            raise InputError(f'the recipe\'s global batch {cfg.global_batch_size} is not divisible by world size '
                             f'{world_size} x --grad-accum-steps {cfg.grad_accum_steps}; set --batch-size explicitly')
        cfg.batch_size = cfg.global_batch_size // per_step
    elif 'batch_size' in cfg.explicit:
        cfg.global_batch_size = None

    _check_optimisation(cfg)
    _check_model_and_run(cfg, is_srdl)
    return cfg


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise InputError(message)


def _check_optimisation(cfg: TrainConfig) -> None:
    """Range checks of the optimisation and run flags, naming the flag."""
    _check(isinstance(cfg.lr, (int, float)) and 0.0 < cfg.lr <= 1.0 and math.isfinite(cfg.lr),
           f'--lr must be in (0, 1], got {cfg.lr}')
    _check(isinstance(cfg.epochs, int) and 1 <= cfg.epochs <= 100_000,
           f'--epochs must be in [1, 100000], got {cfg.epochs}')
    _check(isinstance(cfg.batch_size, int) and 1 <= cfg.batch_size <= 65_536,
           f'--batch-size must be in [1, 65536], got {cfg.batch_size}')
    _check(cfg.val_batch_size is None or cfg.val_batch_size >= 1,
           f'--val-batch-size must be >= 1, got {cfg.val_batch_size}')
    _check(0.0 <= cfg.weight_decay <= 1.0, f'--weight-decay must be in [0, 1], got {cfg.weight_decay}')
    _check(isinstance(cfg.grad_accum_steps, int) and cfg.grad_accum_steps >= 1,
           f'--grad-accum-steps must be >= 1, got {cfg.grad_accum_steps}')
    _check(cfg.workers >= 0, f'--workers must be >= 0, got {cfg.workers}')
    _check(cfg.log_interval >= 1, f'--log-interval must be >= 1, got {cfg.log_interval}')
    _check(cfg.checkpoint_interval_steps >= 0,
           f'--checkpoint-interval-steps must be >= 0, got {cfg.checkpoint_interval_steps}')
    _check(cfg.keep_checkpoints >= 1, f'--keep-checkpoints must be >= 1, got {cfg.keep_checkpoints}')
    _check(cfg.max_steps is None or cfg.max_steps >= 1, f'--max-steps must be >= 1, got {cfg.max_steps}')
    if cfg.opt_betas is not None:
        cfg.opt_betas = tuple(float(b) for b in cfg.opt_betas)
        _check(len(cfg.opt_betas) == 2 and all(0.0 <= b < 1.0 for b in cfg.opt_betas),
               f'--opt-betas must be two values in [0, 1), got {cfg.opt_betas}')


def _check_model_and_run(cfg: TrainConfig, is_srdl: bool) -> None:
    """Checks of the model, loss, precision and data flags, naming the flag; fills the ASL defaults."""
    _check(cfg.oe_topk >= 1, f'--oe-topk must be >= 1, got {cfg.oe_topk}')
    _check(0.0 < cfg.oe_alpha < 1.0, f'--oe-alpha must be in (0, 1), got {cfg.oe_alpha}')
    _check(cfg.amp_dtype in ('bfloat16', 'float16'), f'--amp-dtype must be bfloat16 or float16, got {cfg.amp_dtype}')
    _check(cfg.fast_depthwise in ('auto', 'on', 'off'),
           f'--fast-depthwise must be auto, on or off, got {cfg.fast_depthwise}')
    _check(cfg.report_checkpoint in ('final', 'ema'),
           f'--report-checkpoint must be final or ema, got {cfg.report_checkpoint}')
    _check(cfg.report_checkpoint != 'ema' or cfg.model_ema, '--report-checkpoint ema needs --model-ema')
    _check(0.0 < cfg.model_ema_decay < 1.0, f'--model-ema-decay must be in (0, 1), got {cfg.model_ema_decay}')
    _check(cfg.aug in ('paper', 'none'), f'--aug must be paper or none, got {cfg.aug}')
    _check(cfg.sched in SCHEDULERS, f'--sched must be one of {SCHEDULERS}, got {cfg.sched}')
    _check(cfg.decay_rate is None or 0.0 < cfg.decay_rate <= 1.0,
           f'--decay-rate must be in (0, 1], got {cfg.decay_rate}')
    _check(cfg.warmup_epochs >= 0, f'--warmup-epochs must be >= 0, got {cfg.warmup_epochs}')
    _check(cfg.img_size is None or 32 <= cfg.img_size <= 4096, f'--img-size must be in [32, 4096], got {cfg.img_size}')
    _check(cfg.train_resize is None or cfg.train_resize >= 32, f'--train-resize must be >= 32, got {cfg.train_resize}')
    _check(cfg.clip_grad is None or cfg.clip_grad > 0, f'--clip-grad must be > 0, got {cfg.clip_grad}')
    _check(cfg.num_classes is None or cfg.num_classes >= 1, f'--num-classes must be >= 1, got {cfg.num_classes}')
    _check(not cfg.oe or cfg.use_sa, 'object erasing (--oe) needs the spatial attention: drop --no-sa or add --no-oe')
    _check(not cfg.oe or is_srdl, f'--oe needs an SRDL model, {cfg.model!r} is not one: add --no-oe')
    _check(0.0 <= cfg.drop_rate < 1.0, f'--drop must be in [0, 1), got {cfg.drop_rate}')
    _check(cfg.era_scope in ERA_SCOPES, f'--era-scope must be one of {ERA_SCOPES}, got {cfg.era_scope!r}')
    _check(cfg.era_weight >= 0.0 and math.isfinite(cfg.era_weight), f'--era-weight must be >= 0, got {cfg.era_weight}')
    _check(cfg.loss_reduction in REDUCTIONS,
           f'--loss-reduction must be one of {REDUCTIONS}, got {cfg.loss_reduction!r}')
    _check(cfg.loss in LOSSES, f'--loss must be one of {LOSSES}, got {cfg.loss!r}')
    for key, default in ASL_DEFAULTS.items():
        flag, value = f'--asl-{key.replace("_", "-")}', getattr(cfg, f'asl_{key}')
        _check(value is None or cfg.loss == 'asl', f'{flag} is a parameter of the asymmetric loss: add --loss asl')
        if cfg.loss == 'asl':
            value = default if value is None else value
            _check(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0
                   and (key != 'clip' or value < 1), f'{flag} must be >= 0{" and < 1" if key == "clip" else ""}, '
                                                    f'got {value}')
            setattr(cfg, f'asl_{key}', float(value))
    _check(bool(cfg.root), '--root (dataset folder) is required')
    _check(cfg.voc_difficult in ('positive', 'negative', 'ignore'),
           f'--voc-difficult must be positive, negative or ignore, got {cfg.voc_difficult}')
