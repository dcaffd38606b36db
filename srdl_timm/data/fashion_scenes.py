"""Fashion Scenes: an offline multi-label benchmark composed from real photographs, in COCO format.

MS-COCO and VOC need a download; this benchmark is built on any machine from two sources that install
offline, and it keeps the structure the SRDL paper's motivation (§1, Fig. 1) depends on: several objects per
image, small and occluded objects, label co-occurrence with groups, occasional unusual combinations and rare
categories.

Sources (all real photographs, all freely licensed)
    * Objects: Fashion-MNIST (Zalando SE, MIT licence): 70,000 28×28 grayscale product photos of 10 classes.
      Debian/Ubuntu: ``apt-get install dataset-fashion-mnist`` puts the four ``*-ubyte.gz`` files in
      ``/usr/share/datasets/fashion-mnist``; elsewhere download them from
      https://github.com/zalandoresearch/fashion-mnist and set ``FASHION_MNIST_DIR`` (or pass ``fmnist_dir``).
    * Backgrounds: the colour photographs shipped inside scikit-image (no download), see ``BACKGROUNDS``:
      astronaut (NASA, public domain), coffee (CC0, Rachel Michetti), chelsea (CC0, Stefan van der Walt),
      rocket (SpaceX, public domain), hubble_deep_field (NASA, public domain), immunohistochemistry (CMMI,
      "no known copyright restrictions"). The Middlebury stereo pair (no stated licence) and the retina (large
      black corners) are left out on purpose.

Categories
    The 10 Fashion-MNIST classes, category ids 1..10 in Fashion-MNIST label order, named with real English
    words so label-name word vectors exist for all of them (all are GloVe-6B tokens; ``'ankle boot'`` is two
    tokens): ``FASHION_SCENES_CLASSES``. "Trouser" and "T-shirt/top" are renamed ``'trousers'`` and
    ``'t-shirt'`` (no slash).

Label model (``LABEL_MODEL``; sampled without rendering by :func:`sample_label_sets`)
    Each image first draws a scene type. Four are outfits whose members appear together most of the time:
    casual (t-shirt, trousers, sneaker), winter (coat, pullover, ankle boot), summer (dress, sandal, rarely a
    bag) and office (shirt, trousers, ankle boot, bag; only 2.5 % of images). The fifth, ``mixed`` (8 %),
    draws 2–3 common categories uniformly: the *occasional unusual combinations*. On top, every common
    category outside the outfit joins with probability 3 % (noise co-occurrence); the two rare categories only
    with 0.2 %. ``'shirt'`` and ``'bag'`` are the rare categories (about 2–3 % of images each); shirt is also
    the class Fashion-MNIST classifiers confuse most (with t-shirt, pullover, coat), so recognising it profits
    from its context (trousers + ankle boot), as the paper's traffic-light example does. Shoes come as a
    pair with probability 40 %, other categories twice with 15 %; at most ``max_objects`` objects per image.

Rendering (:func:`render_scene`, one ``numpy.random.Generator`` per image, so images can be rendered in any
order or in parallel and still come out identical)
    * Background: one of the photos, random crop (side 30–100 % of the photo's short side, aspect ratio
      e^±0.25), random horizontal flip, brightness ×U(0.8, 1.1), bilinear resize to ``image_size``².
    * Object: a Fashion-MNIST item cropped to its own extent, its longer side scaled to a log-uniform
      fraction of the image side in ``scale_range`` (default 0.16–0.6: objects cover from under 1 % to about
      a third of the image, about a quarter are *small*, under 3 % of the area), random horizontal flip and
      colour tint (30 % stay gray). The item's intensity is its alpha mask, ramped so that intensities
      ≥ 48/255 are opaque and the black product-photo background is fully transparent (sandal straps and bag
      handles show the background through their gaps).
    * Occlusion: objects are pasted in random order, later ones over earlier ones. A position is accepted
      only if every earlier object keeps at least ``min_visible`` of its alpha mass visible (up to
      ``placement_tries`` random positions); an object with no acceptable position is dropped, so the labels
      written are always exactly the objects visible in the image. Every image keeps at least one object.

Splits and leakage
    Train and val scenes use items from Fashion-MNIST's train split, partitioned by a seeded permutation
    into disjoint pools (5/6 train, 1/6 val); test scenes use Fashion-MNIST's test split only, so no item's
    pixels appear in two splits. Within a split items are drawn per class without replacement, reshuffling
    only when a class's pool is exhausted (the ``full`` preset reuses some items at new scales and tints).
    Each annotation records its source item as ``fmnist_index`` (an index into that Fashion-MNIST split).

Output (``root`` layout)::

    root/annotations/{train,val,test}.json   COCO instances format (see below)
    root/images/{train,val,test}/000000.jpg  JPEG, quality ``jpeg_quality`` (default 90)
    root/stats.json                          label frequencies, co-occurrence, objects/image, object sizes
    root/cooccurrence.png                    P(column | row) on the train split + label frequencies

    COCO JSON: ``images`` (id from 1, file_name relative to ``info.image_dir``, width, height, license),
    ``annotations`` (id from 1, image_id, category_id, bbox = [x, y, w, h] of the pasted item's opaque extent
    (amodal, in pixels), area = visible opaque pixel count, iscrowd = 0, plus the extra keys
    ``visible_fraction`` and ``fmnist_index``), ``categories`` (id, name, supercategory 'fashion', in id
    order), ``licenses`` and ``info`` (generator version, seed, preset, every parameter, the label model,
    the sources with their licences and the software versions). No segmentation polygons are written.

Determinism and reuse
    Everything derives from ``seed`` through ``numpy.random.default_rng`` streams keyed by (seed, purpose,
    split[, image]). The same seed, parameters and software stack (numpy, Pillow, scikit-image, matplotlib)
    give byte-identical files; build time is only logged, never written. A build goes into a temporary
    sibling directory that is renamed onto ``root`` only when complete, so an interrupted build never looks
    complete. An existing ``root`` is reused only if its ``stats.json`` records the same generator version,
    seed and parameters and every annotation file and image is there with the recorded total size;
    otherwise it is rebuilt when it is an incomplete build of this generator (or ``overwrite=True``), and
    left alone with an error naming the mismatch when it is a complete build with other parameters or an
    unrelated directory.

Presets (``PRESETS``): ``tiny`` (12/12/12 images at 64 px, tests), ``quick`` (1,500/300/500 at 128 px, a
CPU model learns it in minutes), ``full`` (20,000/2,000/5,000 at 224 px, for a GPU). Any parameter can be
overridden by keyword.

Command line: ``python -m srdl_timm.data.fashion_scenes --root DIR [--preset quick|full|tiny] [--seed N]``.
"""
from __future__ import annotations

