"""Tests of benchmarks/offline/attention_stats.py (issue #24): the class-discriminative pointing game and the map
similarity on synthetic maps with known answers."""
import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

from benchmarks.offline.attention_stats import (attention_statistics, box_cells,  # noqa: E402
                                                class_discriminative_pointing_game, map_similarity)

SIZE = 120.0  # images of 120 x 120 px on a 6 x 6 grid: cells of 20 px


def _scenes(num_images=30, seed=0):
    """Images with two or three classes (of 4) at separate corners/sides; boxes one cell each."""
    rng = np.random.default_rng(seed)
    places = [(0, 0), (0, 5), (5, 0), (5, 5), (2, 3)]
    targets = np.zeros((num_images, 4))
    boxes, where = [], []
    for i in range(num_images):
        classes = rng.choice(4, size=rng.integers(2, 4), replace=False)
        spots = rng.choice(len(places), size=len(classes), replace=False)
        b = {-1: [(0.0, 0.0, SIZE, SIZE)]}
        w = {}
        for k, p in zip(classes, spots):
            y, x = places[p]
            targets[i, k] = 1
            b[int(k)] = [(x * 20 + 5.0, y * 20 + 5.0, x * 20 + 15.0, y * 20 + 15.0)]
            w[int(k)] = (y, x)
        boxes.append(b)
        where.append(w)
    return targets, boxes, where


def _maps(targets, where, shared):
    """Per-class maps peaking on the class's own object, or one map (peaking on the first class's object) shared
    by every class of the image; a little noise everywhere."""
    rng = np.random.default_rng(1)
    maps = rng.random((targets.shape[0], targets.shape[1], 6, 6)) * 0.1
    for i, w in enumerate(where):
        first = next(iter(w.values()))
        for k, (y, x) in w.items():
            yy, xx = first if shared else (y, x)
            maps[i, k, yy, xx] = 1.0
            if shared:
                maps[i, k] = maps[i, next(iter(w))]
    return maps


def test_box_cells_marks_the_overlapped_cells():
    """A box inside one cell marks that cell only; one straddling a cell border marks both."""
    assert box_cells([(5, 5, 15, 15)], SIZE, SIZE, 6, 6).sum() == 1
    assert box_cells([(15, 5, 25, 15)], SIZE, SIZE, 6, 6)[0, :2].all()


def test_per_class_maps_score_100_and_a_shared_map_scores_the_same_map_value():
    """Maps peaking on each class's own object: rate 100 %. One map shared by the classes of an image: the rate
    equals the 'same map' value (images / pairs), well below 100 %; chance is far below both."""
    targets, boxes, where = _scenes()
    own = class_discriminative_pointing_game(_maps(targets, where, shared=False), targets, boxes)
    shared = class_discriminative_pointing_game(_maps(targets, where, shared=True), targets, boxes)
    assert own['num_images'] == 30 and own['rate'] == 100.0 and own['own_rate'] == 100.0
    assert shared['rate'] == pytest.approx(shared['same_map_bound']) and shared['rate'] < 60.0
    # the mean of the classes' maps peaks on one object (each map is 1 on its object, below 0.1 elsewhere): exactly
    # one own peak per image, the bound
    assert own['same_map'] == pytest.approx(own['same_map_bound'], rel=1e-12)
    # every box covers one cell: per image of n classes, own area n cells and other area n (n - 1) cells
    n = targets.sum(1)
    assert own['chance'] == pytest.approx(100.0 * n.sum() / (n ** 2).sum(), rel=1e-12)


def test_images_whose_classes_share_a_cell_are_left_out():
    """Two classes whose boxes touch the same grid cell cannot be told apart at that grid: the image is skipped."""
    targets = np.array([[1.0, 1.0]])
    boxes = [{-1: [(0.0, 0.0, SIZE, SIZE)], 0: [(5.0, 5.0, 15.0, 15.0)], 1: [(12.0, 12.0, 30.0, 30.0)]}]
    result = class_discriminative_pointing_game(np.random.default_rng(0).random((1, 2, 6, 6)), targets, boxes)
    assert result['num_images'] == 0 and math.isnan(result['rate'])


def test_map_similarity_separates_shared_from_category_specific_maps():
    """A map shared by the classes of an image has same-image correlation 1 and top-cell IoU 1, above its
    other-image values; category-specific maps at different places correlate little within an image."""
    targets, boxes, where = _scenes(num_images=40)
    shared = map_similarity(_maps(targets, where, shared=True), targets)
    specific = map_similarity(_maps(targets, where, shared=False), targets)
    assert shared['same_image_corr'] == pytest.approx(1.0) and shared['same_image_top_iou'] == pytest.approx(1.0)
    assert shared['other_image_corr'] < 0.8 and shared['num_pairs'] > 30
    assert specific['same_image_corr'] < 0.2 and specific['same_image_top_iou'] < 0.2


def test_constant_maps_are_counted_not_correlated():
    """Constant maps (zero variance) have no correlation: they are counted in num_constant, not averaged."""
    targets = np.array([[1.0, 1.0], [1.0, 1.0]])
    result = map_similarity(np.full((2, 2, 3, 3), 0.5), targets)
    assert result['num_constant'] == result['num_pairs'] == 2 and math.isnan(result['same_image_corr'])


def test_attention_statistics_without_boxes_gives_similarity_only():
    """Without ground-truth boxes (VOC) only the map similarity is computed."""
    targets, _, where = _scenes(num_images=5)
    out = attention_statistics(_maps(targets, where, shared=False), targets, None)
    assert set(out) == {'similarity'}
