"""The user's own multi-label data: a CSV file (:class:`CsvMultiLabel`) or a COCO-format JSON file
(:class:`CocoJsonMultiLabel`), as ``create_multilabel_dataset('csv' | 'coco-json', root, split)`` finds them."""
import csv
import logging
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .coco import CocoFormatMultiLabel
from ..utils import read_label_names
from .images import AnnotationError, MultiLabelDataset, check_files_exist

__all__ = ['CsvMultiLabel', 'CocoJsonMultiLabel', 'read_label_names', 'LABELS_FROM_FILE', 'NOT_ANNOTATED', 'ABSENT',
           'ALL_OTHERS_NOT_ANNOTATED']

#: ``info['label_names_from']`` of a list-layout CSV whose classes are just the labels it happens to hold.
LABELS_FROM_FILE = 'sorted labels in the file'

_logger = logging.getLogger(__name__)

IMAGE_COLUMNS = ('image', 'filename', 'file_name', 'path', 'image_path', 'file')
LABEL_COLUMNS = ('labels', 'label', 'tags')
_WIDE_VALUES = {'1': 1.0, '0': 0.0, '-1': -1.0}


def _pick(columns: Sequence[str], wanted: Optional[str], candidates: Sequence[str], what: str, csv_file: str,
          required: bool = True) -> Optional[str]:
    if wanted is not None:
        if wanted not in columns:
            raise AnnotationError(f'{csv_file}: no {what} column {wanted!r}; columns are {list(columns)}')
        return wanted
    for c in candidates:
        if c in columns:
            return c
    if required:
        raise AnnotationError(f'{csv_file}: no {what} column found (looked for {list(candidates)}); columns are '
                         f'{list(columns)}; pass {what}_column=')
    return None


#: list-layout markers: ``?name`` not annotated, ``!name`` checked absent, ``?*`` every class not named not annotated
NOT_ANNOTATED, ABSENT, ALL_OTHERS_NOT_ANNOTATED = '?', '!', '?*'


def _parse_label(token: str, names: set) -> Tuple[Optional[str], float]:
    """``(class name, target)`` of one list-layout token (``(None, -1)`` for ``?*``); a token that is itself a
    class name is that class, present."""
    if token in names:
        return token, 1.0
    if token == ALL_OTHERS_NOT_ANNOTATED:
        return None, -1.0
    if token[:1] in (NOT_ANNOTATED, ABSENT) and token[1:].strip():
        return token[1:].strip(), -1.0 if token[0] == NOT_ANNOTATED else 0.0
    return token, 1.0


def _list_row(tokens: Sequence[str], index: Dict[str, int], where: str, names_from: str) -> np.ndarray:
    """The target row of one list-layout cell."""
    parsed = [_parse_label(t, set(index)) for t in tokens]
    others = -1.0 if any(n is None for n, _ in parsed) else 0.0
    row = np.full(len(index), others, dtype=np.float32)
    seen: Dict[str, str] = {}
    for token, (label, value) in zip(tokens, parsed):
        if label is None:
            continue
        if label not in index:
            raise AnnotationError(f'{where}: unknown label {label!r} (label names from {names_from}: '
                                  f'{list(index)})')
        if label in seen:
            raise AnnotationError(f'{where}: class {label!r} is named twice ({seen[label]!r} and {token!r}); name '
                                  'each class once per row')
        seen[label] = token
        row[index[label]] = value
    return row


