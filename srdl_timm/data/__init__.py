"""Multi-label data: COCO, VOC and custom datasets (targets ``[C]``: 1 / 0 / -1 ignore), transforms (§4.2), loaders."""
from .coco import CocoFormatMultiLabel, CocoMultiLabel, coco_multilabel_targets, load_coco_json
from .custom import LABELS_FROM_FILE, CocoJsonMultiLabel, CsvMultiLabel, read_label_names
from .factory import DATASETS, DEFAULT_SPLITS, create_multilabel_dataset, create_multilabel_loader
from .images import MultiLabelDataset, UnreadableImageError, open_image
from .label_sets import COCO_CATEGORY_IDS, COCO_CLASSES, VOC_CLASSES
from .samplers import (
    DistributedEvalSampler, EpochBatchSampler, SeededDataset, all_gather_concat, derive_seed, get_rank_world,
    init_distributed_from_env, is_dist_initialized)
from .transforms import PAPER_RESIZE, PAPER_SCALES, RandomSquareCrop, create_paper_transform, scaled_crop_sides
from .voc import DIFFICULT_POLICIES, VocMultiLabel, find_voc_root, parse_voc_xml

__all__ = [
    'create_multilabel_dataset', 'create_multilabel_loader', 'create_paper_transform', 'DATASETS', 'DEFAULT_SPLITS',
    'MultiLabelDataset', 'CocoMultiLabel', 'CocoFormatMultiLabel', 'CocoJsonMultiLabel', 'CsvMultiLabel',
    'LABELS_FROM_FILE', 'VocMultiLabel', 'open_image', 'UnreadableImageError', 'load_coco_json', 'coco_multilabel_targets',
    'read_label_names', 'find_voc_root', 'parse_voc_xml', 'DIFFICULT_POLICIES',
    'RandomSquareCrop', 'scaled_crop_sides', 'PAPER_RESIZE', 'PAPER_SCALES',
    'DistributedEvalSampler', 'all_gather_concat', 'get_rank_world', 'init_distributed_from_env',
    'is_dist_initialized', 'EpochBatchSampler', 'SeededDataset', 'derive_seed',
    'COCO_CLASSES', 'COCO_CATEGORY_IDS', 'VOC_CLASSES',
]
