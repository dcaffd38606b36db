"""Tests for benchmarks/offline/backbone_units.py: a backbone's forward_features as units applied in order."""
import pytest
import torch
import torch.nn as nn

from srdl_timm.models.backbone import create_backbone
from benchmarks.offline.backbone_units import backbone_units

_SWIN_SMALL = dict(embed_dim=24, depths=(1, 1, 2, 1), num_heads=(1, 1, 2, 2), window_size=4)


# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('name, kwargs, size, n_units', [
    ('test_resnet', {}, (64, 64), 5),
    ('test_efficientnet', {}, (64, 64), None),
    ('test_convnext', {}, (64, 64), None),
    ('regnetx_002', {}, (64, 64), 6),
    ('swin_tiny_patch4_window7_224', _SWIN_SMALL, (64, 64), 6),
    ('test_vit', {}, (64, 64), 7),
    ('deit_tiny_distilled_patch16_224', dict(depth=2), (64, 64), 3),
])
def test_units_compose_to_forward_features(name, kwargs, size, n_units):
    """backbone_units applied in order give forward_features exactly, for CNNs, Swin and ViTs (whose first unit is
    stem + first block, through forward_intermediates); every unit's parameters are the backbone's own."""
    backbone, _, _ = create_backbone(name, **kwargs)
    backbone.eval()
    units = backbone_units(backbone)
    if n_units is not None:
        assert len(units) == n_units
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        torch.testing.assert_close(nn.Sequential(*units)(x), backbone.forward_features(x))
    own = {id(p) for p in backbone.parameters()}
    assert all(id(p) in own for unit in units for p in unit.parameters())


def test_units_of_efficientnet_and_resnet_are_the_stages():
    """ResNet: stem (conv1, bn1, act1, maxpool) then layer1..4; EfficientNet: stem, each block stage, conv_head +
    bn2 -- the split the frozen-trunk trainer has always used."""
    resnet, _, _ = create_backbone('test_resnet')
    units = backbone_units(resnet)
    assert [type(m).__name__ for m in units[0]] == ['Sequential', 'BatchNorm2d', 'ReLU', 'MaxPool2d']
    assert units[1:] == [resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4]
    effnet, _, _ = create_backbone('tf_efficientnet_lite0')
    units = backbone_units(effnet)
    assert len(units) == 9 and units[1:8] == list(effnet.blocks)
    assert list(units[0]) == [effnet.conv_stem, effnet.bn1] and list(units[-1]) == [effnet.conv_head, effnet.bn2]


def test_units_of_a_model_without_feature_info_are_refused():
    """A module without feature_info cannot be split; the error says so."""
    with pytest.raises(ValueError, match='feature_info'):
        backbone_units(nn.Sequential(nn.Conv2d(3, 4, 3)))