import argparse
import colorsys
import copy
import gzip
import hashlib
import io
import json
import logging
import math
import os
import shutil
import struct
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

__all__ = [
    'FASHION_SCENES_CLASSES', 'FASHION_SCENES_VERSION', 'PRESETS', 'LABEL_MODEL', 'BACKGROUNDS', 'SPLITS',
    'FASHION_MNIST_INSTALL_HINT', 'load_fashion_mnist', 'load_backgrounds', 'resolve_params',
    'sample_label_sets', 'scene_label_sets', 'render_scene', 'build_fashion_scenes', 'cooccurrence_counts', 'format_stats_summary',
    'main',
]

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
_GENERATOR = 'srdl_timm.data.fashion_scenes'  # marks folders this module may replace


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

def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


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
    params = _jsonable(params)
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


# ---------------------------------------------------------------------------------------------------------
# Label sets (no rendering)
# ---------------------------------------------------------------------------------------------------------

def sample_label_sets(num_images: int, rng: np.random.Generator, max_objects: int = 6,
                      label_model: Optional[Mapping[str, Any]] = None) -> List[List[int]]:
    """Sample the objects of ``num_images`` scenes from the label co-occurrence model.

    Args:
        num_images: how many scenes.
        rng: random generator (consumed).
        max_objects: at most this many objects per scene (extra instances, then extra categories, are cut).
        label_model: defaults to :data:`LABEL_MODEL`.

    Returns:
        One list per scene of category indices (0-based, :data:`FASHION_SCENES_CLASSES` order) in paste
        order; a category appears once per instance. Every scene has at least one object.
    """
    lm = LABEL_MODEL if label_model is None else label_model
    index = {n: i for i, n in enumerate(FASHION_SCENES_CLASSES)}
    scene_names = list(lm['scenes'])
    weights = np.array([lm['scenes'][s][0] for s in scene_names], dtype=np.float64)
    weights /= weights.sum()
    rare = {index[n] for n in lm['rare']}
    common = [c for c in range(len(FASHION_SCENES_CLASSES)) if c not in rare]
    pairs = {index[n] for n in lm['pair_categories']}
    out: List[List[int]] = []
    for _ in range(num_images):
        scene = scene_names[int(rng.choice(len(scene_names), p=weights))]
        members = {index[n]: p for n, p in lm['scenes'][scene][1].items()}
        if members:
            cats = [c for c, p in members.items() if rng.random() < p]
            if not cats:
                cats = [max(members, key=lambda c: (members[c], -c))]
        else:  # an unusual combination
            k = int(rng.choice(lm['mixed_num_categories']))
            cats = [int(c) for c in rng.choice(common, size=k, replace=False)]
        for c in range(len(FASHION_SCENES_CLASSES)):
            if c not in members and c not in cats:
                if rng.random() < (lm['noise_prob_rare'] if c in rare else lm['noise_prob_common']):
                    cats.append(c)
        if len(cats) > max_objects:
            cats = [cats[int(i)] for i in sorted(rng.choice(len(cats), size=max_objects, replace=False))]
        objs = list(cats)
        for c in cats:
            p2 = lm['pair_prob'] if c in pairs else lm['second_instance_prob']
            if rng.random() < p2 and len(objs) < max_objects:
                objs.append(c)
        out.append([objs[int(i)] for i in rng.permutation(len(objs))])
    return out


