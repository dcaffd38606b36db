"""Per-class decision thresholds of a multi-label model: tuning, the one store on a model, and their JSON form.

:func:`tune_thresholds` picks each class's threshold on a held-out split (best F1) and records which split, so no
report measures thresholds on the images they were tuned on. A model carries them in ``label_thresholds`` (not in
timm's ``pretrained_cfg``, whose loader rejects unknown keys); on disk they are the top-level ``label_thresholds``
and ``label_thresholds_info`` of config.json, train_config.json or a thresholds file.
"""
import dataclasses
import hashlib
import json
import logging
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch.nn as nn

from ..errors import InputError

__all__ = ['THRESHOLDS_KEY', 'THRESHOLDS_INFO_KEY', 'DEFAULT_THRESHOLD', 'TUNING_RULES', 'LabelThresholds',
           'check_threshold_values', 'tune_thresholds', 'split_fingerprint', 'same_split', 'model_label_thresholds',
           'store_label_thresholds', 'read_thresholds_file']

_logger = logging.getLogger(__name__)

#: the config / thresholds-file keys: one probability per class, and how they were chosen
THRESHOLDS_KEY = 'label_thresholds'
THRESHOLDS_INFO_KEY = 'label_thresholds_info'
#: the threshold of a class that could not be tuned (no positive in the tuning split), and of the paper's metrics
DEFAULT_THRESHOLD = 0.5
#: how :func:`tune_thresholds` chooses a class's threshold, by rule name
TUNING_RULES = {
    'f1': 'per class, the probability threshold with the best F1 on the tuning split (the highest such threshold '
          'on ties), placed halfway (in logit space) between the lowest score called present and the highest score '
          'called absent; a class without a positive there keeps 0.5',
}
_MARGIN = 1e-6  # tuned thresholds stay inside (0, 1)


def check_threshold_values(values: Any, num_classes: Optional[int], where: str) -> List[float]:
    """``values`` as a list of floats, one probability in (0, 1) per class (else :class:`InputError` naming
    ``where``)."""
    if not isinstance(values, (list, tuple)) or not values or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 < float(v) < 1.0 for v in values):
        shown = json.dumps(values) if isinstance(values, (list, tuple, str, int, float, type(None))) else repr(values)
        raise InputError(f'{where}: "{THRESHOLDS_KEY}" must be a list of probabilities strictly between 0 and 1, one '
                         f'per class in output order, got {shown[:200]}')
    if num_classes is not None and len(values) != num_classes:
        raise InputError(f'{where}: "{THRESHOLDS_KEY}" holds {len(values)} thresholds for {num_classes} classes: give '
                         'one per class, in output order')
    return [float(v) for v in values]


