"""Tests for srdl_timm/models/backbone.py: SRDL on every timm backbone family that has a spatial grid.

The matrix builds SRDL (tiny head, 3 classes) on CNNs, plain ViTs with class / distillation / register tokens, EVA,
Swin, hybrids and conv-attention families, efficient mobile families, a family whose grid comes from
``forward_intermediates``, at small sizes (timm's ``test_*`` models where they exist, small real or shrunk ones
otherwise), and checks what a user relies on. Heavier cases are marked slow.
"""
import warnings

import pytest
import timm
import torch
import torch.nn as nn

import srdl_timm  # noqa: F401  (registers the models)
from srdl_timm.loss import SRDLLoss
from srdl_timm.models.backbone import FeatureGrid, create_backbone, feature_map, token_grid_size, tokens_to_grid

from fixtures_attention import assert_attention_not_constant, spatial_attention_on

NUM_CLASSES = 3
NODES = torch.randn(NUM_CLASSES, 8, generator=torch.Generator().manual_seed(0))
_SWIN_SMALL = dict(embed_dim=24, depths=(1, 1, 2, 1), num_heads=(1, 1, 2, 2), window_size=4)
_HIERA_SMALL = dict(embed_dim=16, num_heads=1, stages=(1, 1, 1, 1))

#: (family, timm backbone, backbone_kwargs, input (H, W), expected layout, slow)
FAMILIES = [
    ('resnet', 'test_resnet', {}, (64, 96), 'NCHW', False),
    ('efficientnet', 'test_efficientnet', {}, (64, 64), 'NCHW', False),
    ('convnext', 'test_convnext', {}, (64, 64), 'NCHW', False),
    ('nfnet', 'test_nfnet', {}, (64, 64), 'NCHW', False),
    ('regnet', 'regnetx_002', {}, (64, 64), 'NCHW', False),
    ('vit-class-token', 'test_vit', {}, (64, 96), 'NLC', False),
    ('vit-register-token', 'test_vit2', {}, (64, 64), 'NLC', False),
    ('vit-class-and-register-tokens', 'test_vit', dict(reg_tokens=2), (48, 64), 'NLC', False),
    ('deit-distilled', 'deit_tiny_distilled_patch16_224', dict(depth=2), (64, 64), 'NLC', False),
    ('eva02', 'eva02_tiny_patch14_224', dict(depth=2), (56, 84), 'NLC', False),
    ('swin', 'swin_tiny_patch4_window7_224', _SWIN_SMALL, (64, 64), 'NHWC', False),
    ('mambaout', 'test_mambaout', {}, (64, 64), 'NHWC', False),
    ('coatnet-hybrid', 'test_coatnet', dict(img_size=64), (64, 64), 'NCHW', False),
    ('maxvit-hybrid', 'test_maxvit', dict(img_size=64), (64, 64), 'NCHW', False),
    ('pvt-v2', 'pvt_v2_b0', dict(depths=(1, 1, 1, 1)), (64, 64), 'NCHW', False),
    ('caformer', 'caformer_s18', {}, (64, 64), 'NCHW', False),
    ('efficientvit-mobile', 'efficientvit_b0', {}, (64, 64), 'NCHW', False),
    ('mobilenetv4-mobile', 'mobilenetv4_conv_small', {}, (64, 64), 'NCHW', False),
    ('fastvit-mobile', 'fastvit_t8', {}, (64, 64), 'NCHW', False),
    ('levit-tokens-no-prefix', 'levit_128s', dict(img_size=128), (128, 128), 'NLC', True),
    ('hiera-fixed-size', 'hiera_tiny_224', _HIERA_SMALL, (224, 224), 'NLC', True),
    ('pit-from-intermediates', 'pit_ti_224', {}, (224, 224), 'intermediates', True),
]
IDS = [f[0] for f in FAMILIES]


def _params(families):
    return [pytest.param(*f[1:5], marks=pytest.mark.slow if f[5] else (), id=f[0]) for f in families]


