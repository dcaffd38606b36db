"""MS-COCO multi-label datasets (paper §4.1) read through pycocotools: 1 for every category annotated in the image
(crowd included), 0 elsewhere, -1 where the image declares it not annotated; columns in category-id order."""
import contextlib
import io
import json
import logging
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
from pycocotools.coco import COCO

from ..errors import InputError
from .images import AnnotationError, MultiLabelDataset, check_files_exist
from .label_sets import COCO_CATEGORY_IDS, COCO_CLASSES

__all__ = ['load_coco_json', 'coco_multilabel_targets', 'CocoFormatMultiLabel', 'CocoMultiLabel', 'COCO_SPLITS',
           'PARTIAL_LABEL_KEYS']

_logger = logging.getLogger(__name__)

#: split name → image folder / annotation suffix stem for the 2014 release
COCO_SPLITS = ('train', 'val')
#: image fields that mark partial labels (:func:`coco_multilabel_targets`): LVIS's federated negatives, ours
PARTIAL_LABEL_KEYS = ('neg_category_ids', 'not_annotated_category_ids')


def _check_entries(ann_file: str, data: Dict[str, Any]) -> None:
    """Every image, category and annotation is an object with the keys and id types the labels need."""
    for what, keys in (('images', ('id', 'file_name')), ('categories', ('id', 'name')),
                       ('annotations', ('image_id', 'category_id'))):
        for i, e in enumerate(data[what]):
            if not isinstance(e, dict):
                raise AnnotationError(f'{ann_file}: {what}[{i}] is not an object: {e!r}')
            for k in keys:
                if k not in e:
                    raise AnnotationError(f'{ann_file}: {what}[{i}] has no {k!r} key: {e!r}')
    for i, c in enumerate(data['categories']):
        if not isinstance(c['id'], int) or isinstance(c['id'], bool):
            raise AnnotationError(f'{ann_file}: categories[{i}] id must be an integer, got {c["id"]!r}')
    for what, key in (('images', 'id'), ('annotations', 'image_id'), ('annotations', 'category_id')):
        for i, e in enumerate(data[what]):
            if not isinstance(e[key], (int, str)) or isinstance(e[key], bool):
                raise AnnotationError(f'{ann_file}: {what}[{i}] {key} must be an integer (or a string), '
                                      f'got {e[key]!r}')
    for what in ('images', 'categories'):
        ids = [e['id'] for e in data[what]]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
            raise AnnotationError(f'{ann_file}: duplicate {what[:-1].replace("categorie", "category")} ids {dup} '
                                  f'(each {what[:-1].replace("categorie", "category")} needs its own id)')


def _check_ids(ann_file: str, data: Dict[str, Any]) -> Tuple[set, set]:
    """Unique image and category ids and names, valid partial-label lists; returns the image and category ids."""
    names = [c['name'] for c in data['categories']]
    if len(set(names)) != len(names):
        raise AnnotationError(f'{ann_file}: duplicate category names {sorted({n for n in names if names.count(n) > 1})}')
    image_ids = {e['id'] for e in data['images']}
    cat_ids = {e['id'] for e in data['categories']}
    for i, img in enumerate(data['images']):
        for key in PARTIAL_LABEL_KEYS:
            ids = img.get(key)
            if ids is None:
                continue
            if not isinstance(ids, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in ids):
                raise AnnotationError(f'{ann_file}: images[{i}] {key} must be a list of category ids, got {ids!r}')
            unknown = sorted(set(ids) - cat_ids)
            if unknown:
                raise AnnotationError(f'{ann_file}: images[{i}] {key} lists unknown category ids {unknown[:5]} (not in '
                                      'the file\'s categories)')
        both = set(img.get(PARTIAL_LABEL_KEYS[0]) or ()) & set(img.get(PARTIAL_LABEL_KEYS[1]) or ())
        if both:
            raise AnnotationError(f'{ann_file}: images[{i}] lists category ids {sorted(both)[:5]} both as absent '
                                  f'({PARTIAL_LABEL_KEYS[0]}) and as not annotated ({PARTIAL_LABEL_KEYS[1]})')
    return image_ids, cat_ids


