"""Tests of benchmarks/sa_diagnosis.py: every variant names a real row and real config fields, and each model
intervention makes exactly the change its name says, on a tiny model built the way the benchmark builds its rows."""
import dataclasses
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

import benchmarks.offline as bm  # noqa: E402
from benchmarks import sa_diagnosis  # noqa: E402
from benchmarks.offline import runs as runs_module  # noqa: E402
from srdl_timm.layers.car import CategoryAttention  # noqa: E402

LABELS = ['a', 'b', 'c']
NODES = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)


def _create(cfg):
    spec = bm.DataSpec('fashion-scenes', 'coco-json', '.', 'train', 'val', 'test', LABELS, {})
    torch.manual_seed(0)
    return runs_module.create_model(cfg, spec, bm.ROWS['car'], 3, 0.5, NODES)


@pytest.fixture(scope='module')
def cfg():
    return bm.BenchmarkConfig(model='srdl_test_resnet', pretrained_backbone=False)


def test_every_variant_names_a_row_and_config_fields(cfg):
    """Each variant's row is a benchmark row, its overrides are BenchmarkConfig fields (dataclasses.replace takes
    them) and its intervention is one that intervention() knows or None."""
    known = {None, 'fs_zero_init', 'fusion_product', 'gcn_self_0.95', 'fw_no_bias', 'random_nodes'}
    for name, (row, overrides, change) in sa_diagnosis.VARIANTS.items():
        assert row in bm.ROWS, name
        replaced = dataclasses.replace(cfg, **overrides)
        assert all(getattr(replaced, k) == v for k, v in overrides.items()), name
        assert change in known, name


def test_interventions_make_the_change_they_name(cfg):
    """fs_zero_init zeroes f_s (SA = 0.5 everywhere); gcn_self_0.95 starts V's diagonal log(0.95/0.05 (C-1)) above
    the rest instead of log(0.8/0.2 (C-1)); fw_no_bias zeroes and freezes f_w's bias; random_nodes replaces the
    nodes by other vectors of the nodes' mean norm; outside the block the model is built unchanged."""
    plain = _create(cfg)
    x = torch.randn(1, 3, 64, 64)
    with sa_diagnosis.intervention('fs_zero_init'):
        model = _create(cfg).eval()
    assert not model.car.f_s.weight.any() and not model.car.f_s.bias.any()
    with torch.no_grad():
        assert torch.equal(model.attention_maps(x)['spatial_attention'], torch.full((1, 3, 2, 2), 0.5))
    c = len(LABELS)
    for name, weight in (('gcn_self_0.95', 0.95), (None, 0.8)):
        with sa_diagnosis.intervention(name):
            v = _create(cfg).label_graph.adjacency.detach()
        gap = v.diagonal().mean() - v[~torch.eye(c, dtype=torch.bool)].mean()
        assert gap.item() == pytest.approx(np.log(weight / (1 - weight) * (c - 1)), abs=0.3), name
    with sa_diagnosis.intervention('fw_no_bias'):
        model = _create(cfg)
    assert not model.car.f_w.bias.any() and not model.car.f_w.bias.requires_grad
    assert plain.car.f_w.bias.any() and plain.car.f_w.bias.requires_grad
    with sa_diagnosis.intervention('random_nodes'):
        nodes = _create(cfg).label_graph.node_features
    original = plain.label_graph.node_features
    assert not torch.allclose(nodes, original)
    torch.testing.assert_close(nodes.norm(dim=1), original.norm(dim=1).mean().expand(c))


def test_fusion_product_replaces_eq6_inside_the_block_only():
    """fusion_product makes CategoryAttention.pool compute max_p F_p * SA_p * CA (both attentions on) inside the
    block and restores eq. 6 after it."""
    car = CategoryAttention(6, 4)
    feat, sa, ca = torch.rand(2, 5, 6), torch.rand(2, 3, 5), torch.rand(2, 3, 6)
    eq6 = car.pool(feat, sa, ca)
    with sa_diagnosis.intervention('fusion_product'):
        product = car.pool(feat, sa, ca)
    torch.testing.assert_close(product, (feat[:, None] * sa[..., None] * ca[:, :, None]).amax(2))
    torch.testing.assert_close(car.pool(feat, sa, ca), eq6)
    torch.testing.assert_close(eq6, (feat[:, None] * (0.5 * sa[..., None] + 0.5 * ca[:, :, None])).amax(2))
