"""Fashion Scenes scenes: label sets (no rendering), per-class item pools, and rendering one scene.

Every random choice comes from ``numpy.random.default_rng`` streams keyed by (seed, purpose, split[, image]),
so images can be rendered in any order or in parallel and come out identical.
"""
from __future__ import annotations

import colorsys
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from .sources import (FASHION_SCENES_CLASSES, LABEL_MODEL, SPLITS, _SPLIT_CODE, _STREAM_LABELS, _STREAM_POOL,
                      _item_alpha, load_backgrounds)


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
