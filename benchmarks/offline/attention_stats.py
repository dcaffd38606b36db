"""Does the spatial attention (eq. 5) find each class's object, and is it category-specific?

Three measures on SA maps ``[N, C, h, w]`` of a test split with ground-truth boxes (:func:`.stats.load_boxes`):

* :func:`pointing_game`: a present class's SA peak lies on a box of that class (chance: a uniformly random cell).
  A class-agnostic objectness map also scores well above chance here.
* :func:`class_discriminative_pointing_game`: on images with two or more present classes whose boxes occupy
  disjoint grid cells, does a class's peak lie on *its own* box rather than on another present class's box? Beside it:
  chance (a random cell) and the value of one map shared by every class of an image.
* :func:`map_similarity`: correlation and top-cell IoU between the SA maps of two present classes of the same image,
  against the same two classes' maps taken from different images.

:func:`attention_statistics` runs all three; the benchmark stores its dict per run.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

Boxes = Mapping[int, Sequence[Tuple[float, float, float, float]]]


def box_cells(boxes: Sequence[Tuple[float, float, float, float]], width: float, height: float, h: int, w: int
              ) -> np.ndarray:
    """bool ``[h, w]``: the grid cells (of an ``h x w`` grid over a ``width x height`` image) that overlap a box."""
    xs = np.arange(w + 1) * width / w
    ys = np.arange(h + 1) * height / h
    cells = np.zeros((h, w), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        cells |= ((ys[:-1] < y1) & (ys[1:] > y0))[:, None] & ((xs[:-1] < x1) & (xs[1:] > x0))[None, :]
    return cells


def _image_size(boxes: Boxes) -> Tuple[float, float]:
    return boxes[-1][0][2], boxes[-1][0][3]


def pointing_game(maps: np.ndarray, targets: np.ndarray, boxes: Sequence[Boxes]) -> Dict[str, float]:
    """Does each class's spatial attention peak on that class's object?

    For every (image, present class) pair with a ground-truth box, the cell where ``SA_c`` is largest is a hit when
    it overlaps a box of class ``c``. ``chance`` is the hit rate of a uniformly random cell (the mean fraction of
    cells overlapping the boxes).

    Args:
        maps: ``[N, C, h, w]`` spatial attention.
        targets: ``[N, C]`` (1 = present).
        boxes: per image, from :func:`.stats.load_boxes` (key -1: the image size).

    Returns:
        ``hit_rate`` and ``chance`` in percent, ``num_pairs``; ``sa_mean`` (mean SA value) and ``sa_peak_to_peak``
        (mean over maps of max - min): how much the maps vary at all.
    """
    n, _, h, w = maps.shape
    stats = {'sa_mean': float(maps.mean()), 'sa_peak_to_peak': float((maps.max((2, 3)) - maps.min((2, 3))).mean())}
    hits = chance = 0.0
    pairs = 0
    for i in range(n):
        width, height = _image_size(boxes[i])
        if width <= 0 or height <= 0:
            continue
        for k in np.flatnonzero(targets[i] == 1):
            if k not in boxes[i]:
                continue
            cells = box_cells(boxes[i][k], width, height, h, w)
            peak = np.unravel_index(int(np.argmax(maps[i, k])), (h, w))
            hits += float(cells[peak])
            chance += float(cells.mean())
            pairs += 1
    if pairs == 0:
        return {'hit_rate': math.nan, 'chance': math.nan, 'num_pairs': 0, **stats}
    return {'hit_rate': hits / pairs * 100.0, 'chance': chance / pairs * 100.0, 'num_pairs': pairs, **stats}


def _separated_images(targets: np.ndarray, boxes: Sequence[Boxes], h: int, w: int
                      ) -> List[Tuple[int, List[int], List[np.ndarray]]]:
    """Images with >= 2 present classes whose box cells are pairwise disjoint: ``(i, classes, cells per class)``."""
    out = []
    for i in range(targets.shape[0]):
        width, height = _image_size(boxes[i])
        classes = [int(k) for k in np.flatnonzero(targets[i] == 1) if int(k) in boxes[i]]
        if width <= 0 or height <= 0 or len(classes) < 2:
            continue
        cells = [box_cells(boxes[i][k], width, height, h, w) for k in classes]
        if np.any(np.sum(cells, axis=0) > 1):  # a cell on two classes' boxes: the peak could not tell them apart
            continue
        out.append((i, classes, cells))
    return out


def _own_other(maps_i: np.ndarray, cells: List[np.ndarray]) -> Tuple[int, int]:
    """Per class of one image, does its peak lie on its own boxes (own) or on another class's (other)?"""
    own = other = 0
    h, w = cells[0].shape
    for j, m in enumerate(maps_i):
        peak = np.unravel_index(int(np.argmax(m)), (h, w))
        if cells[j][peak]:
            own += 1
        elif any(c[peak] for t, c in enumerate(cells) if t != j):
            other += 1
    return own, other


