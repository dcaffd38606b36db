"""Tests of benchmarks/oe_diagnosis.py on a constructed case whose erased rectangle, box coverage, feature change
and logit drop are known in closed form (the run on a saved model and a COCO split: tests/test_benchmark_scripts.py)."""
import math
import os
import sys
import warnings

import pytest
import timm
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

from benchmarks.oe_diagnosis import erasure_statistics  # noqa: E402
from fixtures_attention import block_feature_map, known_attention_head  # noqa: E402

GRID, SIZE, BIAS = 4, 128.0, -1.0  # a 4 x 4 grid over 128 px images: cells of 32 px


def test_erasure_statistics_known_answer(monkeypatch):
    """F = 1 on the 2 x 2 block of rows 1-2, columns 1-2 and the head of known_attention_head: SA on the block is
    s = sigmoid(tanh(1) + b), OE erases exactly the block (a quarter of the grid) of the top-2 classes 0 and 1, f_c
    falls from 0.5 s + 0.25 to 0.25 on every channel (relative change 0.5 s / (0.5 s + 0.25)) and the logit by
    0.5 s * sum_k w_ck. Boxes: image 0's class 0 spans row 1, columns 1-3 (2 of its 3 cells erased, half of the
    rectangle on it); image 1's class 0 lies in cell (0, 0) (nothing erased), class 1 is the block itself."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        model = timm.create_model('srdl_test_resnet', num_classes=4, oe_topk=2).double()
    d = model.num_features
    known_attention_head(model, 1.0 / d, BIAS)
    row_sums = torch.tensor([1.0, 0.5, -0.5, -1.0], dtype=torch.float64)
    with torch.no_grad():
        model.classifier.weight.copy_(row_sums[:, None].expand(-1, d) / d)
    # the constructed feature map is the input: the statistics, not the backbone, are under test
    monkeypatch.setattr(model, 'forward_features', lambda images: images)
    images = block_feature_map(2, d, GRID, GRID, slice(1, 3), slice(1, 3), 1.0)
    targets = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    image = [(0.0, 0.0, SIZE, SIZE)]
    boxes = [{-1: image, 0: [(40.0, 40.0, 120.0, 60.0)]},
             {-1: image, 0: [(0.0, 0.0, 30.0, 30.0)], 1: [(40.0, 40.0, 90.0, 90.0)]}]
    out = erasure_statistics(model, images, targets, boxes)
    s = 1.0 / (1.0 + math.exp(-(math.tanh(1.0) + BIAS)))
    assert out['present'] == [1.0, 0.0, 1.0, 1.0]  # (image, class) pairs (0, 0), (0, 1), (1, 0), (1, 1)
    assert out['area'] == [0.25] * 4
    assert out['box_covered'] == pytest.approx([2 / 3, 0.0, 1.0], rel=1e-12)
    assert out['on_box'] == pytest.approx([0.5, 0.0, 1.0], rel=1e-12)
    assert out['feature_change'] == pytest.approx([0.5 * s / (0.5 * s + 0.25)] * 4, rel=1e-9)
    assert out['logit_drop'] == pytest.approx([0.5 * s, 0.25 * s, 0.5 * s, 0.25 * s], rel=1e-9)
    assert out['still_positive'][0] == out['still_positive'][2] == out['still_positive'][3] == 1.0
    assert math.isnan(out['still_positive'][1])
