"""Label names (:mod:`.names`), their word vectors (:mod:`.vectors`, :mod:`.word_vectors`) and per-class decision
thresholds (:mod:`.thresholds`)."""
from .names import (
    KNOWN_LABEL_SETS, known_label_names, known_label_set, model_label_names, read_label_file, resolve_label_names,
    store_label_names)
from .thresholds import (
    DEFAULT_THRESHOLD, THRESHOLDS_INFO_KEY, THRESHOLDS_KEY, TUNING_RULES, LabelThresholds, check_threshold_values,
    model_label_thresholds, read_thresholds_file, same_split, split_fingerprint, store_label_thresholds,
    tune_thresholds)
from .vectors import (
    COMPOUND_SPLITS, RANDOM_FALLBACK, LabelEmbeddingSpec, LabelVectors, embed_label_names, label_tokens,
    label_vectors, resolve_label_nodes, shipped_label_embeddings)
from .word_vectors import DEFAULT_SOURCE, WordVectors, load_word_vectors

__all__ = [
    'KNOWN_LABEL_SETS', 'known_label_names', 'known_label_set', 'model_label_names', 'read_label_file',
    'resolve_label_names', 'store_label_names', 'COMPOUND_SPLITS', 'RANDOM_FALLBACK', 'LabelEmbeddingSpec',
    'LabelVectors', 'embed_label_names', 'label_tokens', 'label_vectors', 'resolve_label_nodes',
    'shipped_label_embeddings', 'DEFAULT_SOURCE', 'WordVectors', 'load_word_vectors', 'DEFAULT_THRESHOLD',
    'THRESHOLDS_INFO_KEY', 'THRESHOLDS_KEY', 'TUNING_RULES', 'LabelThresholds', 'check_threshold_values',
    'model_label_thresholds', 'read_thresholds_file', 'same_split', 'split_fingerprint', 'store_label_thresholds',
    'tune_thresholds',
]
