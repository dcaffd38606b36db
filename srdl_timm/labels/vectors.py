"""Label-graph node vectors ``A⁰`` (paper eq. 3): one word vector per label name, and how each was made; the
COCO-80 and VOC-20 rows from GloVe 6B 50-d ship in ``srdl_timm/assets``."""
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .names import KNOWN_LABEL_SETS, known_label_set
from ..utils import PathLike, sha256_file
from .word_vectors import DEFAULT_SOURCE, WordVectors, load_word_vectors, npy_vocab_path

__all__ = [
    'LabelEmbeddingSpec', 'LabelVectors', 'COMPOUND_SPLITS', 'RANDOM_FALLBACK', 'RULE', 'ASSET_DIR', 'ASSET_MANIFEST',
    'SHIPPED_FILES', 'label_tokens', 'embed_label_names', 'shipped_label_embeddings', 'label_vectors',
    'resolve_label_nodes',
]

_logger = logging.getLogger(__name__)

#: what SRDL's ``label_embeddings=`` accepts (see :func:`label_vectors` and :func:`resolve_label_nodes`)
LabelEmbeddingSpec = Union[None, str, 'os.PathLike[str]', np.ndarray, Tensor, Sequence[Sequence[float]], WordVectors]

#: Devkit spellings that are not words, and the words they are made of (applied to each word before look-up).
COMPOUND_SPLITS: Mapping[str, Tuple[str, ...]] = {
    'diningtable': ('dining', 'table'),
    'pottedplant': ('potted', 'plant'),
    'tvmonitor': ('tv', 'monitor'),
}
#: the report entry of a name none of whose words the source knows (step 3 of the rule)
RANDOM_FALLBACK = 'random (no known token)'
#: the rule in one line (recorded beside the shipped arrays)
RULE = ('lower-case; the whole name if it is a word of the source, else split on whitespace, "_", "-", "/" with '
        'compound_splits applied to each word and the mean of the known words\' vectors (float64 mean, stored '
        'float32), else a standard-normal vector seeded by sha256(name) and rescaled to the mean norm of the '
        'resolved rows')

#: folder of the shipped COCO / VOC arrays and their manifest
ASSET_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'assets')
ASSET_MANIFEST = 'label_embeddings.json'
#: shipped label set -> (array file in ASSET_DIR, what the row order is)
SHIPPED_FILES: Dict[str, Tuple[str, str]] = {
    'coco': ('coco80_glove6b50d.npy', 'MS-COCO 2014, category-id order (srdl_timm.data.label_sets.COCO_CLASSES)'),
    'voc': ('voc20_glove6b50d.npy', 'Pascal VOC 2007, devkit order (srdl_timm.data.label_sets.VOC_CLASSES)'),
}
_TOKEN_SPLIT = re.compile(r'[\s_\-/]+')


@dataclass(frozen=True)
class LabelVectors:
    """Node vectors ``A⁰`` (``[C, d]`` float32), their ``source``, the label ``names``, and per name its
    ``resolution`` (``'exact'``, ``'mean of [...]'`` or :data:`RANDOM_FALLBACK`; None for a given matrix)."""

    vectors: np.ndarray
    source: str
    names: Optional[List[str]] = None
    resolution: Optional[Dict[str, str]] = None

    def fallbacks(self) -> Dict[str, str]:
        """The names that were not an exact word of the source, and what they fell back to."""
        return {n: how for n, how in (self.resolution or {}).items() if how != 'exact'}

    def report(self) -> Optional[Dict[str, Any]]:
        """``{'source', 'names': {name: resolution}}`` for a run's record, None without a per-name resolution."""
        return None if self.resolution is None else {'source': self.source, 'names': dict(self.resolution)}

    def log_fallbacks(self, logger: Optional[logging.Logger] = None) -> None:
        """One log line per name that was not an exact word: info for a mean, a warning for a random vector."""
        logger = logger or _logger
        for name, how in self.fallbacks().items():
            level = logging.WARNING if how == RANDOM_FALLBACK else logging.INFO
            logger.log(level, 'label vector of %r: %s (%s)', name, how, self.source)