def class_discriminative_pointing_game(maps: np.ndarray, targets: np.ndarray, boxes: Sequence[Boxes]
                                       ) -> Dict[str, Any]:
    """Is a class's SA peak on its own object rather than on another present class's object?

    Over images with at least two present classes whose boxes cover disjoint grid cells (images where some cell
    touches boxes of two classes are left out: a peak there cannot tell the classes apart), each present class's
    peak cell is *own* (on a box of that class), *other* (on a box of another present class) or neither.

    Returns:
        ``rate``: own / (own + other) in percent — the share of peaks on a present object that are on the right one;
        ``own_rate``: own / all pairs; ``chance``: the same ``rate`` for a uniformly random cell (sum of own-box
        areas / sum of own + other areas); ``same_map``: ``rate`` when every class of an image uses the image's mean
        map over its present classes (one map shared by the classes, computed from these maps);
        ``same_map_bound``: the rate of any shared map whose peak lies on one present object (images / pairs);
        ``num_images``, ``num_pairs``. NaN where no image qualifies.
    """
    n, _, h, w = maps.shape
    own = other = shared_own = shared_other = 0
    chance_own = chance_other = 0.0
    images = _separated_images(targets, boxes, h, w)
    pairs = 0
    for i, classes, cells in images:
        o, t = _own_other(maps[i, classes], cells)
        own, other = own + o, other + t
        shared = np.repeat(maps[i, classes].mean(0, keepdims=True), len(classes), axis=0)
        o, t = _own_other(shared, cells)
        shared_own, shared_other = shared_own + o, shared_other + t
        union = np.sum(cells, axis=0)
        for c in cells:
            chance_own += c.mean()
            chance_other += (union.astype(bool) & ~c).mean()
        pairs += len(classes)

    def pct(a: float, b: float) -> float:
        return a / b * 100.0 if b > 0 else math.nan

    return {'rate': pct(own, own + other), 'own_rate': pct(own, pairs), 'chance': pct(chance_own, chance_own + chance_other),
            'same_map': pct(shared_own, shared_own + shared_other), 'same_map_bound': pct(len(images), pairs),
            'num_images': len(images), 'num_pairs': pairs}


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else math.nan


def _top_cells(m: np.ndarray, count: int) -> np.ndarray:
    return np.argsort(-m.ravel(), kind='stable')[:count]


def _top_iou(a: np.ndarray, b: np.ndarray, count: int) -> float:
    ta, tb = set(_top_cells(a, count).tolist()), set(_top_cells(b, count).tolist())
    return len(ta & tb) / len(ta | tb)


def map_similarity(maps: np.ndarray, targets: np.ndarray, top_fraction: float = 0.1, seed: int = 0
                   ) -> Dict[str, Any]:
    """How alike are the SA maps of different present classes of one image, against different images?

    Same-image pairs: every pair of present classes (a, b) of an image i. Each is matched with a cross-image pair:
    class a's map in image i against class b's map in another image j (drawn at random among the images where b is
    present), so both sides compare the same two classes. A category-specific map gives low same-image similarity
    (the classes' objects are at different places); one objectness map shared by the classes gives same-image
    correlation near 1 and a clearly lower cross-image one.

    Args:
        top_fraction: the top cells compared by IoU (at least one cell).

    Returns:
        ``same_image_corr`` / ``other_image_corr`` (mean Pearson correlation over pairs with non-constant maps),
        ``same_image_top_iou`` / ``other_image_top_iou`` (mean IoU of the top cells), ``num_pairs``,
        ``num_constant`` (pairs left out of the correlation because a map is constant).
    """
    n, _, h, w = maps.shape
    count = max(1, int(round(top_fraction * h * w)))
    rng = np.random.default_rng(seed)
    present = targets == 1
    same_corr: List[float] = []
    other_corr: List[float] = []
    same_iou: List[float] = []
    other_iou: List[float] = []
    constant = 0
    for i in range(n):
        classes = np.flatnonzero(present[i])
        for x in range(len(classes)):
            for y in range(x + 1, len(classes)):
                a, b = int(classes[x]), int(classes[y])
                candidates = np.flatnonzero(present[:, b])
                candidates = candidates[candidates != i]
                if len(candidates) == 0:
                    continue
                j = int(rng.choice(candidates))
                c_same, c_other = _correlation(maps[i, a], maps[i, b]), _correlation(maps[i, a], maps[j, b])
                if math.isnan(c_same) or math.isnan(c_other):
                    constant += 1
                else:
                    same_corr.append(c_same)
                    other_corr.append(c_other)
                same_iou.append(_top_iou(maps[i, a], maps[i, b], count))
                other_iou.append(_top_iou(maps[i, a], maps[j, b], count))

    def mean(values: List[float]) -> float:
        return float(np.mean(values)) if values else math.nan

    return {'same_image_corr': mean(same_corr), 'other_image_corr': mean(other_corr),
            'same_image_top_iou': mean(same_iou), 'other_image_top_iou': mean(other_iou),
            'num_pairs': len(same_iou), 'num_constant': constant, 'top_cells': count}


def attention_statistics(maps: np.ndarray, targets: np.ndarray, boxes: Optional[Sequence[Boxes]]
                         ) -> Dict[str, Any]:
    """:func:`pointing_game` (top-level keys, as stored before), plus ``discriminative``
    (:func:`class_discriminative_pointing_game`, needs boxes) and ``similarity`` (:func:`map_similarity`)."""
    out: Dict[str, Any] = {}
    if boxes is not None:
        out.update(pointing_game(maps, targets, boxes))
        out['discriminative'] = class_discriminative_pointing_game(maps, targets, boxes)
    out['similarity'] = map_similarity(maps, targets)
    return out
