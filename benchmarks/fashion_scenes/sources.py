"""Fashion Scenes sources: constants, the Fashion-MNIST reader, scikit-image background photos, parameters.

See the package docstring (:mod:`benchmarks.fashion_scenes`) for what the benchmark is and how it is built.
"""
from __future__ import annotations

import copy
import gzip
import logging
import os
import struct
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from srdl_timm.utils import jsonable

_logger = logging.getLogger(__name__)

#: Bumped whenever the same seed and parameters would produce different files.
FASHION_SCENES_VERSION = '1.0'

#: Category names in category-id order (id = position + 1 = Fashion-MNIST label + 1).
FASHION_SCENES_CLASSES: Tuple[str, ...] = (
    't-shirt', 'trousers', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker', 'bag', 'ankle boot',
)

#: Output splits in build order, with the Fashion-MNIST split their items come from.
SPLITS: Tuple[str, ...] = ('train', 'val', 'test')
_ITEM_SOURCE = {'train': 'train', 'val': 'train', 'test': 'test'}
_SPLIT_CODE = {'train': 0, 'val': 1, 'test': 2}
# rng stream purposes (first key after the seed)
_STREAM_LABELS, _STREAM_ITEMS, _STREAM_RENDER, _STREAM_POOL = 0, 1, 2, 3

#: Colour photographs shipped with scikit-image used as backgrounds: name -> licence note.
BACKGROUNDS: Dict[str, str] = {
    'astronaut': 'NASA (Eileen Collins), public domain',
    'coffee': 'CC0, Rachel Michetti / Pikolo Espresso Bar',
    'chelsea': 'CC0, Stefan van der Walt',
    'rocket': 'SpaceX (DSCOVR launch on Falcon 9), public domain',
    'hubble_deep_field': 'NASA / HubbleSite, public domain',
    'immunohistochemistry': 'Center for Microscopy And Molecular Imaging, no known copyright restrictions',
}

#: The label co-occurrence model (see the module docstring). Probabilities are per image.
LABEL_MODEL: Dict[str, Any] = {
    'scenes': {
        # scene type: [weight, {category: inclusion probability}]
        'casual': [0.31, {'t-shirt': 0.9, 'trousers': 0.8, 'sneaker': 0.85}],
        'winter': [0.30, {'coat': 0.85, 'pullover': 0.8, 'ankle boot': 0.85}],
        'summer': [0.285, {'dress': 0.9, 'sandal': 0.85, 'bag': 0.06}],
        'office': [0.025, {'shirt': 0.95, 'trousers': 0.7, 'ankle boot': 0.6, 'bag': 0.25}],
        'mixed': [0.08, {}],
    },
    'mixed_num_categories': [2, 3],
    'rare': ['shirt', 'bag'],
    'noise_prob_common': 0.03,
    'noise_prob_rare': 0.002,
    'pair_categories': ['sandal', 'sneaker', 'ankle boot'],
    'pair_prob': 0.4,
    'second_instance_prob': 0.15,
}

_COMMON_PARAMS: Dict[str, Any] = {
    'scale_range': [0.16, 0.6],
    'max_objects': 6,
    'min_visible': 0.4,
    'placement_tries': 30,
    'gray_prob': 0.3,
    'jpeg_quality': 90,
    'val_item_fraction': 1.0 / 6.0,
}

#: Size presets; every key can be overridden in :func:`build_fashion_scenes`.
PRESETS: Dict[str, Dict[str, Any]] = {
    'tiny': {'num_train': 12, 'num_val': 12, 'num_test': 12, 'image_size': 64, **_COMMON_PARAMS},
    'quick': {'num_train': 1500, 'num_val': 300, 'num_test': 500, 'image_size': 128, **_COMMON_PARAMS},
    'full': {'num_train': 20000, 'num_val': 2000, 'num_test': 5000, 'image_size': 224, **_COMMON_PARAMS},
}

#: Where Fashion-MNIST is looked for when no directory is given (after $FASHION_MNIST_DIR).
DEFAULT_FASHION_MNIST_DIRS: Tuple[str, ...] = ('/usr/share/datasets/fashion-mnist',)

FASHION_MNIST_INSTALL_HINT = (
    'Install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu; files land in '
    '/usr/share/datasets/fashion-mnist), or download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, '
    't10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz from https://github.com/zalandoresearch/fashion-mnist '
    'into a folder and set FASHION_MNIST_DIR to it (or pass fmnist_dir=).'
)

