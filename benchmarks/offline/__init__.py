"""The offline benchmark harness behind ``benchmarks/run_offline.py`` (torchvision-references style: scripts and
helpers beside the library, importing only its public API).

Modules: :mod:`.config` (rows, modes, :class:`BenchmarkConfig`), :mod:`.data` (Fashion Scenes / COCO / VOC),
:mod:`.trunk` (the frozen-trunk trainer), :mod:`.runs` (one run of one row and seed), :mod:`.stats` (metrics,
paired bootstrap, attention pointing game), :mod:`.report` and :mod:`.figures` (tables and plots),
:mod:`.export` (shipping weights), :mod:`.environment` (hardware and versions), :mod:`.pipeline` (the whole
benchmark).
"""
from .config import (DATA_SOURCES, DATA_SPLITS, DEFAULT_OE_ALPHA, DEFAULT_OE_TOPK, METRIC_LABELS, MODES, PEER_ROWS,
                     ROW_ORDER, ROWS, SCALAR_METRICS, SRDL_ROWS, TABLE2_METRICS, TABLE_METRICS, TRAINERS,
                     BenchmarkConfig, Row)
from .data import DataSpec, default_data_root, prepare_data
from .environment import hardware_info, software_versions
from .export import export_weights
from .pipeline import report_from_results, run_benchmark, run_dataset_seeds
from .report import format_per_class, format_table
from .runs import Context, RunResult, create_model, execute, prepare_frozen_trunk
from .stats import (load_boxes, metrics_from_logits, paired_bootstrap, pointing_game, predict_logits,
                    resampled_average_precision, summarize)
from .trunk import FrozenTrunk, extract_trunk_features, train_frozen_trunk

__all__ = [
    'DATA_SOURCES', 'DATA_SPLITS', 'DEFAULT_OE_ALPHA', 'DEFAULT_OE_TOPK', 'METRIC_LABELS', 'MODES', 'PEER_ROWS',
    'ROW_ORDER', 'ROWS', 'SCALAR_METRICS', 'SRDL_ROWS', 'TABLE2_METRICS', 'TABLE_METRICS', 'TRAINERS',
    'BenchmarkConfig', 'Row', 'DataSpec', 'default_data_root', 'prepare_data', 'hardware_info', 'software_versions',
    'export_weights', 'report_from_results', 'run_benchmark', 'run_dataset_seeds', 'format_per_class', 'format_table', 'Context',
    'RunResult', 'create_model', 'execute', 'prepare_frozen_trunk', 'load_boxes', 'metrics_from_logits',
    'paired_bootstrap', 'pointing_game', 'predict_logits', 'resampled_average_precision', 'summarize',
    'FrozenTrunk', 'extract_trunk_features', 'train_frozen_trunk',
]