class CsvMultiLabel(MultiLabelDataset):
    """A CSV file of image paths and labels, with a header row, in one of two layouts.

    * list layout: an image column and a label column of present labels joined by ``label_sep``, e.g.
      ``img/0001.jpg,person;traffic light`` (names from ``label_names``, else ``classes.txt``, else the file);
      ``?name`` marks a class not annotated (-1), ``?*`` every class not named, ``!name`` one checked absent.
    * wide layout: no label column; every other column is a class with cells ``1`` / ``0`` / ``-1``.

    Args:
        csv_file: the CSV file (UTF-8).
        image_dir: folder the image paths are relative to; default: the CSV's folder.
        label_names, label_names_from: class names in column order (list layout) and where they come from.

    Raises:
        FileNotFoundError / AnnotationError: a missing file, or a malformed CSV, row or label (file and line).
    """

    def __init__(
            self,
            csv_file: str,
            image_dir: Optional[str] = None,
            transform: Optional[Callable] = None,
            label_names: Optional[Sequence[str]] = None,
            label_names_from: Optional[str] = None,
            label_sep: str = ';',
            image_column: Optional[str] = None,
            label_column: Optional[str] = None,
            keep_empty: bool = False,
            on_corrupt: str = 'error',
            check_files: bool = True,
            name: Optional[str] = None,
    ) -> None:
        csv_file = os.fspath(csv_file)
        if not os.path.isfile(csv_file):
            raise FileNotFoundError(f'CSV annotation file not found: {csv_file}')
        image_dir = os.fspath(image_dir) if image_dir is not None else os.path.dirname(os.path.abspath(csv_file))
        if not os.path.isdir(image_dir):
            raise FileNotFoundError(f'image folder not found: {image_dir}')
        name = name or os.path.basename(csv_file)
        header, img_col, lab_col, records = _read_csv(csv_file, image_column, label_column)
        if lab_col is not None:
            layout = 'list'
            names, names_from, targets = _list_targets(csv_file, records, lab_col, label_sep, label_names,
                                                       label_names_from, name)
        else:
            layout = 'wide'
            names, names_from = [h for h in header if h != img_col], 'header'
            targets = _wide_targets(csv_file, records, names, label_names)
        paths = [os.path.join(image_dir, rec[img_col]) for rec in records]
        seen: Dict[str, int] = {}
        for rec, p in zip(records, paths):
            key = os.path.normpath(p)
            if key in seen:
                raise AnnotationError(f'{csv_file}, line {rec["_line"]}: image {rec[img_col]!r} already listed on line '
                                 f'{seen[key]}')
            seen[key] = rec['_line']
        has_label = (targets == 1).any(axis=1)
        empty = int((~has_label).sum())
        if not keep_empty and empty:
            _logger.warning('%s: %d images without any present label skipped (keep_empty=False)', name, empty)
            paths = [p for p, h in zip(paths, has_label) if h]
            targets = targets[has_label]
        if not paths:
            raise AnnotationError(f'{csv_file}: no images left (rows: {len(records)}, without labels: {empty}, '
                             f'keep_empty={keep_empty})')
        if check_files:
            check_files_exist(paths, csv_file)
        info = dict(name=name, format=f'csv-{layout}', csv_file=csv_file, image_dir=image_dir,
                    label_names_from=names_from, num_images=len(paths), images_listed=len(records),
                    images_without_labels=empty, keep_empty=keep_empty,
                    unknown_entries=int((targets == -1).sum()))
        super().__init__(paths, targets, names, transform=transform, on_corrupt=on_corrupt, info=info)
        _logger.info('%s: %s images (%d without labels %s), %d classes (%s layout), %s entries not annotated', name,
                     f'{len(paths):,}', empty, 'kept' if keep_empty else 'skipped', len(names), layout,
                     f'{info["unknown_entries"]:,}')


def _read_csv(csv_file: str, image_column: Optional[str],
              label_column: Optional[str]) -> Tuple[List[str], str, Optional[str], List[Dict[str, Any]]]:
    """The header, image and label columns and the rows (dicts with their 1-based ``_line``) of a CSV file."""
    try:
        with open(csv_file, 'r', encoding='utf-8-sig', newline='') as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as e:
        raise AnnotationError(f'{csv_file}: not UTF-8 text (byte {e.start}: {e.reason}); save it as "CSV UTF-8"') \
            from e
    except csv.Error as e:
        raise AnnotationError(f'{csv_file}: malformed CSV ({e})') from e
    rows = [(i + 1, r) for i, r in enumerate(rows) if any(cell.strip() for cell in r)]  # 1-based line numbers
    if not rows:
        raise AnnotationError(f'{csv_file}: empty CSV (a header row is required)')
    header = [h.strip() for h in rows[0][1]]
    if len(set(header)) != len(header):
        raise AnnotationError(f'{csv_file}: duplicate column names in header {header}')
    img_col = _pick(header, image_column, IMAGE_COLUMNS, 'image', csv_file)
    lab_col = _pick(header, label_column, LABEL_COLUMNS, 'label', csv_file, required=False)
    for line, r in rows[1:]:
        if len(r) != len(header):
            raise AnnotationError(f'{csv_file}, line {line}: {len(r)} fields, header has {len(header)}: {r}')
    records = [dict(zip(header, (c.strip() for c in r)), _line=line) for line, r in rows[1:]]
    for rec in records:
        if not rec[img_col]:
            raise AnnotationError(f'{csv_file}, line {rec["_line"]}: empty image path')
    return header, img_col, lab_col, records