_ALPHA_LOW, _ALPHA_HIGH = 8.0, 48.0  # intensity ramp of the alpha mask (0 below, 1 above)
_STATS_FILE, _PLOT_FILE = 'stats.json', 'cooccurrence.png'
_SIZE_BIN_EDGES = (0.0, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.4, 1.0)
_SMALL_AREA = 0.03
_PARTIAL_PREFIX = '.fashion-scenes-partial-'
_PID_FILE = 'BUILDER_PID'
#: identity mark written into every build's JSON (kept from v1.0, when the builder lived in srdl_timm.data, so
#: builds stay byte-identical and existing ones are reused); folders without it are never replaced
_GENERATOR = 'srdl_timm.data.fashion_scenes'


# ---------------------------------------------------------------------------------------------------------
# Fashion-MNIST
# ---------------------------------------------------------------------------------------------------------


def _candidate_dirs(fmnist_dir: Optional[Union[str, os.PathLike]]) -> List[Path]:
    if fmnist_dir is not None:
        return [Path(fmnist_dir)]
    dirs = [Path(os.environ['FASHION_MNIST_DIR'])] if os.environ.get('FASHION_MNIST_DIR') else []
    return dirs + [Path(d) for d in DEFAULT_FASHION_MNIST_DIRS]


def _find_idx_file(stem: str, dirs: Sequence[Path]) -> Path:
    for d in dirs:
        for name in (stem + '.gz', stem):
            if (d / name).is_file():
                return d / name
    looked = ', '.join(str(d) for d in dirs)
    raise FileNotFoundError(f'Fashion-MNIST file {stem}[.gz] not found (looked in: {looked}). '
                            f'{FASHION_MNIST_INSTALL_HINT}')


def _read_idx(path: Path, expected_magic: int) -> np.ndarray:
    opener = gzip.open if path.suffix == '.gz' else open
    try:
        with opener(path, 'rb') as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f'cannot read Fashion-MNIST file {path}: {e}. {FASHION_MNIST_INSTALL_HINT}') from e
    if len(data) < 8:
        raise ValueError(f'Fashion-MNIST file {path} is truncated ({len(data)} bytes)')
    magic, count = struct.unpack('>II', data[:8])
    if magic != expected_magic:
        raise ValueError(f'Fashion-MNIST file {path} has magic number 0x{magic:08x}, expected '
                         f'0x{expected_magic:08x} (IDX ubyte, {expected_magic & 0xFF} dimension(s))')
    ndim = magic & 0xFF
    dims = (count,) + struct.unpack('>' + 'I' * (ndim - 1), data[8:4 + 4 * ndim])
    offset = 4 + 4 * ndim
    if len(data) != offset + int(np.prod(dims)):
        raise ValueError(f'Fashion-MNIST file {path} is truncated or corrupt: header says {dims}, '
                         f'payload has {len(data) - offset} bytes')
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


@lru_cache(maxsize=4)
def _load_fashion_mnist_cached(split: str, dirs: Tuple[Path, ...]) -> Tuple[np.ndarray, np.ndarray]:
    prefix = 'train' if split == 'train' else 't10k'
    img_path = _find_idx_file(f'{prefix}-images-idx3-ubyte', dirs)
    lbl_path = _find_idx_file(f'{prefix}-labels-idx1-ubyte', dirs)
    images = _read_idx(img_path, 0x00000803)
    labels = _read_idx(lbl_path, 0x00000801).astype(np.int64)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise ValueError(f'Fashion-MNIST files {img_path} / {lbl_path} disagree: images {images.shape}, '
                         f'labels {labels.shape}; expected [N, 28, 28] and [N]')
    if labels.max(initial=0) >= len(FASHION_SCENES_CLASSES):
        raise ValueError(f'Fashion-MNIST labels in {lbl_path} exceed 9 (max {labels.max()})')
    labels.setflags(write=False)
    _logger.debug('loaded Fashion-MNIST %s: %d items from %s', split, len(images), img_path)
    return images, labels


