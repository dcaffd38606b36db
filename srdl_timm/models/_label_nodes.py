"""Initial label-graph nodes ``A^0`` (paper eq. 3) for an SRDL head: shipped, given, looked up or seeded random.

The model file calls :func:`resolve_label_nodes`; word-vector sources themselves live in :mod:`srdl_timm.embeddings`.
"""
import logging
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

__all__ = ['LabelEmbeddingSpec', 'known_label_names', 'known_label_set', 'resolve_label_nodes']

_logger = logging.getLogger('srdl_timm.models.srdl')

LabelEmbeddingSpec = Union[None, str, np.ndarray, Tensor, Sequence[Sequence[float]]]

#: label sets whose GloVe 6B 50-d node vectors ship with the package (srdl_timm/assets), by class count
_SHIPPED_LABEL_SETS = {80: 'coco', 20: 'voc'}


def _random_label_embeddings(num_classes: int, embed_dim: int, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num_classes, embed_dim, generator=generator)


def known_label_set(num_classes: int, label_names: Optional[Sequence[str]]) -> Optional[str]:
    """'coco' / 'voc' when the classes are that benchmark's (its class count with no or its own names)."""
    from ..data.label_sets import COCO_CLASSES, VOC_CLASSES
    key = _SHIPPED_LABEL_SETS.get(num_classes)
    if key is None:
        return None
    names = COCO_CLASSES if key == 'coco' else VOC_CLASSES
    return key if label_names is None or list(label_names) == list(names) else None


def known_label_names(num_classes: int) -> Optional[List[str]]:
    """The COCO-80 / VOC-20 class names for those class counts, else None."""
    from ..data.label_sets import COCO_CLASSES, VOC_CLASSES
    key = _SHIPPED_LABEL_SETS.get(num_classes)
    return None if key is None else list(COCO_CLASSES if key == 'coco' else VOC_CLASSES)


def resolve_label_nodes(
        label_embeddings: LabelEmbeddingSpec,
        num_classes: int,
        embed_dim: Optional[int],
        label_names: Optional[Sequence[str]],
) -> Tuple[Tensor, str, Optional[List[str]]]:
    """Word vectors ``A^0`` for the label graph (eq. 3): ``([C, d'] float tensor, source, label names | None)``.

    ``None`` gives the shipped COCO-80 / VOC-20 GloVe vectors when the classes are that benchmark's (and
    ``embed_dim`` is unset or 50), else seeded random nodes with a warning; ``'random'`` gives the seeded random
    nodes without one (e.g. placeholders that pretrained weights replace).
    """
    source = 'given'
    names = None
    if label_embeddings is None:
        key = known_label_set(num_classes, label_names)
        if key is not None and embed_dim in (None, 50):
            from ..embeddings import shipped_label_embeddings
            shipped_names, array = shipped_label_embeddings(key)
            return torch.from_numpy(array), key, shipped_names
        width = embed_dim or 300
        _logger.warning(
            'SRDL label-graph nodes initialised from a seeded random normal (%d x %d): no label_embeddings given. '
            'Pass label_embeddings="coco"/"voc"/"glove-6b-50d"/a .npy path/an array, or load pretrained weights.',
            num_classes, width)
        return _random_label_embeddings(num_classes, width), 'random', None
    if isinstance(label_embeddings, str) and label_embeddings == 'random':
        return _random_label_embeddings(num_classes, embed_dim or 300), 'random', None
    if isinstance(label_embeddings, Tensor):
        array = label_embeddings.detach().cpu().float()
    elif isinstance(label_embeddings, np.ndarray) or (
            isinstance(label_embeddings, (list, tuple)) and label_embeddings and not isinstance(label_embeddings[0], str)):
        array = torch.as_tensor(np.asarray(label_embeddings, dtype=np.float32))
    else:
        from ..embeddings import resolve_label_embeddings
        key = str(label_embeddings).lower() if isinstance(label_embeddings, str) else None
        if key in ('coco', 'voc') and label_names is None:
            from ..embeddings import shipped_label_embeddings
            names = shipped_label_embeddings(key)[0]
        array = torch.as_tensor(np.asarray(resolve_label_embeddings(label_embeddings, label_names), dtype=np.float32))
        source = str(label_embeddings)
    if array.ndim != 2 or array.shape[0] != num_classes:
        raise ValueError(
            f'label_embeddings must have shape [num_classes={num_classes}, embed_dim], got {tuple(array.shape)}')
    if not torch.isfinite(array).all():
        raise ValueError('label_embeddings contain NaN or inf')
    return array, source, names
