"""The offline benchmark harness behind ``benchmarks/run_offline.py`` (torchvision-references style: scripts and
helpers beside the library, importing only its public API).

Modules: :mod:`.config` (rows, modes, :class:`BenchmarkConfig`), :mod:`.data` (Fashion Scenes / COCO / VOC),
:mod:`.trunk` (the frozen-trunk trainer), :mod:`.runs` (one run of one row and seed), :mod:`.stats` (metrics,
hierarchical bootstrap), :mod:`.attention_stats` (pointing games, map similarity), :mod:`.report` and :mod:`.figures` (tables and plots),
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
from .report import compare_folders, format_per_class, format_table
from .runs import Context, RunResult, create_model, execute, prepare_frozen_trunk
from .attention_stats import (attention_statistics, class_discriminative_pointing_game, map_similarity,
                              pointing_game)
from .stats import (hierarchical_bootstrap, load_boxes, metrics_from_logits, predict_logits,
                    resampled_average_precision, summarize)
from .trunk import FrozenTrunk, extract_trunk_features, train_frozen_trunk

__all__ = [
    'DATA_SOURCES', 'DATA_SPLITS', 'DEFAULT_OE_ALPHA', 'DEFAULT_OE_TOPK', 'METRIC_LABELS', 'MODES', 'PEER_ROWS',
    'ROW_ORDER', 'ROWS', 'SCALAR_METRICS', 'SRDL_ROWS', 'TABLE2_METRICS', 'TABLE_METRICS', 'TRAINERS',
    'BenchmarkConfig', 'Row', 'DataSpec', 'default_data_root', 'prepare_data', 'hardware_info', 'software_versions',
    'export_weights', 'report_from_results', 'run_benchmark', 'run_dataset_seeds', 'compare_folders',
    'format_per_class', 'format_table', 'Context',
    'RunResult', 'create_model', 'execute', 'prepare_frozen_trunk', 'load_boxes', 'metrics_from_logits',
    'hierarchical_bootstrap', 'pointing_game', 'attention_statistics', 'class_discriminative_pointing_game',
    'map_similarity', 'predict_logits', 'resampled_average_precision', 'summarize',
    'FrozenTrunk', 'extract_trunk_features', 'train_frozen_trunk',
]