def load_fashion_mnist(split: str,
                       fmnist_dir: Optional[Union[str, os.PathLike]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Read a Fashion-MNIST split from its IDX ubyte files (gzip-compressed or not).

    Args:
        split: ``'train'`` (60,000 items) or ``'test'`` (10,000 items; ``'t10k'`` is accepted too).
        fmnist_dir: folder holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``. Default:
            ``$FASHION_MNIST_DIR`` if set, then ``/usr/share/datasets/fashion-mnist`` (Debian package
            ``dataset-fashion-mnist``).

    Returns:
        ``(images, labels)``: read-only ``uint8 [N, 28, 28]`` (white item on black) and ``int64 [N]`` with
        values 0..9 in the order of :data:`FASHION_SCENES_CLASSES`. Cached per process.

    Raises:
        FileNotFoundError: the files are missing; the message says how to install them.
        ValueError: unknown split, or a file that is not a valid IDX file.
    """
    split = {'t10k': 'test'}.get(split, split)
    if split not in ('train', 'test'):
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; use 'train' or 'test'")
    return _load_fashion_mnist_cached(split, tuple(_candidate_dirs(fmnist_dir)))


def _item_alpha(item: np.ndarray) -> np.ndarray:
    """Alpha mask of a 28×28 item: 0 at the black background, 1 for intensities ≥ 48/255."""
    return np.clip((item.astype(np.float32) - _ALPHA_LOW) / (_ALPHA_HIGH - _ALPHA_LOW), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------------------
# Backgrounds
# ---------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def load_backgrounds() -> Tuple[Tuple[str, np.ndarray], ...]:
    """Load the background photographs of :data:`BACKGROUNDS` from scikit-image's bundled data.

    Returns:
        ``((name, uint8 [H, W, 3]), ...)`` in :data:`BACKGROUNDS` order, read-only. Cached per process.

    Raises:
        RuntimeError: scikit-image is missing or one of the photos cannot be loaded offline.
    """
    try:
        import skimage.data as skdata
    except ImportError as e:
        raise RuntimeError('Fashion Scenes needs scikit-image for its background photos: '
                           '`pip install scikit-image` (or `pip install srdl-timm[offline]`)') from e
    out = []
    for name in BACKGROUNDS:
        try:
            img = np.asarray(getattr(skdata, name)())
        except Exception as e:  # pooch download attempts, missing files, ...
            raise RuntimeError(f'cannot load background photo skimage.data.{name}() offline: {e}') from e
        if img.ndim != 3 or img.shape[2] < 3 or img.dtype != np.uint8:
            raise RuntimeError(f'skimage.data.{name}() is not a uint8 colour photo: {img.shape} {img.dtype}')
        img = np.ascontiguousarray(img[:, :, :3])
        img.setflags(write=False)
        out.append((name, img))
    return tuple(out)


# ---------------------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------------------


def resolve_params(preset: str = 'quick', **overrides: Any) -> Dict[str, Any]:
    """Return the full parameter dict of a preset with keyword overrides applied (JSON types only).

    Args:
        preset: a key of :data:`PRESETS`.
        **overrides: any key of the preset, e.g. ``num_train=300, image_size=96``.

    Raises:
        ValueError: unknown preset or invalid value (the message names it).
        TypeError: an override key no preset knows.
    """
    if preset not in PRESETS:
        raise ValueError(f'unknown Fashion Scenes preset {preset!r}; choose one of {sorted(PRESETS)}')
    params = copy.deepcopy(PRESETS[preset])
    unknown = sorted(set(overrides) - set(params))
    if unknown:
        raise TypeError(f'unknown Fashion Scenes parameter(s) {unknown}; known: {sorted(params)}')
    params.update(overrides)
    params = jsonable(params)
    for key in ('num_train', 'num_val', 'num_test'):
        if not isinstance(params[key], int) or params[key] < 0:
            raise ValueError(f'{key} must be a non-negative int, got {params[key]!r}')
    if not isinstance(params['image_size'], int) or params['image_size'] < 32:
        raise ValueError(f"image_size must be an int ≥ 32, got {params['image_size']!r}")
    lo, hi = params['scale_range']
    if not 0 < lo <= hi <= 1:
        raise ValueError(f'scale_range must satisfy 0 < low ≤ high ≤ 1, got {params["scale_range"]!r}')
    if not isinstance(params['max_objects'], int) or params['max_objects'] < 1:
        raise ValueError(f"max_objects must be an int ≥ 1, got {params['max_objects']!r}")
    if not 0 <= params['min_visible'] < 1:
        raise ValueError(f"min_visible must be in [0, 1), got {params['min_visible']!r}")
    if not 1 <= params['jpeg_quality'] <= 100:
        raise ValueError(f"jpeg_quality must be in [1, 100], got {params['jpeg_quality']!r}")
    if not 0 < params['val_item_fraction'] < 1:
        raise ValueError(f"val_item_fraction must be in (0, 1), got {params['val_item_fraction']!r}")
    return params