@dataclasses.dataclass(frozen=True)
class LabelThresholds:
    """Per-class decision thresholds: ``values[c]`` is the probability at or above which class ``c`` is present;
    ``info`` says how they were chosen (``rule``, ``description``, ``tuned_on``, ``untuned``, ``tool``)."""
    values: tuple
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, 'values', tuple(check_threshold_values(list(self.values), None, 'label thresholds')))
        object.__setattr__(self, 'info', dict(self.info or {}))

    def __len__(self) -> int:
        return len(self.values)

    @property
    def tuned_on(self) -> Optional[Dict[str, Any]]:
        """The split they were tuned on (see :func:`split_fingerprint`), None when not recorded."""
        tuned_on = self.info.get('tuned_on')
        return dict(tuned_on) if isinstance(tuned_on, Mapping) else None

    def describe(self) -> str:
        """One line: per-class, how and where tuned, the range of values."""
        v = np.asarray(self.values)
        rule = self.info.get('rule', 'given')
        how = 'best F1 per class' if rule == 'f1' else str(rule)
        text = f'per class ({how}'
        tuned_on = self.tuned_on
        if tuned_on:
            text += f', tuned on {tuned_on.get("data")} split {tuned_on.get("split")!r}'
            if tuned_on.get('num_images') is not None:
                text += f' ({tuned_on["num_images"]} images)'
        untuned = self.info.get('untuned') or []
        if untuned:
            text += f'; {len(untuned)} class(es) without a positive there kept {DEFAULT_THRESHOLD}'
        return text + f'): min {v.min():.3f}, median {float(np.median(v)):.3f}, max {v.max():.3f}'

    def to_json(self) -> Dict[str, Any]:
        """``{'label_thresholds': [...], 'label_thresholds_info': {...}}`` (the config / file keys)."""
        return {THRESHOLDS_KEY: [float(v) for v in self.values], THRESHOLDS_INFO_KEY: dict(self.info)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], where: str,
                  num_classes: Optional[int] = None) -> Optional['LabelThresholds']:
        """The thresholds a config / thresholds file holds (None when none; :class:`InputError` naming ``where``)."""
        values = doc.get(THRESHOLDS_KEY)
        if values is None:
            return None
        values = check_threshold_values(values, num_classes, where)
        info = doc.get(THRESHOLDS_INFO_KEY) or {}
        if not isinstance(info, Mapping):
            raise InputError(f'{where}: "{THRESHOLDS_INFO_KEY}" must be a JSON object, got {json.dumps(info)[:100]}')
        return cls(tuple(values), info)


def split_fingerprint(image_paths: Sequence[str], root: str, data: str, split: str) -> Dict[str, Any]:
    """What identifies a dataset split: ``data``, ``split``, the absolute ``root``, ``num_images`` and
    ``images_sha256``, the sha256 of its sorted image paths relative to ``root`` (stable when the folder moves)."""
    root_abs = os.path.abspath(root)
    names = sorted(os.path.relpath(os.path.abspath(p), root_abs).replace(os.sep, '/') for p in image_paths)
    digest = hashlib.sha256('\n'.join(names).encode('utf-8')).hexdigest()
    return dict(data=data, split=split, root=root_abs, num_images=len(names), images_sha256=digest)


def same_split(a: Optional[Mapping[str, Any]], b: Optional[Mapping[str, Any]]) -> bool:
    """Whether two :func:`split_fingerprint` records name the same images (False when either is unknown)."""
    return bool(a and b and a.get('images_sha256') and a.get('images_sha256') == b.get('images_sha256'))


def _best_f1_threshold(logits: np.ndarray, positive: np.ndarray) -> float:
    """The logit threshold of one class by the 'f1' rule (``logits`` and ``positive`` over its labelled entries)."""
    order = np.argsort(-logits, kind='stable')
    s, y = logits[order], positive[order]
    tp = np.cumsum(y, dtype=np.float64)
    fp = np.cumsum(~y, dtype=np.float64)
    last = np.r_[s[1:] != s[:-1], True]  # cut only after a whole group of tied scores
    idx = np.flatnonzero(last)
    f1 = 2 * tp[idx] / (tp[idx] + fp[idx] + y.sum())
    k = idx[int(np.argmax(f1))]  # first maximum: the highest threshold
    below = s[k + 1] if k + 1 < len(s) else s[k] - 1.0
    return float((s[k] + below) / 2)


