"""Rows, modes (protocol presets) and the configuration of one benchmark invocation."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple

from srdl_timm.loss import LOSSES
from srdl_timm.utils import jsonable

#: metrics of the main table (Table 5/6 style) and of the second table (Table 2 style)
TABLE_METRICS = ('mAP_interpolated', 'mAP_non_interpolated', 'CF1', 'OF1')
TABLE2_METRICS = ('CP', 'CR', 'CF1', 'OP', 'OR', 'OF1')
METRIC_LABELS = {'mAP_interpolated': 'mAP (interp.)', 'mAP_non_interpolated': 'mAP (non-interp.)'}
SCALAR_METRICS = ('mAP_interpolated', 'mAP_non_interpolated', 'CP', 'CR', 'CF1', 'OP', 'OR', 'OF1',
                  'CP_top3', 'CR_top3', 'CF1_top3', 'OP_top3', 'OR_top3', 'OF1_top3')


@dataclass(frozen=True)
class Row:
    """One line of the tables: the SRDL switches it trains with, or a peer head.

    Attributes:
        key: command-line name.
        name: name printed in the table.
        paper: where the row is in the SRDL paper (peers: their own paper).
        use_gcn / use_ca / use_sa: :class:`srdl_timm.SRDL` ablation switches (both attentions off = baseline).
        oe: object erasing during training.
        era_scope: :class:`srdl_timm.loss.SRDLLoss` scope of L_era (eq. 12): 'all' classes or the K 'erased' ones.
        peer: a head of ``benchmarks/peer_heads.py`` on the same backbone instead of SRDL's (switches unused).
        attention / oe_erase: :class:`srdl_timm.SRDL`'s attention variant and what OE erases (the paper's:
            'paper', 'attention').
        loss: the row's own per-entry loss ('bce' | 'asl'; None: the invocation's ``--loss``), e.g. ML-Decoder with
            its authors' ASL.
    """
    key: str
    name: str
    paper: str
    use_gcn: bool = True
    use_ca: bool = True
    use_sa: bool = True
    oe: bool = False
    era_scope: str = 'all'
    peer: Optional[str] = None
    attention: str = 'paper'
    oe_erase: str = 'attention'
    loss: Optional[str] = None

    def model_kwargs(self) -> Dict[str, Any]:
        """The ablation switches (and a non-paper attention variant) as ``timm.create_model`` kwargs."""
        kwargs: Dict[str, Any] = dict(use_gcn=self.use_gcn, use_ca=self.use_ca, use_sa=self.use_sa)
        if self.attention != 'paper' or self.oe_erase != 'attention':
            kwargs.update(attention=self.attention, oe_erase=self.oe_erase)
        return kwargs


ROWS: Dict[str, Row] = {r.key: r for r in (
    Row('baseline', 'Baseline (backbone + GMP + linear)', 'T5 l.1, T6 l.1', use_ca=False, use_sa=False),
    Row('car_no_gcn', 'CAR w/o GCN', 'T6 l.4', use_gcn=False),
    Row('car_no_ca', 'CAR w/o CA', 'T6 l.5', use_ca=False),
    Row('car_no_sa', 'CAR w/o SA', 'T6 l.6', use_sa=False),
    Row('car', 'CAR', 'T5 l.2, T6 l.7'),
    Row('car_oe', 'CAR + OE (SRDL)', 'T5 l.3', oe=True),
    Row('car_oe_erased', 'CAR + OE, L_era on erased classes', 'eq. 12, other reading', oe=True, era_scope='erased'),
    Row('car_gated', 'CAR, gated fusion (not the paper\'s)', 'attention variant', attention='gated'),
    Row('car_softmax', 'CAR, softmax SA (not the paper\'s)', 'attention variant', attention='softmax'),
    Row('car_softmax_gated', 'CAR, softmax SA + gated (not the paper\'s)', 'attention variant',
        attention='softmax_gated'),
    Row('car_softmax_gated_oe', 'CAR softmax-gated + OE on features (not the paper\'s)', 'attention variant',
        oe=True, attention='softmax_gated', oe_erase='features'),
    Row('car_gated_oe', 'CAR gated + OE on features (not the paper\'s)', 'attention variant', oe=True,
        attention='gated', oe_erase='features'),
    Row('car_softmax_oe', 'CAR softmax + OE on features (not the paper\'s)', 'attention variant', oe=True,
        attention='softmax', oe_erase='features'),
    Row('ml_decoder', 'ML-Decoder (timm)', 'Ridnik et al. 2023', False, False, False, peer='ml_decoder'),
    Row('ml_decoder_asl', 'ML-Decoder (timm) + ASL', 'Ridnik et al. 2023, their loss', False, False, False,
        peer='ml_decoder', loss='asl'),
    Row('csra', 'CSRA (4 heads, λ 0.5)', 'Zhu & Wu 2021', False, False, False, peer='csra'),
    Row('ml_gcn', 'ML-GCN classifier', 'Chen et al. 2019', False, False, False, peer='ml_gcn'),
)}
#: table order (Table 6's lines, Table 5's last line, the OE scope variant, then the peers)
ROW_ORDER: Tuple[str, ...] = tuple(ROWS)
#: SRDL's own rows (Tables 5 and 6) and the peer heads
SRDL_ROWS: Tuple[str, ...] = ('baseline', 'car_no_gcn', 'car_no_ca', 'car_no_sa', 'car', 'car_oe')
PEER_ROWS: Tuple[str, ...] = ('ml_decoder', 'csra', 'ml_gcn')

#: Defaults of each mode; an explicit command-line value wins. Protocols and results: benchmarks/offline_benchmark.md.
MODES: Dict[str, Dict[str, Any]] = {
    # 2-core CPU, about 10 minutes: Fashion Scenes 'quick' (1,500 / 300 / 500 images, 128 px; a 4x4 attention grid)
    'quick': dict(
        preset='quick', trainer='frozen-trunk', img_size=None, train_stages=2, epochs=5, batch_size=32, lr=1e-3,
        weight_decay=1e-4, warmup_epochs=0.3, optimizer='adamw', seeds=(0, 1, 2), sweep_topk=(1, 2, 3, 5, 8),
        sweep_alpha=(0.1, 0.3, 0.5, 0.7, 0.9), sweep_seeds=(0,), overlays=4, bootstrap=1000, workers=0,
        rows=SRDL_ROWS + PEER_ROWS,
    ),
    # paper-like attention resolution on a CPU: the quick data at 192 px through a backbone run at output stride 16
    # (dilated last stage): a 12x12 grid (the paper's is 14x14); the last block stage and the head conv trained
    # end to end with the head; every SRDL row, the L_era-scope row and the peers; 3 seeds on each of 2
    # independently built data sets, reported separately. Jobs run seed by seed, so a stopped run has whole seeds.
    'faithful': dict(
        preset='quick', trainer='frozen-trunk', img_size=192, output_stride=16, train_stages=2, epochs=3,
        batch_size=32, lr=1e-3, weight_decay=1e-4, warmup_epochs=0.3, optimizer='adamw', seeds=(0, 1, 2),
        dataset_seeds=(0, 1),
        sweep_topk=(1, 2, 3, 5, 8), sweep_alpha=(0.1, 0.3, 0.5, 0.7, 0.9), sweep_seeds=(0,), overlays=4,
        bootstrap=1000, workers=0,
        rows=('car_oe', 'car', 'baseline', 'csra', 'ml_gcn', 'ml_decoder', 'car_no_ca', 'car_no_sa', 'car_no_gcn',
              'car_oe_erased'),
    ),
    # the whole backbone trained (#22): the faithful protocol's data, 192 px at output stride 16 (12x12 grid) and
    # ImageNet EfficientNet-Lite0, but every backbone unit trained from images with the paper's augmentation (scaled
    # to 192 px) by the library's training loop (srdl_timm.training.fit), for SRDL's Table 5 rows and the two
    # strongest peers of the faithful protocol, plus the attention variant chosen on validation (`gated`, issue #28,
    # benchmarks/select_variant.py); 3 seeds on each of 3 independently built data sets (the race of issue #29),
    # one process per data set. Epochs and lr were chosen on the *val* split of data set 0 (baseline and CAR + OE,
    # offline_benchmark.md); per-row rates: --row-lr-from (benchmarks/select_lr.py). On an AMX CPU add --amp.
    'end-to-end': dict(
        preset='quick', trainer='fit', img_size=192, output_stride=16, train_stages=None, epochs=6, batch_size=32,
        lr=1e-3, weight_decay=1e-4, warmup_epochs=1, optimizer='adamw', seeds=(0, 1, 2), dataset_seeds=(0, 1, 2),
        sweep_topk=(1, 2, 3, 5, 8), sweep_alpha=(0.1, 0.3, 0.5, 0.7, 0.9), sweep_seeds=(0,), overlays=4,
        bootstrap=1000, workers=0, rows=('car_oe', 'car', 'baseline', 'car_gated', 'ml_decoder', 'csra'),
    ),
    # a GPU: Fashion Scenes 'full' (20,000 / 2,000 / 5,000 images, 224 px), end to end as srdl-train trains
    'full': dict(
        preset='full', trainer='fit', img_size=224, train_stages=None, epochs=15, batch_size=32, lr=1e-4,
        weight_decay=1e-4, warmup_epochs=1, optimizer='adam', seeds=(0, 1, 2), sweep_topk=(1, 2, 3, 4, 5, 6, 7, 8),
        sweep_alpha=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), sweep_seeds=(0, 1, 2), overlays=6,
        bootstrap=1000, workers=8,
    ),
    # COCO / VOC: srdl-train's 'paper' recipe (§4.2); values left None come from that recipe
    'paper': dict(
        preset=None, trainer='fit', img_size=None, train_stages=None, epochs=None, batch_size=None, lr=None,
        weight_decay=None, warmup_epochs=None, seeds=(0,), sweep_topk=(1, 2, 3, 4, 5, 6, 7, 8),
        sweep_alpha=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), sweep_seeds=(0,), overlays=6, bootstrap=100,
        workers=8,
    ),
}
TRAINERS = ('frozen-trunk', 'fit')
#: test images used for the attention pointing game of fit runs (an extra forward pass; COCO val has 40k images)
MAX_POINTING_IMAGES = 2000
#: the OE hyper-parameters of the main table (the paper's, §4.4)
DEFAULT_OE_TOPK, DEFAULT_OE_ALPHA = 3, 0.5
#: train / val / test splits of each data source (COCO and VOC have no separate test split: the paper reports on
#: val2014 and VOC2007 test, which are also the splits the training runs validate on)
DATA_SPLITS = {'fashion-scenes': ('train', 'val', 'test'), 'coco': ('train', 'val', 'val'),
               'voc': ('trainval', 'test', 'test')}
DATA_SOURCES = tuple(DATA_SPLITS)


@dataclass
class BenchmarkConfig:
    """Everything that defines a benchmark invocation; fields left None take the mode's value (:data:`MODES`).

    Data: ``data`` ('fashion-scenes' | 'coco' | 'voc'), ``root`` (dataset folder; Fashion Scenes is built there
    when missing, default ``$SRDL_BENCHMARK_DATA`` or ``~/.cache/srdl_timm/benchmark/fashion_scenes-<preset>-seed<N>``),
    ``preset`` / ``dataset_seed`` (Fashion Scenes build), ``dataset_overrides`` (Fashion Scenes parameters).

    Model: ``model`` (an ``srdl_*`` timm name), ``backbone`` (override of the model's backbone),
    ``pretrained_backbone`` (ImageNet weights; offline for EfficientNet-Lite0), ``label_embeddings``
    ('auto' = coco/voc arrays, else GloVe 6B-50d).

    Protocol: ``mode`` ('quick' | 'faithful' | 'end-to-end' | 'full'; COCO/VOC use 'paper'), ``trainer``, ``rows``,
    ``seeds``, ``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``warmup_epochs``, ``optimizer`` (fit trainer:
    a timm optimizer name; the frozen-trunk trainer is AdamW), ``loss`` ('bce', the paper's, or 'asl', the
    asymmetric loss with the ASL paper's hyper-parameters :data:`srdl_timm.loss.ASL_DEFAULTS`, for L_ori and L_era
    of every row, peers included), ``loss_reduction`` ('mean' | 'sum' of eqs. 11-12 over a mini-batch,
    :class:`srdl_timm.loss.SRDLLoss`), ``img_size``, ``train_stages`` (frozen-trunk:
    trailing backbone units trained), ``batchnorm`` (frozen-trunk: 'frozen' running statistics everywhere, or
    'train': batch statistics in the trained units), ``dataset_seeds`` (the Fashion Scenes builds a mode runs on, each
    reported separately; default ``(dataset_seed,)``), ``output_stride`` (the backbone's output stride, e.g. 8 for a 4x larger
    SA grid by dilation; None: the backbone's own 32), ``oe_topk`` / ``oe_alpha`` (main table), ``amp`` (bfloat16 autocast in
    training; evaluation is float32 on the CPU, float32 head on CUDA), ``val_every_epoch`` (frozen-trunk: val
    metrics in the history after every epoch; fit always validates every epoch).

    Extras: ``sweeps`` with ``sweep_topk`` / ``sweep_alpha`` / ``sweep_seeds`` (Figure 6; the other OE
    hyper-parameter fixed at the paper's 0.5 resp. 3), ``overlays`` (test images in Figure 5), ``bootstrap``
    (paired bootstrap resamples of the test set for row differences), ``export`` / ``register`` /
    ``manifest`` (shipping the CAR + OE weights).

    Run: ``output``, ``device``, ``workers``, ``threads`` (recorded; the CLI sets torch's thread count),
    ``command`` (recorded).
    """
    data: str = 'fashion-scenes'
    root: Optional[str] = None
    preset: Optional[str] = None
    dataset_seed: int = 0
    dataset_overrides: Dict[str, Any] = field(default_factory=dict)
    model: str = 'srdl_efficientnet_lite0'
    backbone: Optional[str] = None
    pretrained_backbone: bool = True
    label_embeddings: str = 'auto'
    mode: str = 'quick'
    trainer: Optional[str] = None
    rows: Optional[Sequence[str]] = None
    seeds: Optional[Sequence[int]] = None
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    warmup_epochs: Optional[float] = None
    optimizer: Optional[str] = None
    loss: str = 'bce'
    row_lr: Dict[str, float] = field(default_factory=dict)
    loss_reduction: str = 'mean'
    img_size: Optional[int] = None
    train_stages: Optional[int] = None
    output_stride: Optional[int] = None
    batchnorm: Optional[str] = None
    zero_init_spatial: bool = True
    graph_kind: str = 'auto'
    graph_neighbors: int = 16
    dataset_seeds: Optional[Sequence[int]] = None
    oe_topk: int = DEFAULT_OE_TOPK
    oe_alpha: float = DEFAULT_OE_ALPHA
    amp: Optional[bool] = None
    val_every_epoch: bool = False
    sweeps: bool = False
    sweep_topk: Optional[Sequence[int]] = None
    sweep_alpha: Optional[Sequence[float]] = None
    sweep_seeds: Optional[Sequence[int]] = None
    overlays: Optional[int] = None
    bootstrap: Optional[int] = None
    export: Optional[str] = None
    register: Optional[str] = None
    manifest: Optional[str] = None
    output: str = 'benchmark-results'
    device: Optional[str] = None
    workers: Optional[int] = None
    threads: Optional[int] = None
    command: Optional[str] = None

    def resolved(self) -> 'BenchmarkConfig':
        """A copy with every None field filled from the mode (:data:`MODES`), validated.

        Raises:
            ValueError: an unknown data source, mode, trainer or row, or an out-of-range value.
        """
        if self.data not in DATA_SOURCES:
            raise ValueError(f'unknown --data {self.data!r}; choose one of {list(DATA_SOURCES)}')
        mode = 'paper' if self.data in ('coco', 'voc') else self.mode
        if mode not in MODES:
            raise ValueError(f'unknown mode {self.mode!r}; choose one of {[m for m in MODES if m != "paper"]}')
        cfg = dataclasses.replace(self, mode=mode, rows=None if self.rows is None else tuple(self.rows),
                                  dataset_overrides=dict(self.dataset_overrides),
                                  row_lr={k: float(v) for k, v in self.row_lr.items()})
        defaults = MODES[mode]
        for key, value in defaults.items():
            if getattr(cfg, key, None) is None:
                setattr(cfg, key, value)
        if cfg.batchnorm is None:
            cfg.batchnorm = 'frozen'
        if cfg.dataset_seeds is None:
            cfg.dataset_seeds = defaults.get('dataset_seeds', (cfg.dataset_seed,))
        for key in ('seeds', 'sweep_topk', 'sweep_alpha', 'sweep_seeds', 'dataset_seeds'):
            setattr(cfg, key, tuple(getattr(cfg, key)))
        if cfg.rows is None:
            cfg.rows = defaults.get('rows', SRDL_ROWS)
        unknown = [r for r in cfg.rows if r not in ROWS]
        if unknown or not cfg.rows:
            raise ValueError(f'unknown --rows {unknown or "(none)"}; choose from {list(ROWS)}')
        if len(set(cfg.rows)) != len(cfg.rows):
            raise ValueError(f'--rows lists a row twice: {list(cfg.rows)}')
        cfg.rows = tuple(cfg.rows)  # the order given is the order of the jobs and of the tables
        if cfg.trainer not in TRAINERS:
            raise ValueError(f'unknown --trainer {cfg.trainer!r}; choose one of {list(TRAINERS)}')
        if cfg.trainer == 'frozen-trunk' and cfg.data != 'fashion-scenes':
            raise ValueError('--trainer frozen-trunk has no augmentation and is meant for the embedded benchmark; '
                             'COCO/VOC use --trainer fit (the paper recipe)')
        if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds) or any(s < 0 for s in cfg.seeds):
            raise ValueError(f'--seeds must be distinct non-negative ints, got {list(cfg.seeds)}')
        if cfg.epochs is not None and cfg.epochs < 1:
            raise ValueError(f'--epochs must be >= 1, got {cfg.epochs}')
        if cfg.batch_size is not None and cfg.batch_size < 1:
            raise ValueError(f'--batch-size must be >= 1, got {cfg.batch_size}')
        if cfg.lr is not None and not 0 < cfg.lr <= 1:
            raise ValueError(f'--lr must be in (0, 1], got {cfg.lr}')
        if cfg.train_stages is not None and cfg.train_stages < 0:
            raise ValueError(f'--train-stages must be >= 0, got {cfg.train_stages}')
        if cfg.oe_topk < 1 or not 0 < cfg.oe_alpha < 1:
            raise ValueError(f'--oe-topk must be >= 1 and --oe-alpha in (0, 1), got {cfg.oe_topk}, {cfg.oe_alpha}')
        if any(k < 1 for k in cfg.sweep_topk) or any(not 0 < a < 1 for a in cfg.sweep_alpha):
            raise ValueError('--sweep-topk values must be >= 1 and --sweep-alpha values in (0, 1)')
        if cfg.overlays < 0 or cfg.bootstrap < 0:
            raise ValueError('--overlays and --bootstrap must be >= 0')
        if cfg.register and not cfg.export:
            raise ValueError('--register TAG needs --export DIR (the folder whose weights are registered)')
        if (cfg.export or cfg.register) and 'car_oe' not in cfg.rows:
            raise ValueError('--export/--register ship the CAR + OE model: include car_oe in --rows')
        if cfg.trainer == 'frozen-trunk' and cfg.optimizer not in (None, 'adamw'):
            raise ValueError(f'the frozen-trunk trainer uses AdamW; --opt {cfg.optimizer} needs --trainer fit')
        bad_lr = {k: v for k, v in cfg.row_lr.items() if k not in ROWS or not 0 < float(v) <= 1}
        if bad_lr:
            raise ValueError(f'--row-lr: unknown rows or learning rates outside (0, 1]: {bad_lr}')
        if cfg.loss not in LOSSES:
            raise ValueError(f'--loss must be one of {list(LOSSES)}, got {cfg.loss!r}')
        if cfg.loss_reduction not in ('mean', 'sum'):
            raise ValueError(f"--loss-reduction must be 'mean' or 'sum', got {cfg.loss_reduction!r}")
        if cfg.data != 'fashion-scenes' and not cfg.root:
            raise ValueError(f'--data {cfg.data} needs --root PATH (the dataset folder)')
        if cfg.batchnorm not in ('frozen', 'train'):
            raise ValueError(f"--batchnorm must be 'frozen' or 'train', got {cfg.batchnorm!r}")
        if cfg.output_stride is not None and cfg.output_stride not in (8, 16, 32):
            raise ValueError(f'--output-stride must be 8, 16 or 32, got {cfg.output_stride}')
        if not cfg.model.startswith('srdl_'):
            raise ValueError(f'--model must be an srdl_* architecture (the rows are SRDL ablations), got {cfg.model!r}')
        if cfg.amp is None:
            cfg.amp = False
        return cfg

    def lr_for(self, row: str) -> float:
        """The row's learning rate: its entry of ``row_lr`` (chosen per row on validation data), else ``lr``."""
        return float(self.row_lr.get(row, self.lr))

    def loss_for(self, row: str) -> str:
        """The row's per-entry loss: the row's own (:attr:`Row.loss`), else ``loss``."""
        return ROWS[row].loss or self.loss

    def to_dict(self) -> Dict[str, Any]:
        """JSON-friendly dict of every field."""
        return jsonable(dataclasses.asdict(self))