def srdl(backbone, backbone_kwargs=None, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.manual_seed(0)
        model = timm.create_model('srdl_test_resnet', backbone=backbone, backbone_kwargs=dict(backbone_kwargs or {}),
                                  num_classes=NUM_CLASSES, label_embeddings=NODES, **kwargs)
    return spatial_attention_on(model)  # SA varies over positions: comparisons of two paths can see eq. 5


def _timm_grid(backbone, x):
    """The backbone's own grid for ``x``: timm's forward_intermediates(output_fmt='NCHW'), last map."""
    return tuple(backbone.forward_intermediates(x, indices=1, output_fmt='NCHW', intermediates_only=True)[-1]
                 .shape[-2:])


# ------------------------------------------------------------------------------------------------------------------
# the family matrix
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('name, kwargs, size, layout', _params(FAMILIES))
def test_family_logits_grid_and_attention_maps(name, kwargs, size, layout):
    """Eval logits are [B, C]; F is [B, d, h, w] with d = num_features and (h, w) the backbone's own grid (timm's
    forward_intermediates), also as feature_grid_size predicts; SA maps have that grid; pre_logits is [B, d]."""
    model = srdl(name, kwargs).eval()
    assert model.feature_grid.layout == layout
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        feat = model.forward_features(x)
        maps = model.attention_maps(x)
        logits = model(x)
        grid = _timm_grid(model.backbone, x)
    assert logits.shape == (2, NUM_CLASSES) and torch.isfinite(logits).all()
    assert feat.shape == (2, model.num_features, *grid)
    assert model.feature_grid_size(size) == grid
    assert maps['spatial_attention'].shape == (2, NUM_CLASSES, *grid)
    assert model.forward_head(feat, pre_logits=True).shape == (2, model.num_features)


@pytest.mark.parametrize('name, kwargs, size, layout', _params(FAMILIES))
def test_family_oe_training_reaches_every_trainable_parameter(name, kwargs, size, layout):
    """A training step with OE (L_ori + L_era) gives every trainable parameter a finite gradient; the parameters
    forward_features does not use (a backbone's own classifier head) are the only frozen ones."""
    model = srdl(name, kwargs, zero_init_spatial=False).train()
    model.set_object_erasing(True)
    x = torch.randn(2, 3, *size)
    logits, erased = model(x)
    SRDLLoss()((logits, erased), torch.tensor([[1., 0., 1.], [0., 1., 0.]])).backward()
    bad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.isfinite().all())]
    assert bad == []
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert all(n.startswith('backbone.') for n in frozen)


@pytest.mark.parametrize('name, kwargs, size, layout', _params([f for f in FAMILIES if f[4] != 'NCHW']))
def test_token_and_nhwc_grids_equal_timm_intermediates(name, kwargs, size, layout):
    """For token and NHWC backbones F is exactly timm's own last forward_intermediates map (NCHW, final norm):
    the prefix tokens dropped and the rest laid out as timm does."""
    model = srdl(name, kwargs).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        got = model.forward_features(x)
        try:
            want = model.backbone.forward_intermediates(x, indices=1, norm=True, output_fmt='NCHW',
                                                        intermediates_only=True)[-1]
        except AssertionError:  # Hiera: no norm of intermediates (its forward_features has none either)
            want = model.backbone.forward_intermediates(x, indices=1, output_fmt='NCHW', intermediates_only=True)[-1]
    torch.testing.assert_close(got, want)


SCRIPTABLE = [f for f in FAMILIES if f[0] in ('resnet', 'efficientnet', 'vit-class-token', 'vit-register-token',
                                              'deit-distilled', 'eva02', 'swin', 'coatnet-hybrid', 'pvt-v2',
                                              'efficientvit-mobile')]


@pytest.mark.parametrize('name, kwargs, size, layout', _params(SCRIPTABLE))
def test_family_torchscript_fx_and_grad_checkpointing(name, kwargs, size, layout):
    """SRDL scripts and reproduces eager logits; timm's fx feature extractor traces it where it traces the bare
    backbone (timm's own Swin with dynamic input size does not trace); grad checkpointing leaves the output
    unchanged. SA is checked to vary over positions, so the comparisons see eq. 5."""
    from timm.models._features_fx import create_feature_extractor, get_graph_node_names
    model = srdl(name, kwargs).eval()
    x = torch.randn(2, 3, *size)
    assert_attention_not_constant(model, x)
    with torch.no_grad():
        ref = model(x)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            scripted = torch.jit.script(model)
        torch.testing.assert_close(scripted(x), ref)
        try:  # a fresh backbone: a failed trace can leave state behind (Swin's cached attention mask)
            get_graph_node_names(create_backbone(name, **kwargs)[0])
        except Exception:  # noqa: BLE001  (the bare backbone does not trace either)
            pass
        else:
            traced = create_feature_extractor(model, ['classifier'])
            torch.testing.assert_close(traced(x)['classifier'], ref)
        model.set_grad_checkpointing(True)
        torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-5)