def scene_label_sets(seed: int, split: str, num_images: int, max_objects: int = 6) -> List[List[int]]:
    """The objects (category indices, paste order) that :func:`build_fashion_scenes` tries to paste.

    The builder renders exactly these lists for ``split`` (objects it cannot place without hiding earlier
    ones are dropped and counted in ``stats['splits'][split]['dropped_objects']``). Useful to study the label
    distribution of large configurations without rendering.

    Args:
        seed: the build seed.
        split: ``'train'``, ``'val'`` or ``'test'``.
        num_images: number of images of the split.
        max_objects: the build's ``max_objects``.
    """
    if split not in _SPLIT_CODE:
        raise ValueError(f'unknown split {split!r}; use one of {SPLITS}')
    rng = np.random.default_rng([seed, _STREAM_LABELS, _SPLIT_CODE[split]])
    return sample_label_sets(num_images, rng, max_objects)


class _ItemPool:
    """Per-class draws without replacement from a set of Fashion-MNIST indices (reshuffle when exhausted)."""

    def __init__(self, indices: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> None:
        self.rng = rng
        self.by_class = [np.sort(indices[labels[indices] == c]) for c in range(len(FASHION_SCENES_CLASSES))]
        for c, idx in enumerate(self.by_class):
            if len(idx) == 0:
                raise ValueError(f'no Fashion-MNIST items of class {FASHION_SCENES_CLASSES[c]!r} in the pool')
        self.order = [rng.permutation(idx) for idx in self.by_class]
        self.cursor = [0] * len(self.by_class)
        self.passes = [0] * len(self.by_class)
        self.reused = 0  # draws of an item already drawn before (its class's pool was exhausted)

    def draw(self, c: int) -> int:
        """Next item index of class ``c``."""
        if self.cursor[c] >= len(self.order[c]):
            self.order[c] = self.rng.permutation(self.by_class[c])
            self.cursor[c] = 0
            self.passes[c] += 1
        i = int(self.order[c][self.cursor[c]])
        self.cursor[c] += 1
        self.reused += int(self.passes[c] > 0)
        return i


def _item_pools(labels_train: np.ndarray, labels_test: np.ndarray, seed: int,
                val_item_fraction: float) -> Dict[str, np.ndarray]:
    perm = np.random.default_rng([seed, _STREAM_POOL]).permutation(len(labels_train))
    n_val = int(round(len(perm) * val_item_fraction))
    return {'train': np.sort(perm[n_val:]), 'val': np.sort(perm[:n_val]), 'test': np.arange(len(labels_test))}


# ---------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------

def _resize(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear (antialiased when shrinking) resize of a float32 2-D array with Pillow."""
    return np.asarray(Image.fromarray(arr.astype(np.float32), mode='F').resize(
        (width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def _background(photos: Sequence[Tuple[str, np.ndarray]], size: int, rng: np.random.Generator) -> np.ndarray:
    _, photo = photos[int(rng.integers(len(photos)))]
    h, w = photo.shape[:2]
    side = rng.uniform(0.3, 1.0) * min(h, w)
    aspect = math.exp(rng.uniform(-0.25, 0.25))
    cw = int(min(w, max(8, round(side * math.sqrt(aspect)))))
    ch = int(min(h, max(8, round(side / math.sqrt(aspect)))))
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    crop = Image.fromarray(np.ascontiguousarray(photo[y0:y0 + ch, x0:x0 + cw]))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    bg = np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    return bg * np.float32(rng.uniform(0.8, 1.1))


def _tint(rng: np.random.Generator, gray_prob: float) -> np.ndarray:
    gain = rng.uniform(0.8, 1.25)
    if rng.random() < gray_prob:
        rgb = (1.0, 1.0, 1.0)
    else:
        rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.25, 0.8), rng.uniform(0.75, 1.0))
    return (np.asarray(rgb, dtype=np.float32) * np.float32(gain)).reshape(1, 1, 3)


def render_scene(categories: Sequence[int], items: Sequence[np.ndarray], params: Mapping[str, Any],
                 rng: np.random.Generator,
                 backgrounds: Optional[Sequence[Tuple[str, np.ndarray]]] = None,
                 ) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """Render one scene: a background crop with the given Fashion-MNIST items pasted in order.

    Args:
        categories: category index of each object, in paste order (later objects occlude earlier ones).
        items: the matching 28×28 uint8 Fashion-MNIST images.
        params: resolved parameters (:func:`resolve_params`): image_size, scale_range, min_visible,
            placement_tries, gray_prob.
        rng: the scene's random generator. The background is drawn first, so rendering with no objects and
            the same generator state gives this scene's bare background.
        backgrounds: ``(name, photo)`` pairs; default :func:`load_backgrounds`.

    Returns:
        ``(image, objects)``: ``uint8 [S, S, 3]`` and, for every object actually pasted (in paste order),
        ``{'position', 'category', 'bbox' [x, y, w, h], 'area' (visible opaque pixels), 'visible_fraction'}``;
        ``position`` indexes ``categories``. Objects with no position that keeps earlier objects at least
        ``min_visible`` visible are left out; the first object is always pasted.
    """
    if len(categories) != len(items):
        raise ValueError(f'{len(categories)} categories but {len(items)} items')
    size = int(params['image_size'])
    img = _background(backgrounds if backgrounds is not None else load_backgrounds(), size, rng)
    lo, hi = params['scale_range']
    min_visible = float(params['min_visible'])
    placed: List[Dict[str, Any]] = []  # each: window, alpha, vis (visible alpha inside window), mass
    for pos, (cat, item) in enumerate(zip(categories, items)):
        alpha28 = _item_alpha(item)
        ys, xs = np.nonzero(alpha28 > 0)
        if len(ys) == 0:
            continue  # an empty item cannot be seen; never labelled
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        alpha28 = alpha28[y0:y1, x0:x1]
        inten28 = item[y0:y1, x0:x1].astype(np.float32)
        side = math.exp(rng.uniform(math.log(lo), math.log(hi))) * size
        scale = side / max(y1 - y0, x1 - x0)
        oh = int(min(size, max(3, round((y1 - y0) * scale))))
        ow = int(min(size, max(3, round((x1 - x0) * scale))))
        flip = rng.random() < 0.5
        colour = _tint(rng, float(params['gray_prob']))
        alpha = np.clip(_resize(alpha28, ow, oh), 0.0, 1.0)
        inten = _resize(inten28, ow, oh)
        if flip:
            alpha, inten = alpha[:, ::-1], inten[:, ::-1]
        mass = float(alpha.sum())
        if mass <= 0:
            continue
        chosen = None
        for _ in range(int(params['placement_tries'])):
            py = int(rng.integers(0, size - oh + 1))
            px = int(rng.integers(0, size - ow + 1))
            ok = True
            for p in placed:
                # visible alpha of p that the new object would cover
                wy0, wx0 = max(py, p['y']), max(px, p['x'])
                wy1, wx1 = min(py + oh, p['y'] + p['h']), min(px + ow, p['x'] + p['w'])
                if wy0 >= wy1 or wx0 >= wx1:
                    continue
                covered = float((p['vis'][wy0 - p['y']:wy1 - p['y'], wx0 - p['x']:wx1 - p['x']]
                                 * alpha[wy0 - py:wy1 - py, wx0 - px:wx1 - px]).sum())
                if p['vis_mass'] - covered < min_visible * p['mass']:
                    ok = False
                    break
            if ok:
                chosen = (py, px)
                break
        if chosen is None:
            continue
        py, px = chosen
        for p in placed:
            wy0, wx0 = max(py, p['y']), max(px, p['x'])
            wy1, wx1 = min(py + oh, p['y'] + p['h']), min(px + ow, p['x'] + p['w'])
            if wy0 < wy1 and wx0 < wx1:
                sub = p['vis'][wy0 - p['y']:wy1 - p['y'], wx0 - p['x']:wx1 - p['x']]
                sub *= 1.0 - alpha[wy0 - py:wy1 - py, wx0 - px:wx1 - px]
                p['vis_mass'] = float(p['vis'].sum())
        a3 = alpha[:, :, None]
        rgb = np.clip(inten[:, :, None] * colour, 0.0, 255.0)
        win = img[py:py + oh, px:px + ow]
        win *= 1.0 - a3
        win += rgb * a3
        placed.append({'position': pos, 'category': int(cat), 'y': py, 'x': px, 'h': oh, 'w': ow,
                       'alpha': alpha, 'vis': alpha.copy(), 'mass': mass, 'vis_mass': mass})
    objects = []
    for p in placed:
        opaque = p['alpha'] > 0.5
        ys, xs = np.nonzero(opaque)
        if len(ys) == 0:  # a tiny, faint item: use its whole window
            by0, bx0, bh, bw = 0, 0, p['h'], p['w']
        else:
            by0, bx0 = int(ys.min()), int(xs.min())
            bh, bw = int(ys.max()) + 1 - by0, int(xs.max()) + 1 - bx0
        objects.append({
            'position': p['position'], 'category': p['category'],
            'bbox': [p['x'] + bx0, p['y'] + by0, bw, bh],
            'area': round(float((p['vis'] > 0.5).sum()), 2),
            'visible_fraction': round(p['vis_mass'] / p['mass'], 4),
        })
    out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out, objects


# ---------------------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------------------

_WORKER: Dict[str, Any] = {}


def _init_worker(fmnist_dir: Optional[str]) -> None:
    _WORKER['fmnist'] = {s: load_fashion_mnist(s, fmnist_dir)[0] for s in ('train', 'test')}
    _WORKER['backgrounds'] = load_backgrounds()


def _render_task(task: Tuple[str, int, List[int], List[int], Dict[str, Any], int, str]) -> List[Dict[str, Any]]:
    split, index, cats, item_idx, params, seed, out_dir = task
    images = _WORKER['fmnist'][_ITEM_SOURCE[split]]
    rng = np.random.default_rng([seed, _STREAM_RENDER, _SPLIT_CODE[split], index])
    img, objects = render_scene(cats, [images[i] for i in item_idx], params, rng, _WORKER['backgrounds'])
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format='JPEG', quality=int(params['jpeg_quality']))
    with open(os.path.join(out_dir, f'{index:06d}.jpg'), 'wb') as f:
        f.write(buf.getvalue())
    for o in objects:
        o['fmnist_index'] = int(item_idx[o['position']])
    return objects


def _software_versions() -> Dict[str, str]:
    import matplotlib
    import PIL
    import skimage
    return {'numpy': np.__version__, 'pillow': PIL.__version__, 'scikit-image': skimage.__version__,
            'matplotlib': matplotlib.__version__}


def _identity(seed: int, preset: str, params: Mapping[str, Any]) -> Dict[str, Any]:
    return {'version': FASHION_SCENES_VERSION, 'seed': seed, 'preset': preset, 'params': dict(params)}


def cooccurrence_counts(label_sets: Sequence[Sequence[int]],
                        num_classes: int = len(FASHION_SCENES_CLASSES)) -> np.ndarray:
    """Image-level co-occurrence counts: ``M[i, j]`` = images containing both i and j (``M[i, i]`` = images with i).

    Args:
        label_sets: per image, the category indices present (duplicates are ignored).
        num_classes: matrix size.
    """
    y = np.zeros((len(label_sets), num_classes), dtype=np.int64)
    for r, cats in enumerate(label_sets):
        y[r, list(set(int(c) for c in cats))] = 1
    return y.T @ y


def _split_stats(label_sets: List[List[int]], objects: List[List[Dict[str, Any]]], image_size: int,
                 dropped: int) -> Dict[str, Any]:
    n = len(label_sets)
    co = cooccurrence_counts(label_sets)
    diag = np.diag(co)
    cond = np.divide(co, diag[:, None], out=np.zeros(co.shape, dtype=np.float64), where=diag[:, None] > 0)
    per_image = [len(o) for o in objects]
    areas = np.array([o['bbox'][2] * o['bbox'][3] / image_size ** 2 for objs in objects for o in objs])
    vis = np.array([o['visible_fraction'] for objs in objects for o in objs])
    instances = np.zeros(len(FASHION_SCENES_CLASSES), dtype=np.int64)
    for objs in objects:
        for o in objs:
            instances[o['category']] += 1
    q = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]

    def quantiles(x: np.ndarray) -> Dict[str, float]:
        return {f'p{int(p * 100)}': round(float(np.quantile(x, p)), 4) for p in q} if len(x) else {}

    hist = np.histogram(areas, bins=_SIZE_BIN_EDGES)[0] if len(areas) else np.zeros(len(_SIZE_BIN_EDGES) - 1)
    return {
        'num_images': n,
        'num_objects': int(sum(per_image)),
        'dropped_objects': int(dropped),
        'label_count': {c: int(diag[i]) for i, c in enumerate(FASHION_SCENES_CLASSES)},
        'label_frequency': {c: round(float(diag[i]) / max(n, 1), 4) for i, c in enumerate(FASHION_SCENES_CLASSES)},
        'instance_count': {c: int(instances[i]) for i, c in enumerate(FASHION_SCENES_CLASSES)},
        'labels_per_image_mean': round(float(diag.sum()) / max(n, 1), 4),
        'objects_per_image_mean': round(float(np.mean(per_image)) if n else 0.0, 4),
        'objects_per_image_hist': {str(k): int(v) for k, v in
                                   zip(*np.unique(per_image, return_counts=True))} if n else {},
        'cooccurrence': co.tolist(),
        'cooccurrence_conditional': np.round(cond, 4).tolist(),
        'object_area_fraction': {
            'quantiles': quantiles(areas),
            'bin_edges': list(_SIZE_BIN_EDGES),
            'hist': [int(v) for v in hist],
            f'small_fraction_below_{_SMALL_AREA}': round(float((areas < _SMALL_AREA).mean()) if len(areas) else 0.0, 4),
        },
        'visible_fraction': {
            'quantiles': quantiles(vis),
            'occluded_fraction_below_0.95': round(float((vis < 0.95).mean()) if len(vis) else 0.0, 4),
        },
    }


def _plot(stats: Mapping[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend switch, renders with Agg
    names = FASHION_SCENES_CLASSES
    split = 'train' if stats['splits']['train']['num_images'] else next(
        (s for s in SPLITS if stats['splits'][s]['num_images']), 'train')
    cond = np.asarray(stats['splits'][split]['cooccurrence_conditional'])
    fig = Figure(figsize=(13, 5.5))
    ax = fig.add_subplot(1, 2, 1)
    im = ax.imshow(cond, vmin=0, vmax=1, cmap='viridis')
    ax.set_xticks(range(len(names)), names, rotation=60, ha='right')
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f'{cond[i, j]:.2f}', ha='center', va='center', fontsize=6,
                    color='white' if cond[i, j] < 0.5 else 'black')
    ax.set_title(f'P(column | row), {split} split')
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax2 = fig.add_subplot(1, 2, 2)
    width = 0.8 / len(SPLITS)
    for k, s in enumerate(SPLITS):
        freq = [stats['splits'][s]['label_frequency'][c] for c in names]
        ax2.bar(np.arange(len(names)) + (k - 1) * width, freq, width, label=s)
    ax2.set_xticks(range(len(names)), names, rotation=60, ha='right')
    ax2.set_ylabel('fraction of images')
    ax2.set_title('label frequency')
    ax2.legend(loc='upper left', bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={'Software': None})


def _dump_json(obj: Any, path: Path, compact: bool = True) -> None:
    text = json.dumps(obj, separators=(',', ':')) if compact else json.dumps(obj, indent=1)
    path.write_text(text + '\n', encoding='utf-8')


def _dir_totals(d: Path) -> Dict[str, int]:
    sizes = [e.stat().st_size for e in os.scandir(d) if e.is_file() and e.name.endswith('.jpg')] if d.is_dir() else []
    return {'count': len(sizes), 'bytes': int(sum(sizes))}


def _check_complete(root: Path, identity: Mapping[str, Any]) -> Tuple[bool, str]:
    """(True, '') if root holds a complete build with this identity, else (False, reason)."""
    stats_path = root / _STATS_FILE
    if not stats_path.is_file():
        return False, f'{stats_path} is missing'
    try:
        stats = json.loads(stats_path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as e:
        return False, f'{stats_path} is unreadable: {e}'
    for key in ('version', 'seed', 'preset', 'params'):
        if stats.get(key) != identity[key]:
            return False, f'{stats_path} records {key}={stats.get(key)!r}, requested {identity[key]!r}'
    for split in SPLITS:
        ann = root / 'annotations' / f'{split}.json'
        if not ann.is_file():
            return False, f'{ann} is missing'
        want = stats.get('files', {}).get(split)
        got = _dir_totals(root / 'images' / split)
        if want != got:
            return False, f'{root / "images" / split} holds {got}, {stats_path} recorded {want}'
    if not (root / _PLOT_FILE).is_file():
        return False, f'{root / _PLOT_FILE} is missing'
    return True, ''


def _looks_like_ours(root: Path) -> bool:
    """True only if root carries this generator's marks (never for e.g. a real COCO folder)."""
    try:
        stats = json.loads((root / _STATS_FILE).read_text(encoding='utf-8'))
        if stats.get('generator') == _GENERATOR:
            return True
    except (OSError, ValueError, AttributeError):
        pass
    marker = f'"generator":"{_GENERATOR}"'.encode()
    for split in SPLITS:
        try:
            with open(root / 'annotations' / f'{split}.json', 'rb') as f:
                if marker in f.read(4096):  # the info block comes first
                    return True
        except OSError:
            pass
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_partials(parent: Path, name: str) -> None:
    for d in parent.glob(f'{_PARTIAL_PREFIX}{name}-*'):
        try:
            pid = int((d / _PID_FILE).read_text().strip())
        except (OSError, ValueError):
            pid = -1
        if pid > 0 and _pid_alive(pid):
            continue
        _logger.info('removing interrupted Fashion Scenes build %s', d)
        shutil.rmtree(d, ignore_errors=True)


def _write_build(tmp: Path, seed: int, preset: str, params: Dict[str, Any], workers: int,
                 fmnist_dir: Optional[str]) -> Dict[str, Any]:
    tr_images, tr_labels = load_fashion_mnist('train', fmnist_dir)
    te_images, te_labels = load_fashion_mnist('test', fmnist_dir)
    backgrounds = load_backgrounds()
    pools = _item_pools(tr_labels, te_labels, seed, params['val_item_fraction'])
    source_labels = {'train': tr_labels, 'test': te_labels}
    categories = [{'id': i + 1, 'name': n, 'supercategory': 'fashion'} for i, n in enumerate(FASHION_SCENES_CLASSES)]
    licenses = [{'id': 1, 'name': 'Fashion-MNIST items: MIT (Zalando SE); backgrounds: public domain / CC0',
                 'url': 'https://github.com/zalandoresearch/fashion-mnist'}]
    info_common = {
        'description': 'Fashion Scenes: Fashion-MNIST product photos composed onto scikit-image photographs',
        'generator': _GENERATOR, **_identity(seed, preset, params),
        'label_model': _jsonable(LABEL_MODEL),
        'sources': {
            'objects': 'Fashion-MNIST (Zalando SE, MIT licence), https://github.com/zalandoresearch/fashion-mnist',
            'backgrounds': {name: {'licence': BACKGROUNDS[name], 'shape': list(img.shape),
                                   'sha256': hashlib.sha256(img.tobytes()).hexdigest()}
                            for name, img in backgrounds},
        },
        'software': _software_versions(),
    }
    (tmp / 'annotations').mkdir()
    executor = None
    if workers > 1:
        executor = ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(fmnist_dir,))
    else:
        _WORKER['fmnist'] = {'train': tr_images, 'test': te_images}
        _WORKER['backgrounds'] = backgrounds
    split_stats: Dict[str, Any] = {}
    files: Dict[str, Any] = {}
    try:
        for split in SPLITS:
            n = int(params[f'num_{split}'])
            img_dir = tmp / 'images' / split
            img_dir.mkdir(parents=True)
            code = _SPLIT_CODE[split]
            wanted = scene_label_sets(seed, split, n, params['max_objects'])
            pool = _ItemPool(pools[split], source_labels[_ITEM_SOURCE[split]],
                             np.random.default_rng([seed, _STREAM_ITEMS, code]))
            tasks = [(split, i, cats, [pool.draw(c) for c in cats], params, seed, str(img_dir))
                     for i, cats in enumerate(wanted)]
            t0 = time.perf_counter()
            results = executor.map(_render_task, tasks, chunksize=16) if executor else map(_render_task, tasks)
            images, annotations, label_sets, objects = [], [], [], []
            dropped = 0
            for (_, i, cats, _, _, _, _), objs in zip(tasks, results):
                dropped += len(cats) - len(objs)
                images.append({'id': i + 1, 'file_name': f'{i:06d}.jpg', 'width': params['image_size'],
                               'height': params['image_size'], 'license': 1})
                for o in objs:
                    annotations.append({'id': len(annotations) + 1, 'image_id': i + 1,
                                        'category_id': o['category'] + 1, 'bbox': o['bbox'], 'area': o['area'],
                                        'iscrowd': 0, 'visible_fraction': o['visible_fraction'],
                                        'fmnist_index': o['fmnist_index']})
                label_sets.append([o['category'] for o in objs])
                objects.append(objs)
                if (i + 1) % 1000 == 0:
                    _logger.info('%s: %d/%d images', split, i + 1, n)
            _logger.info('%s: %d images rendered in %.1fs (%d item draws reused an item)', split, n,
                         time.perf_counter() - t0, pool.reused)
            info = {**info_common, 'split': split, 'image_dir': f'images/{split}',
                    'fashion_mnist_split': _ITEM_SOURCE[split]}
            _dump_json({'info': info, 'licenses': licenses, 'images': images, 'annotations': annotations,
                        'categories': categories}, tmp / 'annotations' / f'{split}.json')
            split_stats[split] = _split_stats(label_sets, objects, params['image_size'], dropped)
            split_stats[split]['reused_item_draws'] = pool.reused
            files[split] = _dir_totals(img_dir)
    finally:
        if executor is not None:
            executor.shutdown()
        _WORKER.clear()
    stats = {'generator': _GENERATOR, **_identity(seed, preset, params), 'classes': list(FASHION_SCENES_CLASSES),
             'files': files,
             'splits': split_stats}
    _plot(stats, tmp / _PLOT_FILE)
    _dump_json(stats, tmp / _STATS_FILE, compact=False)  # written last: marks the build complete
    return stats


def build_fashion_scenes(root: Union[str, os.PathLike], preset: str = 'quick', seed: int = 0,
                         overwrite: bool = False, workers: int = 1,
                         fmnist_dir: Optional[Union[str, os.PathLike]] = None, **overrides: Any) -> Dict[str, Any]:
    """Build (or reuse) the Fashion Scenes benchmark in ``root`` and return its statistics.

    Args:
        root: output folder (layout in the module docstring). Created if missing.
        preset: ``'tiny'``, ``'quick'`` or ``'full'`` (:data:`PRESETS`).
        seed: non-negative int; everything is deterministic from it.
        overwrite: replace an existing complete build whose seed/parameters differ. A non-empty folder that
            is not a build of this generator is never replaced.
        workers: render processes (> 1 uses a process pool; the output does not depend on it).
        fmnist_dir: Fashion-MNIST folder (default: ``$FASHION_MNIST_DIR``, then the Debian package's).
        **overrides: parameter overrides, e.g. ``num_train=200, image_size=96`` (see :func:`resolve_params`).

    Returns:
        The content of ``root/stats.json``: ``version, seed, preset, params, classes, files`` and per split
        ``splits[split]``: label counts/frequencies, co-occurrence counts and P(j|i), objects per image,
        object area fractions, visibility.

    Raises:
        FileExistsError: ``root`` holds something this call must not replace without ``overwrite=True``.
        FileNotFoundError: Fashion-MNIST is missing (the message says how to install it).
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f'seed must be a non-negative int, got {seed!r}')
    params = resolve_params(preset, **overrides)
    identity = _identity(seed, preset, params)
    root = Path(root).expanduser().absolute()
    ok, reason = _check_complete(root, identity)
    if ok:
        _logger.info('reusing complete Fashion Scenes build in %s (seed %d, preset %s)', root, seed, preset)
        return json.loads((root / _STATS_FILE).read_text(encoding='utf-8'))
    if root.exists():
        if not root.is_dir():
            raise FileExistsError(f'{root} exists and is not a directory')
        nonempty = any(root.iterdir())
        if nonempty and not _looks_like_ours(root):
            raise FileExistsError(f'{root} is a non-empty folder that is not a Fashion Scenes build (no '
                                  f'stats.json or annotations/*.json written by {_GENERATOR}); choose another '
                                  f'root or empty it')
        if nonempty and not overwrite:
            stats_path = root / _STATS_FILE
            old_complete = False
            if stats_path.is_file():
                try:
                    old = json.loads(stats_path.read_text(encoding='utf-8'))
                    old_complete = _check_complete(root, _identity(old['seed'], old['preset'], old['params']))[0] \
                        and old.get('version') == FASHION_SCENES_VERSION
                except (OSError, ValueError, KeyError, TypeError):
                    old_complete = False
            if old_complete:
                raise FileExistsError(f'{root} holds a complete Fashion Scenes build with other settings '
                                      f'({reason}); pass overwrite=True to replace it or choose another root')
            _logger.warning('%s holds an incomplete or outdated Fashion Scenes build (%s); rebuilding', root, reason)
    parent = root.parent
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(parent, root.name)
    tmp = Path(tempfile.mkdtemp(prefix=f'{_PARTIAL_PREFIX}{root.name}-', dir=parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private (0700); the build is an ordinary shared folder
    (tmp / _PID_FILE).write_text(str(os.getpid()))
    t0 = time.perf_counter()
    try:
        fm = None if fmnist_dir is None else str(fmnist_dir)
        stats = _write_build(tmp, seed, preset, params, max(1, int(workers)), fm)
        (tmp / _PID_FILE).unlink()
        if root.exists():
            trash = Path(tempfile.mkdtemp(prefix=f'{_PARTIAL_PREFIX}{root.name}-old-', dir=parent))
            os.rename(root, trash / 'old')
            os.rename(tmp, root)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _logger.info('built Fashion Scenes (%s, seed %d) in %s in %.1fs', preset, seed, root, time.perf_counter() - t0)
    return stats


# ---------------------------------------------------------------------------------------------------------
# Summary / CLI
# ---------------------------------------------------------------------------------------------------------

def format_stats_summary(stats: Mapping[str, Any]) -> str:
    """Render the statistics returned by :func:`build_fashion_scenes` as a short markdown report."""
    splits = stats['splits']
    lines = [f"Fashion Scenes v{stats['version']} · preset {stats['preset']} · seed {stats['seed']} · "
             f"{stats['params']['image_size']}px", '',
             '| split | images | objects | labels/img | objects/img | small (<3% area) | occluded (<95% vis) '
             '| dropped | JPEG MB |', '|---|---|---|---|---|---|---|---|---|']
    for s in SPLITS:
        st = splits[s]
        small = next(v for k, v in st['object_area_fraction'].items() if k.startswith('small_fraction'))
        lines.append(f"| {s} | {st['num_images']} | {st['num_objects']} | {st['labels_per_image_mean']:.2f} | "
                     f"{st['objects_per_image_mean']:.2f} | {small:.1%} | "
                     f"{st['visible_fraction']['occluded_fraction_below_0.95']:.1%} | {st['dropped_objects']} | "
                     f"{stats['files'][s]['bytes'] / 1e6:.1f} |")
    lines += ['', '| category | ' + ' | '.join(f'{s} freq' for s in SPLITS) + ' |',
              '|---|' + '---|' * len(SPLITS)]
    for c in stats['classes']:
        lines.append(f'| {c} | ' + ' | '.join(f"{splits[s]['label_frequency'][c]:.3f}" for s in SPLITS) + ' |')
    q = splits['train']['object_area_fraction']['quantiles']
    if q:
        lines += ['', 'train object area (fraction of image): ' +
                  ', '.join(f'{k} {v:.3f}' for k, v in q.items())]
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: build (or reuse) Fashion Scenes and print its statistics summary."""
    ap = argparse.ArgumentParser(prog='python -m srdl_timm.data.fashion_scenes', description=__doc__.split('\n')[0])
    ap.add_argument('--root', required=True, help='output folder')
    ap.add_argument('--preset', default='quick', choices=sorted(PRESETS))
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--overwrite', action='store_true', help='replace a build with other settings')
    ap.add_argument('--workers', type=int, default=1, help='render processes (output does not depend on it)')
    ap.add_argument('--fmnist-dir', default=None, help='Fashion-MNIST folder (default: $FASHION_MNIST_DIR, '
                                                        'then /usr/share/datasets/fashion-mnist)')
    ap.add_argument('--set', nargs='*', default=[], metavar='KEY=JSON',
                    help='parameter overrides, e.g. --set num_train=300 image_size=96')
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s')
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition('=')
        if not sep:
            ap.error(f'--set expects KEY=VALUE, got {item!r}')
        try:
            overrides[key] = json.loads(value)
        except ValueError:
            ap.error(f'--set {key}: {value!r} is not valid JSON')
    try:
        t0 = time.perf_counter()
        stats = build_fashion_scenes(args.root, args.preset, args.seed, overwrite=args.overwrite,
                                     workers=args.workers, fmnist_dir=args.fmnist_dir, **overrides)
        elapsed = time.perf_counter() - t0
    except (FileNotFoundError, FileExistsError, ValueError, TypeError, RuntimeError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(format_stats_summary(stats))
    print(f'\n{args.root}: {elapsed:.1f}s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
