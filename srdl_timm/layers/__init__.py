from .car import ATTENTION_VARIANTS, CategoryAttention, CategoryClassifier
from .label_graph import LabelGraph
from .oe import ObjectErasing, erase_region, peak_interval