#: ViTs exported at a fixed size: with dynamic_img_size (SRDL's default for them) timm resamples the position
#: embedding at every forward with an antialiased bicubic interpolation, which torch's ONNX exporter cannot export
_FIXED_SIZE = dict(dynamic_img_size=False, img_size=64)
ONNX = [
    ('resnet', 'test_resnet', {}, (64, 96), 'NCHW', False),
    ('vit-class-token', 'test_vit', _FIXED_SIZE, (64, 64), 'NLC', False),
    ('deit-distilled', 'deit_tiny_distilled_patch16_224', dict(depth=2, **_FIXED_SIZE), (64, 64), 'NLC', False),
    ('swin', 'swin_tiny_patch4_window7_224', _SWIN_SMALL, (64, 64), 'NHWC', False),
]


@pytest.mark.parametrize('name, kwargs, size, layout', _params(ONNX))
def test_family_onnx_export_matches_pytorch(name, kwargs, size, layout, tmp_path):
    """srdl_timm.export's ONNX file of SRDL on a CNN, a fixed-size ViT (class token, distillation token) and Swin
    passes onnxruntime's comparison with PyTorch at two batch sizes; SA is checked to vary over positions."""
    pytest.importorskip('onnxruntime')
    from srdl_timm.export import check_onnx, export_onnx
    model = srdl(name, kwargs)
    assert_attention_not_constant(model, torch.randn(2, 3, *size))
    path = str(tmp_path / 'model.onnx')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        export_onnx(model, path, (3, *size))
    assert max(check_onnx(path, model, (3, *size), batch_sizes=(1, 2)).values()) < 1e-3


@pytest.mark.parametrize('name, kwargs, size, layout', _params([f for f in FAMILIES if f[0] in (
    'resnet', 'vit-class-token', 'swin', 'coatnet-hybrid', 'efficientvit-mobile')]))
def test_family_features_only_and_group_matcher(name, kwargs, size, layout):
    """features_only gives the backbone's pyramid with feature_info's channels; group_matcher splits the stages
    into several groups, puts every parameter in one, and the head last."""
    from timm.models._manipulate import group_parameters
    model = srdl(name, kwargs)
    groups = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    assert set(groups) == {n for n, _ in model.named_parameters()} and len(set(groups.values())) > 2
    assert groups['classifier.weight'] == max(groups.values())
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        features = timm.create_model('srdl_test_resnet', backbone=name, backbone_kwargs=kwargs, num_classes=3,
                                     label_embeddings=NODES, features_only=True)
    outs = features(torch.randn(1, 3, *size))
    assert [o.shape[1] for o in outs] == features.feature_info.channels()


# ------------------------------------------------------------------------------------------------------------------
# building blocks
# ------------------------------------------------------------------------------------------------------------------
def test_tokens_to_grid_drops_prefix_and_is_a_view():
    """Prefix tokens are dropped, patch tokens laid out row-major, and flattening back gives the token tensor
    itself (no copy: the memory-lean kernels see the backbone's own tokens)."""
    tokens = torch.arange(2 * (2 + 6) * 4, dtype=torch.float32).reshape(2, 8, 4)
    grid = tokens_to_grid(tokens, 32, 48, 2, 16)
    assert grid.shape == (2, 4, 2, 3)
    torch.testing.assert_close(grid[0, :, 1, 2], tokens[0, 2 + 5])
    back = grid.flatten(2).transpose(1, 2)
    assert back.data_ptr() == tokens[:, 2:].data_ptr() and torch.equal(back, tokens[:, 2:])


def test_token_grid_size_floor_then_ceiling_else_error():
    """A grid is the input size over the stride, floored (a ViT) or rounded up (padded / strided convs); a token
    count that is neither is an error naming the count and size."""
    assert token_grid_size(6, 40, 56, 16) == (2, 3)
    assert token_grid_size(16, 224, 224, 64) == (4, 4)
    with pytest.raises(ValueError, match='7 patch tokens for a 64x64'):
        token_grid_size(7, 64, 64, 16)


@pytest.mark.parametrize('layout, features, want', [
    ('NCHW', torch.randn(1, 4, 2, 3), (1, 4, 2, 3)),
    ('NHWC', torch.randn(1, 2, 3, 4), (1, 4, 2, 3)),
    ('NLC', torch.randn(1, 7, 4), (1, 4, 2, 3)),
])
def test_feature_grid_layouts(layout, features, want):
    """FeatureGrid turns each layout into [B, d, h, w]; an unknown layout is refused."""
    grid = FeatureGrid(layout, 4, 16, num_prefix_tokens=1)
    assert grid(features, 32, 48).shape == want
    with pytest.raises(ValueError, match='layout'):
        FeatureGrid('NDHWC', 4, 16)


@timm.models.register_model
def _test_pooled_only(pretrained=False, **kwargs):
    """A timm model whose features are one pooled vector: no spatial grid at all."""
    return _PooledOnly(**kwargs)


