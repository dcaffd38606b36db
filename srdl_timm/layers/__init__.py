from .car import ATTENTION_VARIANTS, CategoryAttention, CategoryClassifier
from .label_graph import LabelGraph, resolve_graph_kind, state_graph_kind
from .oe import ObjectErasing, erase_region, peak_interval
