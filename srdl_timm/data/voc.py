"""Pascal VOC 2007 multi-label dataset (paper §4.1, 20 classes) from the devkit's XML annotations."""
import logging
import os
import xml.etree.ElementTree as ET
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from .images import AnnotationError, MultiLabelDataset, check_files_exist
from .label_sets import VOC_CLASSES

__all__ = ['VocMultiLabel', 'find_voc_root', 'parse_voc_xml', 'VOC_SPLITS', 'DIFFICULT_POLICIES']

_logger = logging.getLogger(__name__)

VOC_SPLITS = ('trainval', 'test', 'train', 'val')
DIFFICULT_POLICIES = ('positive', 'negative', 'ignore')
_POLICY_VALUE = {'positive': 1.0, 'negative': 0.0, 'ignore': -1.0}


def find_voc_root(root: str, year: str = '2007') -> str:
    """The ``VOC{year}`` folder under ``root``, else a FileNotFoundError listing the candidates."""
    root = os.fspath(root)
    candidates = [os.path.join(root, 'VOCdevkit', f'VOC{year}'), os.path.join(root, f'VOC{year}'), root]
    for c in candidates:
        if os.path.isdir(os.path.join(c, 'Annotations')) and os.path.isdir(os.path.join(c, 'ImageSets', 'Main')):
            return c
    raise FileNotFoundError(f'no VOC{year} folder (with Annotations/ and ImageSets/Main/) found; tried: '
                            + ', '.join(candidates))


def parse_voc_xml(xml_file: str, class_index: dict) -> Tuple[np.ndarray, np.ndarray]:
    """Per-class ``(present, difficult_only)`` boolean vectors of one VOC annotation file (errors name the file)."""
    if not os.path.isfile(xml_file):
        raise FileNotFoundError(f'VOC annotation file not found: {xml_file}')
    try:
        tree = ET.parse(xml_file)
    except ET.ParseError as e:
        raise AnnotationError(f'{xml_file}: malformed XML ({e})') from e
    num_classes = len(class_index)
    any_obj = np.zeros(num_classes, dtype=bool)
    non_difficult = np.zeros(num_classes, dtype=bool)
    for k, obj in enumerate(tree.getroot().iter('object')):
        name_el = obj.find('name')
        if name_el is None or not (name_el.text or '').strip():
            raise AnnotationError(f'{xml_file}: object #{k} has no <name>')
        name = name_el.text.strip()
        if name not in class_index:
            raise AnnotationError(f'{xml_file}: object #{k} has unknown class {name!r}; expected one of {list(class_index)}')
        diff_el = obj.find('difficult')
        diff_text = (diff_el.text or '').strip() if diff_el is not None else '0'
        if diff_text not in ('0', '1'):
            raise AnnotationError(f'{xml_file}: object #{k} ({name}) has <difficult> {diff_text!r}, expected 0 or 1')
        c = class_index[name]
        any_obj[c] = True
        if diff_text == '0':
            non_difficult[c] = True
    return non_difficult, any_obj & ~non_difficult


def _read_split(split_file: str) -> List[str]:
    if not os.path.isfile(split_file):
        raise FileNotFoundError(f'VOC image-set file not found: {split_file}')
    with open(split_file, 'r', encoding='utf-8-sig') as f:
        ids = [line.split()[0] for line in f if line.strip()]
    if len(set(ids)) != len(ids):
        raise AnnotationError(f'{split_file}: duplicate image ids')
    if not ids:
        raise AnnotationError(f'{split_file}: no image ids listed')
    return ids


class VocMultiLabel(MultiLabelDataset):
    """Pascal VOC 2007 as a multi-label dataset with ternary labels and a selectable difficult policy.

    ``difficult``: the target of difficult-only entries, ``'positive'``, ``'negative'`` or ``'ignore'`` (None:
    ``'ignore'`` for ``test``, else ``'positive'``).
    """

    def __init__(
            self,
            root: str,
            split: str = 'test',
            transform: Optional[Callable] = None,
            difficult: Optional[str] = None,
            keep_empty: bool = False,
            on_corrupt: str = 'error',
            check_files: bool = True,
            year: str = '2007',
            label_names: Sequence[str] = VOC_CLASSES,
    ) -> None:
        if split not in VOC_SPLITS:
            raise InputError(f'VOC split must be one of {VOC_SPLITS}, got {split!r}')
        if difficult is None:
            difficult = 'ignore' if split == 'test' else 'positive'
        if difficult not in DIFFICULT_POLICIES:
            raise InputError(f'difficult policy must be one of {DIFFICULT_POLICIES}, got {difficult!r}')
        voc_root = find_voc_root(root, year)
        ids = _read_split(os.path.join(voc_root, 'ImageSets', 'Main', f'{split}.txt'))
        class_index = {n: i for i, n in enumerate(label_names)}
        present, diff_only, kept, empty = [], [], [], 0
        for image_id in ids:
            p, d = parse_voc_xml(os.path.join(voc_root, 'Annotations', f'{image_id}.xml'), class_index)
            if not (p.any() or d.any()):
                empty += 1
                if not keep_empty:
                    _logger.warning('VOC%s %s: %s has no object; skipped (keep_empty=False)', year, split,
                                    os.path.join(voc_root, 'Annotations', f'{image_id}.xml'))
                    continue
            present.append(p)
            diff_only.append(d)
            kept.append(image_id)
        if not kept:
            raise AnnotationError(f'VOC{year} {split}: no image with an object in {voc_root}')
        self.present = np.stack(present)
        self.difficult_only = np.stack(diff_only)
        self.image_ids: List[str] = kept
        paths = [os.path.join(voc_root, 'JPEGImages', f'{i}.jpg') for i in kept]
        if check_files:
            check_files_exist(paths, os.path.join(voc_root, 'ImageSets', 'Main', f'{split}.txt'))
        info = dict(name=f'VOC{year} {split}', dataset='voc', format='voc', root=os.fspath(root), voc_root=voc_root,
                    split=split, year=year, num_images=len(kept), images_listed=len(ids),
                    images_without_objects=empty, keep_empty=keep_empty,
                    difficult_only_entries=int(self.difficult_only.sum()))
        self._difficult = difficult
        super().__init__(paths, self._make_targets(difficult), label_names, transform=transform,
                         on_corrupt=on_corrupt, info=info)
        self.info['difficult_policy'] = difficult
        if split == 'test' and difficult != 'ignore':
            _logger.warning('VOC%s test with difficult=%r: standard evaluation ignores difficult-only entries',
                            year, difficult)
        _logger.info('VOC%s %s: %s images (%d without objects %s), %s difficult-only entries (policy: %s)', year,
                     split, f'{len(kept):,}', empty, 'kept' if keep_empty else 'skipped',
                     f'{int(self.difficult_only.sum()):,}', difficult)

    def _make_targets(self, policy: str) -> np.ndarray:
        targets = self.present.astype(np.float32)
        targets[self.difficult_only] = _POLICY_VALUE[policy]
        return targets

    @property
    def difficult(self) -> str:
        """Current policy for difficult-only entries; setting it recomputes :attr:`targets`."""
        return self._difficult

    @difficult.setter
    def difficult(self, policy: str) -> None:
        if policy not in DIFFICULT_POLICIES:
            raise InputError(f'difficult policy must be one of {DIFFICULT_POLICIES}, got {policy!r}')
        self._difficult = policy
        self.targets = self._make_targets(policy)
        self.info['difficult_policy'] = policy
