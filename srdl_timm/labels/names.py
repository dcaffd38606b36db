"""A model's label names: one store (timm's ``pretrained_cfg['label_names']``), one reader (:func:`model_label_names`),
one writer (:func:`store_label_names`); :func:`resolve_label_names` adds a user's label file and ``class_<i>``
placeholders."""
import json
import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch.nn as nn

from ..data.label_sets import COCO_CLASSES, VOC_CLASSES
from ..errors import InputError
from ..utils import read_label_names

__all__ = ['KNOWN_LABEL_SETS', 'known_label_set', 'known_label_names', 'model_label_names', 'store_label_names',
           'read_label_file', 'resolve_label_names']

_logger = logging.getLogger(__name__)

#: the benchmarks' label sets (``'coco'``: 80 classes, ``'voc'``: 20), whose node vectors ship with the package
KNOWN_LABEL_SETS: Dict[str, Tuple[str, ...]] = {'coco': COCO_CLASSES, 'voc': VOC_CLASSES}


def known_label_set(num_classes: int, label_names: Optional[Sequence[str]] = None) -> Optional[str]:
    """``'coco'`` / ``'voc'`` when the classes are that benchmark's (its class count, and no names or its own
    names in its order), else None."""
    for key, names in KNOWN_LABEL_SETS.items():
        if num_classes == len(names) and (label_names is None or [str(n) for n in label_names] == list(names)):
            return key
    return None


def known_label_names(num_classes: int) -> Optional[List[str]]:
    """The COCO-80 / VOC-20 class names for those class counts, else None."""
    key = known_label_set(num_classes)
    return None if key is None else list(KNOWN_LABEL_SETS[key])


def _name_list(names: Any) -> Optional[List[str]]:
    """Names as a list of strings; timm also allows an ``{index: name}`` dict, taken in index order."""
    if not names:
        return None
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names, key=int)]
    return [str(n) for n in names]


def model_label_names(model: nn.Module, num_classes: Optional[int] = None) -> Optional[List[str]]:
    """The model's label names in output order (``pretrained_cfg``, else an SRDL's own), or None when it carries
    none whose count is ``num_classes`` (a mismatching list is ignored with a warning)."""
    if num_classes is None:
        num_classes = getattr(model, 'num_classes', None)
    candidates = (
        ("pretrained_cfg['label_names']", (getattr(model, 'pretrained_cfg', None) or {}).get('label_names')),
        ('model.label_names', getattr(model, 'label_names', None)),
    )
    for where, names in candidates:
        names = _name_list(names)
        if names is None:
            continue
        if num_classes is not None and len(names) != num_classes:
            _logger.warning('ignoring %s: %d names for a model with %d classes', where, len(names), num_classes)
            continue
        return names
    return None


def store_label_names(model: nn.Module, names: Optional[Sequence[str]] = None,
                      num_classes: Optional[int] = None) -> Optional[List[str]]:
    """Set the model's label names to ``names``; with None keep the stored ones when their count is the model's
    class count, else drop them. Returns the names the model now carries."""
    cfg = getattr(model, 'pretrained_cfg', None)
    if num_classes is None:
        num_classes = getattr(model, 'num_classes', None)
    if names is None and isinstance(cfg, dict):
        names = _name_list(cfg.get('label_names'))
        if names is not None and num_classes is not None and len(names) != num_classes:
            names = None
    names = _name_list(names)
    if isinstance(cfg, dict) and (names is not None or cfg.get('label_names')):
        cfg['label_names'] = tuple(names) if names is not None else None
    if hasattr(model, 'label_names'):
        model.label_names = names
    return names


def read_label_file(path: str) -> List[str]:
    """Label names from a file: a JSON list (or an object with ``label_names``) for ``.json``, else one name a
    line (:func:`srdl_timm.utils.read_label_names`; a UTF-8 BOM is skipped)."""
    if not str(path).lower().endswith('.json'):
        return read_label_names(path)
    if not os.path.isfile(path):
        raise InputError(f'label-name file not found: {path}')
    try:
        with open(path, encoding='utf-8-sig') as f:
            names = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f'{path}: not valid JSON ({e})') from e
    if isinstance(names, dict):
        names = names.get('label_names', names.get('labels'))
    if not isinstance(names, list) or not names:
        raise InputError(f'{path}: expected a JSON list of names (or an object with "label_names")')
    return [str(n) for n in names]


def resolve_label_names(model: nn.Module, num_classes: int, label_file: Optional[str] = None) -> List[str]:
    """Names for the model's ``num_classes`` outputs: ``label_file`` (:func:`read_label_file`; must hold
    ``num_classes`` names), else :func:`model_label_names`, else ``class_0 … class_{C-1}`` with a warning."""
    if label_file:
        names = read_label_file(label_file)
        if len(names) != num_classes:
            raise InputError(f'{label_file} holds {len(names)} label names but the model has {num_classes} outputs')
        return names
    names = model_label_names(model, num_classes)
    if names:
        return names
    _logger.warning('the model carries no label names: using class_0 … class_%d (pass a label-name file, e.g. '
                    '--label-names FILE)', num_classes - 1)
    return [f'class_{i}' for i in range(num_classes)]