def tune_thresholds(
        logits: Any,
        targets: Any,
        rule: str = 'f1',
        label_names: Optional[Sequence[str]] = None,
        tuned_on: Optional[Mapping[str, Any]] = None,
        tool: Optional[str] = None,
) -> LabelThresholds:
    """Per-class thresholds (``rule``: a key of :data:`TUNING_RULES`) from a split's ``[N, C]`` logits and targets
    (1 / 0 / -1, the -1 entries left out), recording ``tuned_on`` and ``tool``; a class without a positive keeps
    :data:`DEFAULT_THRESHOLD` and is named in ``info['untuned']``."""
    if rule not in TUNING_RULES:
        raise InputError(f'unknown threshold rule {rule!r}; choose one of {sorted(TUNING_RULES)}')
    x = np.asarray(logits, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    if x.ndim != 2 or x.shape != t.shape:
        raise ValueError(f'logits {x.shape} and targets {t.shape} must both be [N, C]')
    if not np.isfinite(x).all():
        raise ValueError('logits contain NaN or infinite values')
    values, untuned = [], []
    for c in range(x.shape[1]):
        valid = t[:, c] != -1
        positive = t[valid, c] == 1
        if not positive.any():
            values.append(DEFAULT_THRESHOLD)
            untuned.append(str(label_names[c]) if label_names is not None else c)
            continue
        logit = _best_f1_threshold(x[valid, c], positive)
        values.append(min(max(1.0 / (1.0 + math.exp(-logit)), _MARGIN), 1.0 - _MARGIN))
    if untuned:
        _logger.warning('%d class(es) without a positive in the tuning split keep the threshold %s: %s', len(untuned),
                        DEFAULT_THRESHOLD, ', '.join(map(str, untuned[:10])) + (' ...' if len(untuned) > 10 else ''))
    info: Dict[str, Any] = dict(rule=rule, description=TUNING_RULES[rule], tuned_on=dict(tuned_on or {}) or None,
                                untuned=untuned)
    if tool:
        info['tool'] = tool
    return LabelThresholds(tuple(values), info)


def model_label_thresholds(model: nn.Module) -> Optional[LabelThresholds]:
    """The model's per-class thresholds (its ``label_thresholds``), None when it carries none or they do not fit its
    class count."""
    thresholds = getattr(model, 'label_thresholds', None)
    if not isinstance(thresholds, LabelThresholds):
        return None
    num_classes = getattr(model, 'num_classes', None)
    if num_classes is not None and len(thresholds) != num_classes:
        _logger.warning('ignoring %d label thresholds for a model with %d classes', len(thresholds), num_classes)
        return None
    return thresholds


def store_label_thresholds(model: nn.Module, thresholds: Union[None, LabelThresholds, Sequence[float]],
                           where: str = 'label_thresholds') -> Optional[LabelThresholds]:
    """Set (or clear, with None) ``model.label_thresholds``; thresholds whose count is not the model's class
    count belong to another head and are dropped. Returns what the model now carries."""
    if thresholds is not None and not isinstance(thresholds, LabelThresholds):
        thresholds = LabelThresholds(tuple(check_threshold_values(list(thresholds), None, where)), {'rule': 'given'})
    num_classes = getattr(model, 'num_classes', None)
    if thresholds is not None and num_classes is not None and len(thresholds) != num_classes:
        _logger.info('%s: %d thresholds for %d classes belong to another classifier; not kept', where,
                     len(thresholds), num_classes)
        thresholds = None
    model.label_thresholds = thresholds
    return thresholds


def read_thresholds_file(path: str, num_classes: Optional[int] = None,
                         label_names: Optional[Sequence[str]] = None) -> LabelThresholds:
    """The thresholds of a JSON file holding ``label_thresholds``; its ``label_names``, when listed, must be
    ``label_names`` (an :class:`InputError` otherwise)."""
    try:
        with open(path, encoding='utf-8-sig') as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise InputError(f'thresholds file not found: {path}') from None
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f'{path}: not valid JSON ({e}); give a file written by srdl-validate --tune-thresholds') \
            from e
    if not isinstance(doc, Mapping) or doc.get(THRESHOLDS_KEY) is None:
        raise InputError(f'{path} holds no "{THRESHOLDS_KEY}": give a file written by srdl-validate '
                         '--tune-thresholds, or a config.json / train_config.json that records them')
    thresholds = LabelThresholds.from_json(doc, path, num_classes)
    names = doc.get('label_names')
    if names is not None and label_names is not None and [str(n) for n in names] != [str(n) for n in label_names]:
        raise InputError(f'{path}: its thresholds are for the classes {list(names)[:5]}..., not the model\'s '
                         f'{list(label_names)[:5]}...: tune them for these weights')
    assert thresholds is not None
    return thresholds