class _PooledOnly(nn.Module):
    def __init__(self, num_classes=0, in_chans=3, **kwargs):
        super().__init__()
        self.num_features, self.num_classes = 8, num_classes
        self.conv = nn.Conv2d(in_chans, 8, 3)
        self.pretrained_cfg = {'input_size': (3, 32, 32)}

    def forward_features(self, x):
        return self.conv(x).mean((2, 3))


def test_backbone_without_grid_is_one_clear_error():
    """A backbone without any spatial grid is refused with one error naming it, what its features are and why;
    an unknown name is refused naming the name."""
    with pytest.raises(ValueError, match=r"'_test_pooled_only' has no spatial feature grid.*2-D tensor \[1, 8\]"):
        create_backbone('_test_pooled_only')
    with pytest.raises(ValueError, match="Unknown backbone 'not_a_model'"):
        create_backbone('not_a_model')


def test_dynamic_img_size_and_img_size():
    """ViT-style backbones are built with dynamic_img_size (any input size; at the built size the features equal
    a fixed-size backbone's), and img_size sets the size they are built for (position-embedding grid); a CNN
    ignores img_size."""
    backbone, grid, build = create_backbone('vit_tiny_patch16_224', img_size=64, depth=1)
    assert build['img_size'] == 64 and build['dynamic_img_size'] is True
    assert backbone.pos_embed.shape[1] == 1 + 4 * 4
    torch.manual_seed(0)
    fixed = timm.create_model('vit_tiny_patch16_224', img_size=64, depth=1, num_classes=0).eval()
    fixed.load_state_dict(backbone.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(feature_map(backbone.eval(), grid, x), feature_map(fixed, grid, x))
        assert feature_map(backbone, grid, torch.randn(1, 3, 96, 128)).shape == (1, 192, 6, 8)
    cnn, _, cnn_build = create_backbone('test_resnet', img_size=64)
    assert 'img_size' not in cnn_build and 'dynamic_img_size' not in cnn_build


def test_unused_head_parameters_are_frozen_and_kept():
    """Parameters of the backbone's own head that forward_features never uses (ConvNeXt's head norm) are frozen,
    not removed: the state dict keeps timm's keys, so timm's weights still load. Found the same when the model is
    built under torch.inference_mode."""
    backbone, _, _ = create_backbone('test_convnext')
    frozen = sorted(n for n, p in backbone.named_parameters() if not p.requires_grad)
    assert frozen == ['head.norm.bias', 'head.norm.weight']
    with torch.inference_mode():
        built_in_inference, _, _ = create_backbone('test_convnext')
    assert sorted(n for n, p in built_in_inference.named_parameters() if not p.requires_grad) == frozen
    backbone.load_state_dict(timm.create_model('test_convnext', num_classes=0).state_dict())


def test_cnn_path_is_forward_features_unchanged():
    """The CNN path is the backbone's forward_features as it is (EfficientNet's conv_head included), the feature
    map the shipped weights were trained on."""
    model = timm.create_model('srdl_efficientnet_lite0', num_classes=3, label_embeddings=NODES).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), model.backbone.forward_features(x), rtol=0, atol=0)
    assert model.num_features == 1280