def label_tokens(name: str, splits: Optional[Mapping[str, Sequence[str]]] = None) -> List[str]:
    """The words of a label name, e.g. ``'Hair_Drier'`` → ``['hair', 'drier']``, ``'diningtable'`` →
    ``['dining', 'table']`` (``splits`` extend :data:`COMPOUND_SPLITS`); ValueError for a name without a word."""
    table: Dict[str, Sequence[str]] = dict(COMPOUND_SPLITS)
    if splits:
        table.update({k.lower(): v for k, v in splits.items()})
    out: List[str] = []
    for tok in _TOKEN_SPLIT.split(str(name).strip().lower()):
        if tok:
            out.extend(w.lower() for w in table.get(tok, (tok,)))
    if not out:
        raise ValueError(f'Label name {name!r} contains no word.')
    return out


def _seeded_vector(name: str, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(name.strip().lower().encode('utf-8')).digest()[:8], 'little')
    return np.random.default_rng(seed).standard_normal(dim)


def embed_label_names(
        label_names: Sequence[str],
        source: Union[PathLike, WordVectors] = DEFAULT_SOURCE,
        splits: Optional[Mapping[str, Sequence[str]]] = None,
) -> LabelVectors:
    """Word vectors of label names by one rule, with the per-name report.

    The name itself if it is a word of the source, else the mean of its known words' vectors, else a normal vector
    seeded by the name's sha256 and rescaled to the mean norm of the resolved rows.

    Args:
        label_names: the C class names, in class-index order.
        source: a :class:`WordVectors`, ``'glove-6b-50d'``, or a word-vector file path.
        splits: extra compound splits, e.g. ``{'tvmonitor': ['television', 'monitor']}``.

    Raises:
        ValueError: ``label_names`` is empty or a name has no word.
    """
    names = [str(n) for n in label_names]
    if not names:
        raise ValueError('embed_label_names: label_names is empty.')
    tokens = [label_tokens(n, splits) for n in names]
    wholes = [n.strip().lower() for n in names]
    wv = source if isinstance(source, WordVectors) else load_word_vectors(
        source, vocabulary=set(wholes) | {w for toks in tokens for w in toks})
    rows: List[Optional[np.ndarray]] = []
    resolution: Dict[str, str] = {}
    for name, whole, toks in zip(names, wholes, tokens):
        known = [w for w in toks if w in wv]
        if whole in wv:
            rows.append(wv.vector(whole))
            resolution[name] = 'exact'
        elif known:
            rows.append(wv.lookup(known).astype(np.float64).mean(axis=0).astype(np.float32))
            unknown = [w for w in toks if w not in wv]
            resolution[name] = f'mean of [{", ".join(known)}]' + (
                f' (not in the word vectors: {", ".join(unknown)})' if unknown else '')
        else:
            rows.append(None)
            resolution[name] = RANDOM_FALLBACK
    norms = [float(np.linalg.norm(r)) for r in rows if r is not None]
    out = np.empty((len(names), wv.dim), dtype=np.float32)
    for c, row in enumerate(rows):
        if row is None:
            drawn = _seeded_vector(names[c], wv.dim)
            row = drawn * (np.mean(norms) / np.linalg.norm(drawn)) if norms else drawn
        out[c] = row
    return LabelVectors(out, wv.source, names, resolution)