def load_coco_json(ann_file: str) -> Dict[str, Any]:
    """Read a COCO-format annotation file and check its structure (:class:`AnnotationError` names the entry)."""
    if not os.path.isfile(ann_file):
        raise FileNotFoundError(f'COCO annotation file not found: {ann_file}')
    try:
        with open(ann_file, 'rb') as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnnotationError(f'{ann_file}: malformed or truncated JSON ({e})') from e
    if not isinstance(data, dict):
        raise AnnotationError(f'{ann_file}: expected a JSON object at top level, got {type(data).__name__}')
    for key in ('images', 'annotations', 'categories'):
        if key not in data:
            raise AnnotationError(f'{ann_file}: missing top-level key {key!r} (a COCO file has images, annotations, '
                             f'categories)')
        if not isinstance(data[key], list):
            raise AnnotationError(f'{ann_file}: {key!r} must be a list, got {type(data[key]).__name__}')

    _check_entries(ann_file, data)
    image_ids, cat_ids = _check_ids(ann_file, data)
    partial = {img['id']: {key: set(img[key]) for key in PARTIAL_LABEL_KEYS if img.get(key)}
               for img in data['images'] if any(img.get(key) for key in PARTIAL_LABEL_KEYS)}
    for i, a in enumerate(data['annotations']):
        if a['category_id'] not in cat_ids:
            raise AnnotationError(f'{ann_file}: annotations[{i}] has unknown category_id {a["category_id"]!r} '
                             f'(not in the file\'s categories)')
        if a['image_id'] not in image_ids:
            raise AnnotationError(f'{ann_file}: annotations[{i}] has unknown image_id {a["image_id"]!r} '
                             f'(not in the file\'s images)')
        for key, ids in partial.get(a['image_id'], {}).items():
            if a['category_id'] in ids:
                raise AnnotationError(f'{ann_file}: annotations[{i}] marks category {a["category_id"]} present in '
                                      f'image {a["image_id"]!r}, whose {key} lists it too: a category is present, '
                                      'absent or not annotated in an image, not two of them')
    return data


def coco_multilabel_targets(
        data: Dict[str, Any],
        keep_empty: bool = False,
) -> Tuple[List[Dict[str, Any]], np.ndarray, List[str], List[int], Dict[str, int]]:
    """Image-level multi-label targets of checked COCO data (:func:`load_coco_json`), with LVIS-style partial labels.

    Returns:
        ``(images, targets [N, C] float32, label_names, category_ids, counts)``.
    """
    coco = COCO()
    # pycocotools needs a unique annotation 'id'; image-level custom files often omit it
    anns = [a if 'id' in a else dict(a, id=-1 - i) for i, a in enumerate(data['annotations'])]
    coco.dataset = dict(data, annotations=anns)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    category_ids = sorted(coco.getCatIds())
    label_names = [str(coco.cats[c]['name']) for c in category_ids]
    column = {c: i for i, c in enumerate(category_ids)}
    images, rows, crowd_only = [], [], 0
    empty = 0
    for img_id in coco.getImgIds():  # file order
        img_anns = coco.imgToAnns.get(img_id, [])
        if not img_anns:
            empty += 1
            if not keep_empty:
                continue
        image = coco.imgs[img_id]
        row = np.full(len(category_ids), -1.0 if 'neg_category_ids' in image else 0.0, dtype=np.float32)
        row[[column[c] for c in image.get('neg_category_ids') or ()]] = 0.0
        row[[column[c] for c in image.get('not_annotated_category_ids') or ()]] = -1.0
        non_crowd = np.zeros(len(category_ids), dtype=bool)
        for a in img_anns:
            c = a['category_id']
            row[column[c]] = 1.0
            if not a.get('iscrowd', 0):
                non_crowd[column[c]] = True
        crowd_only += int(np.sum((row == 1) & ~non_crowd))
        images.append(image)
        rows.append(row)
    targets = np.stack(rows) if rows else np.zeros((0, len(category_ids)), dtype=np.float32)
    counts = dict(images_total=len(coco.imgs), images_without_annotations=empty, images_kept=len(images),
                  labels_from_crowd_only=crowd_only, unknown_entries=int((targets == -1).sum()))
    return images, targets, label_names, category_ids, counts