def test_pool_size_follows_the_backbone():
    """The default cfg's pool size is the chosen backbone's grid at the cfg's input size, and a backbone built for
    one fixed input size sets that size."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        vit = timm.create_model('srdl_resnet18', backbone='test_vit', num_classes=3, label_embeddings=NODES)
        hiera = srdl('hiera_tiny_224', _HIERA_SMALL)
    assert vit.pretrained_cfg['input_size'] == (3, 448, 448) and vit.pretrained_cfg['pool_size'] == (28, 28)
    assert hiera.pretrained_cfg['input_size'] == (3, 224, 224) and hiera.pretrained_cfg['fixed_input_size']
    assert hiera.pretrained_cfg['pool_size'] == (7, 7)


# ------------------------------------------------------------------------------------------------------------------
# the console scripts on transformer backbones
# ------------------------------------------------------------------------------------------------------------------
CLI_BACKBONES = [
    pytest.param(['backbone=test_vit'], (4, 4), id='vit'),
    pytest.param(['backbone=swin_tiny_patch4_window7_224', 'drop_path_rate=0.0',
                  "backbone_kwargs={'embed_dim': 24, 'depths': (1, 1, 2, 1), 'num_heads': (1, 1, 2, 2), "
                  "'window_size': 4}"], (2, 2), id='swin'),
]


@pytest.mark.parametrize('model_kwargs, grid', CLI_BACKBONES)
def test_train_validate_predict_chain_on_a_transformer_backbone(model_kwargs, grid, tmp_path, monkeypatch):
    """srdl-train (1 epoch, OE on) -> srdl-validate -> srdl-predict with --explain -> srdl-publish on a tiny
    real-JPEG CSV, with the backbone given as --model-kwargs: every step exits 0, srdl-validate re-measures the run's
    final mAP, predict's scores are the run's sigmoids, the overlays are written at each image's size from SA on the
    patch grid, and the published folder loads through timm's local-dir: with the run's exact logits."""
    import json
    from PIL import Image
    from fixtures_data import write_csv
    from srdl_timm.cli import predict as predict_cli
    from srdl_timm.cli import publish as publish_cli
    from srdl_timm.cli import train as train_cli
    from srdl_timm.cli import validate as validate_cli
    from srdl_timm.explain import default_eval_transform as explain_transform
    from srdl_timm.explain import explain
    from srdl_timm.loading import load_model
    names = ('cat', 'dog', 'traffic light')
    monkeypatch.chdir(tmp_path)
    write_csv('data', 'train', num_images=8, label_names=names, image_size=(64, 64), seed=0)
    write_csv('data', 'val', num_images=4, label_names=names, image_size=(80, 60), seed=1)
    fast = ['--workers', '0', '--log-level', 'WARNING']
    assert train_cli.main(['--data', 'csv', '--root', 'data', '--model', 'srdl_test_resnet', '--img-size', '64',
                           '--epochs', '1', '--no-progress', '--output', 'run', '--model-kwargs', *model_kwargs,
                           *fast]) == 0
    assert validate_cli.main(['--checkpoint', 'run/model.safetensors', '--data', 'csv', '--root', 'data',
                              '--output', 'val.json', '--quiet', *fast]) == 0
    assert predict_cli.main(['data/images/val', '--checkpoint', 'run/model.safetensors', '--threshold', '0',
                             '--format', 'json', '--output', 'preds.json', '--explain', 'overlays', '--quiet',
                             *fast]) == 0
    last_epoch = json.loads((tmp_path / 'run' / 'log.json').read_text())[-1]
    assert last_epoch['train_loss_era'] is not None and last_epoch['train_loss_era'] > 0  # OE trained
    validated = json.loads((tmp_path / 'val.json').read_text())['metrics']
    assert validated['mAP_interpolated'] == pytest.approx(last_epoch['val_mAP_interpolated'])
    model = load_model(None, 'run/model.safetensors')
    assert model.backbone_name == model_kwargs[0].split('=')[1]
    results = json.loads((tmp_path / 'preds.json').read_text())['results']
    assert [r['ok'] for r in results] == [True] * 4
    first = results[0]
    transform = explain_transform(model)
    with torch.no_grad():
        probs = model(transform(Image.open(first['path']).convert('RGB'))[None]).sigmoid()[0]
    for entry in first['labels']:
        assert entry['score'] == pytest.approx(float(probs[entry['index']]), abs=1e-5)
    result = explain(model, [first['path']], topk=1, upsample=False)[0]
    assert result['maps_raw'].shape == (1, *grid)
    for entry in results:
        assert len(entry['explanations']) == 4
        assert all(Image.open(path).size == (80, 60) for path in entry['explanations'][:3])
    assert publish_cli.main(['--checkpoint', 'run/model.safetensors', '--local-dir', 'pub', '--log-level',
                             'WARNING']) == 0
    published = timm.create_model(f'local-dir:{tmp_path / "pub"}', pretrained=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(published(x), model(x), rtol=0, atol=0)


def test_pretrained_vit_weights_are_resampled_to_the_size_it_is_built_for(tmp_path):
    """pretrained_backbone=True passes pretrained=True to timm.create_model for the backbone as it is built: on a ViT
    built for another size (img_size) timm resamples the 10 x 10 position embedding of the 160-px weights to the
    4 x 4 grid of 64 px (bicubic, its checkpoint filter) and loads every other tensor as it is."""
    from safetensors.torch import save_file
    from timm.layers import resample_abs_pos_embed
    torch.manual_seed(0)
    source = timm.create_model('test_vit', num_classes=0)
    weights = tmp_path / 'test_vit.safetensors'
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    model = timm.create_model('srdl_test_vit', num_classes=3, img_size=64, pretrained_backbone=True,
                              backbone_kwargs=dict(pretrained_cfg_overlay=dict(file=str(weights))),
                              label_embeddings=NODES)
    torch.testing.assert_close(model.backbone.pos_embed,
                               resample_abs_pos_embed(source.pos_embed, (4, 4), num_prefix_tokens=1))
    torch.testing.assert_close(model.backbone.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