def _read_shipped(key: str, asset_dir: Optional[str]) -> Tuple[List[str], np.ndarray, List[List[str]]]:
    asset_dir = asset_dir or ASSET_DIR
    manifest_path = os.path.join(asset_dir, ASSET_MANIFEST)
    if not os.path.isfile(manifest_path):
        raise FileNotFoundError(f'{manifest_path} is missing; regenerate it with: python tools/build_label_embeddings.py build')
    with open(manifest_path, 'r', encoding='utf-8') as f:
        entry = json.load(f).get('sets', {}).get(key)
    if entry is None:
        raise RuntimeError(f'{manifest_path} has no entry for {key!r}; rebuild with: python tools/build_label_embeddings.py build')
    path = os.path.join(asset_dir, entry['file'])
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path} is missing; rebuild with: python tools/build_label_embeddings.py build')
    digest = sha256_file(path)
    if digest != entry['sha256']:
        raise RuntimeError(f'{path}: sha256 {digest} does not match {entry["sha256"]} recorded in {ASSET_MANIFEST}.')
    arr = np.load(path, allow_pickle=False)
    names = [lab['name'] for lab in entry['labels']]
    if names != list(KNOWN_LABEL_SETS[key]):
        raise RuntimeError(f'{ASSET_MANIFEST}: the {key} label names differ from srdl_timm.data.label_sets; rebuild.')
    if arr.dtype != np.float32 or arr.shape != (len(names), entry['shape'][1]):
        raise RuntimeError(f'{path}: shape {arr.shape} dtype {arr.dtype}, expected {tuple(entry["shape"])} float32.')
    return names, np.array(arr, dtype=np.float32), [list(lab['words']) for lab in entry['labels']]


def shipped_label_embeddings(label_set: str, asset_dir: Optional[str] = None) -> Tuple[List[str], np.ndarray]:
    """The shipped label names and GloVe 6B 50-d rows of ``label_set`` (``'coco'`` / ``'voc'``):
    ``(names, [C, 50] float32 copy)``, checked against the asset manifest."""
    key = str(label_set).lower()
    if key not in SHIPPED_FILES:
        raise ValueError(f'Unknown label set {label_set!r}; shipped label sets: {sorted(SHIPPED_FILES)}.')
    names, arr, _ = _read_shipped(key, asset_dir)
    return names, arr


def _shipped_vectors(key: str, label_names: Optional[Sequence[str]]) -> LabelVectors:
    """The shipped rows of ``key``, re-ordered by name to ``label_names`` when those are a permutation."""
    names, arr, words = _read_shipped(key, None)
    resolution = {n: 'exact' if w == [n.lower()] else f'mean of [{", ".join(w)}]' for n, w in zip(names, words)}
    if label_names is None or [str(n) for n in label_names] == names:
        return LabelVectors(arr, key, names, resolution)
    wanted = [str(n) for n in label_names]
    pos = {n: i for i, n in enumerate(names)}
    unknown = [n for n in wanted if n not in pos]
    if unknown:
        raise ValueError(f'Label embeddings {key!r} have no row for label(s) {unknown}; its labels are {names}.')
    _logger.info('Re-ordering the shipped %s label embeddings by name to match label_names', key)
    return LabelVectors(arr[[pos[n] for n in wanted]], key, wanted, {n: resolution[n] for n in wanted})


def _check_rows(arr: np.ndarray, label_names: Optional[Sequence[str]], what: str) -> np.ndarray:
    if arr.ndim != 2:
        raise ValueError(f'Label embeddings from {what} must be a 2-D [C, d] array, got shape {tuple(arr.shape)}.')
    if label_names is not None and arr.shape[0] != len(label_names):
        raise ValueError(f'Label embeddings from {what} have {arr.shape[0]} rows but there are {len(label_names)} labels.')
    if not np.all(np.isfinite(arr)):
        raise ValueError(f'Label embeddings from {what} contain NaN or infinite values.')
    return arr