class CocoFormatMultiLabel(MultiLabelDataset):
    """Any COCO-format annotation file + image folder as a multi-label dataset (label names from the file).

    Args:
        ann_file: COCO-format JSON; image_dir: the folder ``file_name`` is relative to.
        transform, on_corrupt, name: see :class:`~srdl_timm.data.images.MultiLabelDataset`.
        keep_empty: keep images without annotations (all-zero targets).
        check_files: check that every listed image file exists.
    """

    def __init__(
            self,
            ann_file: str,
            image_dir: str,
            transform: Optional[Callable] = None,
            keep_empty: bool = False,
            on_corrupt: str = 'error',
            check_files: bool = True,
            name: Optional[str] = None,
    ) -> None:
        ann_file, image_dir = os.fspath(ann_file), os.fspath(image_dir)
        name = name or os.path.basename(ann_file)
        data = load_coco_json(ann_file)
        self._check_categories(data, ann_file)
        if not os.path.isdir(image_dir):
            raise FileNotFoundError(f'{name}: image folder not found: {image_dir}')
        images, targets, label_names, category_ids, counts = coco_multilabel_targets(data, keep_empty=keep_empty)
        if not images:
            raise AnnotationError(f'{ann_file}: no images left (images: {counts["images_total"]}, without annotations: '
                             f'{counts["images_without_annotations"]}, keep_empty={keep_empty})')
        paths = [os.path.join(image_dir, str(img['file_name'])) for img in images]
        if check_files:
            check_files_exist(paths, ann_file)
        info = dict(name=name, format='coco', ann_file=ann_file, image_dir=image_dir, keep_empty=keep_empty,
                    crowd='present', num_images=len(images), **counts)
        super().__init__(paths, targets, label_names, transform=transform, on_corrupt=on_corrupt, info=info)
        self.image_ids: List[Any] = [img['id'] for img in images]
        self.category_ids: List[int] = category_ids
        without = counts['images_without_annotations']
        _logger.info('%s: %s images with >=1 annotation (%s without %s), %d classes, %s labels only from crowd '
                     'annotations (counted present), %s entries not annotated', name,
                     f'{len(images) - (without if keep_empty else 0):,}', f'{without:,}',
                     'kept' if keep_empty else 'skipped', len(label_names), f'{counts["labels_from_crowd_only"]:,}',
                     f'{counts["unknown_entries"]:,}')

    def _check_categories(self, data: Dict[str, Any], ann_file: str) -> None:
        """Hook for subclasses that expect a fixed category list."""


class CocoMultiLabel(CocoFormatMultiLabel):
    """MS-COCO 2014 (or 2017) in its standard layout; classes are the 80 COCO categories in category-id order.

    Args:
        root: folder holding ``annotations/`` and the ``{split}{year}/`` image folders.
        split: ``'train'`` or ``'val'``; year: ``'2014'`` (the paper's) or ``'2017'``.
        ann_file, image_dir: override the standard paths; others: see :class:`CocoFormatMultiLabel`.
    """

    def __init__(
            self,
            root: str,
            split: str = 'val',
            transform: Optional[Callable] = None,
            keep_empty: bool = False,
            on_corrupt: str = 'error',
            check_files: bool = True,
            year: str = '2014',
            ann_file: Optional[str] = None,
            image_dir: Optional[str] = None,
    ) -> None:
        split = split[:-len(year)] if split.endswith(year) else split
        if split not in COCO_SPLITS:
            raise InputError(f'COCO split must be one of {COCO_SPLITS} (or with the year, e.g. "val{year}"), '
                             f'got {split!r}')
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise FileNotFoundError(f'COCO root folder not found: {root}')
        ann_file = ann_file or os.path.join(root, 'annotations', f'instances_{split}{year}.json')
        image_dir = image_dir or os.path.join(root, f'{split}{year}')
        super().__init__(ann_file, image_dir, transform=transform, keep_empty=keep_empty, on_corrupt=on_corrupt,
                         check_files=check_files, name=f'COCO {split}{year}')
        self.info.update(dataset='coco', root=root, split=split, year=year)

    def _check_categories(self, data: Dict[str, Any], ann_file: str) -> None:
        cats = sorted((c['id'], c['name']) for c in data['categories'])
        expected = list(zip(COCO_CATEGORY_IDS, COCO_CLASSES))
        if cats != expected:
            diff = sorted(set(cats) ^ set(expected))[:6]
            raise AnnotationError(f'{ann_file}: categories are not the 80 MS-COCO categories (ids and names must match '
                             f'srdl_timm.data.label_sets); first differences: {diff}. Use the "coco-json" dataset '
                             f'for other category sets.')