def _list_targets(csv_file: str, records: List[Dict[str, Any]], lab_col: str, label_sep: str,
                  label_names: Optional[Sequence[str]], label_names_from: Optional[str],
                  name: str) -> Tuple[List[str], str, np.ndarray]:
    """Class names, where they came from, and targets of a CSV with a label-list column."""
    cells = {rec['_line']: [t.strip() for t in rec[lab_col].split(label_sep) if t.strip()] for rec in records}
    classes_txt = os.path.join(os.path.dirname(os.path.abspath(csv_file)), 'classes.txt')
    if label_names is not None:
        names, names_from = [str(n) for n in label_names], label_names_from or 'the label_names argument'
    elif os.path.isfile(classes_txt):
        names, names_from = read_label_names(classes_txt), classes_txt
    else:
        names = sorted({_parse_label(t, set())[0] for ts in cells.values() for t in ts} - {None})
        names_from = LABELS_FROM_FILE
        _logger.info('%s: label names taken from the sorted labels in the file (%d); put a classes.txt '
                     'beside it to fix the class order across splits', name, len(names))
    index = {n: i for i, n in enumerate(names)}
    targets = np.zeros((len(records), len(names)), dtype=np.float32)
    for k, rec in enumerate(records):
        targets[k] = _list_row(cells[rec['_line']], index, f'{csv_file}, line {rec["_line"]}', names_from)
    return names, names_from, targets


def _wide_targets(csv_file: str, records: List[Dict[str, Any]], names: List[str],
                  label_names: Optional[Sequence[str]]) -> np.ndarray:
    """Targets of a CSV with one 1/0/-1 column per class."""
    if label_names is not None and list(label_names) != names:
        raise AnnotationError(f'{csv_file}: label_names {list(label_names)} differ from the header\'s class '
                              f'columns {names}')
    if not names:
        raise AnnotationError(f'{csv_file}: no label column ({list(LABEL_COLUMNS)}) and no class columns')
    targets = np.zeros((len(records), len(names)), dtype=np.float32)
    for k, rec in enumerate(records):
        for c, n in enumerate(names):
            v = rec[n]
            if v not in _WIDE_VALUES:
                raise AnnotationError(f'{csv_file}, line {rec["_line"]}, column {n!r}: value {v!r} is not 1, 0 '
                                      f'or -1')
            targets[k, c] = _WIDE_VALUES[v]
    return targets


class CocoJsonMultiLabel(CocoFormatMultiLabel):
    """A COCO-format JSON of the user's own; defaults to ``root/annotations/{split}.json`` + ``root/images/{split}``
    (``ann_file``, ``image_dir`` override them; others: see :class:`~srdl_timm.data.coco.CocoFormatMultiLabel`)."""

    def __init__(
            self,
            root: str,
            split: str = 'val',
            transform: Optional[Callable] = None,
            keep_empty: bool = False,
            on_corrupt: str = 'error',
            check_files: bool = True,
            ann_file: Optional[str] = None,
            image_dir: Optional[str] = None,
    ) -> None:
        root = os.fspath(root)
        ann_file = ann_file or os.path.join(root, 'annotations', f'{split}.json')
        image_dir = image_dir or os.path.join(root, 'images', split)
        super().__init__(ann_file, image_dir, transform=transform, keep_empty=keep_empty, on_corrupt=on_corrupt,
                         check_files=check_files, name=f'coco-json {split} ({os.path.basename(ann_file)})')
        self.info.update(dataset='coco-json', root=root, split=split)