def label_vectors(spec: LabelEmbeddingSpec, label_names: Optional[Sequence[str]] = None) -> Optional[LabelVectors]:
    """Turn a label-embedding specification into :class:`LabelVectors` (None for ``spec=None``).

    ``spec``: an array ``[C, d]``; ``'coco'`` / ``'voc'`` (shipped rows); ``'glove-6b-50d'``, a :class:`WordVectors`
    or a word-vector file (applied to ``label_names``); or a ``X.npy``.
    """
    if spec is None:
        return None
    names = None if label_names is None else [str(n) for n in label_names]
    if isinstance(spec, Tensor):
        spec = spec.detach().cpu().float().numpy()
    elif isinstance(spec, (list, tuple)) and spec and not isinstance(spec[0], str):
        spec = np.asarray(spec, dtype=np.float32)
    if isinstance(spec, np.ndarray):
        return LabelVectors(_check_rows(np.array(spec, dtype=np.float32), names, 'the given array'), 'given', names)
    if isinstance(spec, WordVectors):
        if names is None:
            raise ValueError('label_vectors: word vectors given but no label_names to embed.')
        return embed_label_names(names, spec)
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f'label_vectors: unsupported spec of type {type(spec).__name__}; expected None, an '
                        f'array/tensor, a path, or one of {sorted(SHIPPED_FILES)} / {DEFAULT_SOURCE!r}.')
    text = os.fspath(spec)
    if text.lower() in SHIPPED_FILES:
        found = _shipped_vectors(text.lower(), names)
        _check_rows(found.vectors, names, repr(text))
        return found
    if text == DEFAULT_SOURCE:
        if names is None:
            raise ValueError(f'label_vectors({DEFAULT_SOURCE!r}) needs label_names to embed.')
        key = next((k for k, known in KNOWN_LABEL_SETS.items() if len(known) == len(names) and set(known) == set(names)),
                   None)
        return _shipped_vectors(key, names) if key is not None else embed_label_names(names, DEFAULT_SOURCE)
    if not os.path.isfile(text):
        raise ValueError(f'Label embedding spec {text!r} is neither one of {sorted(SHIPPED_FILES) + [DEFAULT_SOURCE]} '
                         f'nor an existing .npy / word-vector text file.')
    if text.endswith('.npy') and not os.path.isfile(npy_vocab_path(text)):
        arr = np.load(text, allow_pickle=False)
        if arr.dtype.kind != 'f':
            raise ValueError(f'{text}: expected floating-point label embeddings, got dtype {arr.dtype}.')
        return LabelVectors(_check_rows(arr.astype(np.float32), names, text), text, names)
    if names is None:
        raise ValueError(f'{text} holds word vectors; label_vectors needs label_names to embed.')
    return embed_label_names(names, text)


def _random_nodes(num_classes: int, embed_dim: int, seed: int = 0) -> Tensor:
    return torch.randn(num_classes, embed_dim, generator=torch.Generator().manual_seed(seed))


def resolve_label_nodes(
        label_embeddings: LabelEmbeddingSpec,
        num_classes: int,
        embed_dim: Optional[int],
        label_names: Optional[Sequence[str]],
) -> Tuple[Tensor, str, Optional[List[str]]]:
    """The SRDL head's ``A⁰``: ``([C, d'] float tensor, source, label names | None)``.

    ``None``: the shipped COCO / VOC rows, else seeded random nodes with a warning; ``'random'``: without one.
    """
    if label_embeddings is None:
        key = known_label_set(num_classes, label_names)
        if key is not None and embed_dim in (None, 50):
            shipped_names, array = shipped_label_embeddings(key)
            return torch.from_numpy(array), key, shipped_names
        width = embed_dim or 300
        _logger.warning(
            'SRDL label-graph nodes initialised from a seeded random normal (%d x %d): no label_embeddings given. '
            'Pass label_embeddings="coco"/"voc"/"glove-6b-50d"/a .npy path/an array, or load pretrained weights.',
            num_classes, width)
        return _random_nodes(num_classes, width), 'random', None
    if isinstance(label_embeddings, str) and label_embeddings == 'random':
        return _random_nodes(num_classes, embed_dim or 300), 'random', None
    found = label_vectors(label_embeddings, label_names)
    assert found is not None
    if found.source not in SHIPPED_FILES:
        found.log_fallbacks()
    if found.vectors.shape[0] != num_classes:
        raise ValueError(f'label_embeddings must have shape [num_classes={num_classes}, embed_dim], got '
                         f'{tuple(found.vectors.shape)}')
    source = os.fspath(label_embeddings) if isinstance(label_embeddings, (str, os.PathLike)) else 'given'
    return torch.from_numpy(found.vectors), source, found.names
