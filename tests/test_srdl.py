"""Tests for srdl_timm/models/srdl.py: the SRDL model, its OE training forward and timm's model contract."""
import warnings

import pytest
import torch
import timm
from torch.utils._python_dispatch import TorchDispatchMode

import srdl_timm  # noqa: F401  (registers the models)
from srdl_timm.layers import erase_region
from srdl_timm.models import SRDL

from fixtures_attention import (assert_attention_not_constant, block_feature_map, known_attention_head,
                                spatial_attention_on)

NUM_CLASSES = 5


def tiny(**kwargs):
    kwargs.setdefault('num_classes', NUM_CLASSES)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return timm.create_model('srdl_test_resnet', **kwargs)


@pytest.fixture
def images():
    return torch.randn(2, 3, 64, 96)


def test_registered_in_timm():
    """import srdl_timm registers the srdl_* family with timm."""
    names = timm.list_models('srdl_*')
    for name in ('srdl_resnet101', 'srdl_resnet50', 'srdl_resnet18', 'srdl_efficientnet_lite0'):
        assert name in names


def test_resnet101_default_gives_coco_logits_at_448():
    """The paper's configuration: ResNet-101 backbone with torchvision's standard ImageNet weights as its pretrained
    tag (not timm's default RSB tag), 448x448 input, [B, 80] logits, OE absent at inference."""
    model = timm.create_model('srdl_resnet101', num_classes=80).eval()
    assert model.backbone_name == 'resnet101.tv_in1k' and model.num_features == 2048
    assert model.backbone.pretrained_cfg['tag'] == 'tv_in1k' and model.pretrained_cfg['interpolation'] == 'bilinear'
    assert model.pretrained_cfg['input_size'] == (3, 448, 448)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 448, 448))
    assert out.shape == (1, 80)


def test_any_timm_cnn_backbone():
    """backbone= takes any timm CNN with a 2-D feature map (here a ConvNeXt and an EfficientNet; every other family:
    tests/test_backbones.py)."""
    for backbone in ('convnext_atto', 'efficientnet_b0'):
        model = tiny(backbone=backbone).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, 64, 64)).shape == (1, NUM_CLASSES)


def test_gradients_reach_every_parameter_with_oe(images):
    """With OE on, L_ori + L_era back-propagates into every parameter (non-zero in the whole head; timm
    zero-initialises the last BN of each residual block, so some backbone gradients start at exactly 0). Built with
    PyTorch's init of f_s: the default zero init makes f_sa's gradient exactly 0 at the first step (see below)."""
    model = tiny(zero_init_spatial=False)
    model.set_object_erasing(True)
    model.train()
    logits, erased = model(images)
    loss = srdl_timm.SRDLLoss()(
        (logits, erased), torch.randint(0, 2, (2, NUM_CLASSES)).float())
    loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    head = [n for n, p in model.named_parameters() if not n.startswith('backbone.') and not p.grad.abs().sum() > 0]
    assert head == []


def test_training_forward_is_a_tensor_when_oe_is_off(images):
    """timm's precedent (deit distillation): the flag off, train mode returns a plain tensor."""
    model = tiny().train()
    assert isinstance(model(images), torch.Tensor)
    model.set_object_erasing(True)
    assert isinstance(model(images), tuple)
    model.eval()
    assert isinstance(model(images), torch.Tensor)


def _eq5_sa(model, feat, nodes):
    """Eq. 5 written out in the test: ``sigmoid(f_s(tanh(f_sa(F_p) * f_w(x_c))))`` -> ``[B, C, P]``."""
    car = model.car
    gated = torch.tanh(car.f_sa(feat).unsqueeze(1) * car.f_w(nodes).unsqueeze(0).unsqueeze(2))  # [B, C, P, d]
    return torch.sigmoid(gated @ car.f_s.weight.view(-1) + car.f_s.bias)


def test_erased_logits_change_only_topk_and_match_direct_recompute(images):
    """OE: erased logits differ from the original only in the top-K classes, and equal a recomputation of eq. 5
    (written out here) and eq. 6 with the SA rectangle zeroed (CA kept). f_s is perturbed and the SA it compares is
    checked to vary, so every erase mask is non-empty and every erased logit differs from the original."""
    model = spatial_attention_on(tiny(oe_topk=2)).double()
    model.set_object_erasing(True)
    model.train()
    model.head_drop.p = 0.0
    x = images.double()
    logits, erased = model(x)
    feat_map = model.forward_features(x)
    h, w = feat_map.shape[-2:]
    _, _, ca = model.forward_category_features(feat_map)
    feat = feat_map.flatten(2).transpose(1, 2)
    sa = _eq5_sa(model, feat, model.label_graph())
    assert (sa.amax(-1) - sa.amin(-1)).min() > 1e-3  # the guard, on the SA this test compares
    top = logits.topk(2, dim=1).indices
    for n in range(x.shape[0]):
        for c in range(NUM_CLASSES):
            if c in top[n]:
                mask = erase_region(sa[n, c].view(h, w), 0.5).flatten()
                assert mask.any()
                sa_erased = sa[n, c].masked_fill(mask, 0.0)
                fused = 0.5 * feat[n] * sa_erased.unsqueeze(1) + 0.5 * feat[n] * ca[n, c].unsqueeze(0)
                f_hat = fused.max(dim=0).values
                expected = f_hat @ model.classifier.weight[c] + model.classifier.bias[c]
                torch.testing.assert_close(erased[n, c], expected, rtol=1e-12, atol=1e-12)
                assert erased[n, c] != logits[n, c]
            else:
                assert erased[n, c] == logits[n, c]


#: the known-answer OE case: a 4 x 4 grid whose features are 1 on the 2 x 2 block rows 1-2, columns 1-2, 0 elsewhere
GRID, BLOCK, VALUE, F_S_BIAS = 4, (slice(1, 3), slice(1, 3)), 1.0, -1.0


def test_object_erasing_known_answer_rectangle_and_erased_logit():
    """OE at model level on a constructed case: with the head of known_attention_head (f_w(x_c) = 1, f_sa = I,
    f_s = 1/d per channel, CA = 0.5) and F = 1 on a 2 x 2 block, SA = sigmoid(tanh(1) + b) on the block and
    sigmoid(b) elsewhere (eq. 5); OE erases exactly the block (eqs. 7-10), so f_c drops from
    0.5 * SA_block + 0.25 to 0.25 (eq. 6 + GMP) and the erased logit of a selected class c is
    0.25 * sum_k w_ck + b_c. forward_erasing returns these intermediates; the unselected classes keep their logits."""
    model = tiny(oe_topk=2).double().eval()
    d = model.num_features
    known_attention_head(model, 1.0 / d, F_S_BIAS)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.linspace(-1.0, 1.0, NUM_CLASSES, dtype=torch.float64)[:, None] / d)
        model.classifier.bias.copy_(torch.arange(NUM_CLASSES, dtype=torch.float64) / 10)
    feat_map = block_feature_map(2, d, GRID, GRID, *BLOCK, VALUE)
    with torch.no_grad():
        out = model.forward_erasing(feat_map)
    sa_block = torch.sigmoid(torch.tensor(VALUE, dtype=torch.float64).tanh() + F_S_BIAS)
    block = torch.zeros(GRID, GRID, dtype=torch.bool)
    block[BLOCK] = True
    want_sa = torch.where(block, sa_block, torch.sigmoid(torch.tensor(F_S_BIAS, dtype=torch.float64))).flatten()
    torch.testing.assert_close(out['sa'], want_sa.expand(2, NUM_CLASSES, -1), rtol=1e-12, atol=1e-12)
    row_sum = model.classifier.weight.sum(1)  # f_c is the same on every channel
    f_c = VALUE * (0.5 * sa_block + 0.25)
    want_logits = f_c * row_sum + model.classifier.bias
    torch.testing.assert_close(out['logits'], want_logits.expand(2, -1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out['features'], torch.full((2, NUM_CLASSES, d), float(f_c), dtype=torch.float64))
    assert out['class_index'].tolist() == [[4, 3], [4, 3]]  # the two largest logits
    torch.testing.assert_close(out['erased_sa'], out['sa'][:, :2].masked_fill(block.flatten(), 0.0))
    torch.testing.assert_close(out['erased_features'], torch.full((2, 2, d), 0.25 * VALUE, dtype=torch.float64))
    want_erased = want_logits.clone()
    want_erased[[4, 3]] = 0.25 * VALUE * row_sum[[4, 3]] + model.classifier.bias[[4, 3]]
    torch.testing.assert_close(out['erased_logits'], want_erased.expand(2, -1), rtol=1e-12, atol=1e-12)
    model.set_object_erasing(True)
    logits, erased = model.train().forward_head_erasing(feat_map)
    torch.testing.assert_close((logits, erased), (out['logits'], out['erased_logits']), rtol=0, atol=0)


def test_eval_is_deterministic(images):
    """Two eval forwards of the same batch give bitwise-identical logits; batch order does not matter."""
    model = tiny().eval()
    with torch.no_grad():
        a, b = model(images), model(images)
        flipped = model(images.flip(0)).flip(0)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, flipped)


@pytest.mark.parametrize('impl', ['reference', 'chunked'])
def test_attention_impls_agree_in_model(images, impl):
    """Both kernels give the same logits and gradients inside the full model (SA perturbed and checked to vary)."""
    model = spatial_attention_on(tiny()).double()
    model.set_attention_impl('reference')
    x = images.double()
    assert_attention_not_constant(model, x)
    ref = model(x)
    ref.sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_attention_impl(impl)
    out = model(x)
    out.sum().backward()
    torch.testing.assert_close(out, ref)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n], msg=n)


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):  # memory actually held (an expand() view holds none of its own)
                self.largest = max(self.largest, t.untyped_storage().nbytes() // t.element_size())
        return out


def test_default_path_never_builds_b_c_p_d_tensor():
    """The head's forward and backward, OE included, never create a tensor of B*C*h*w*d elements: every
    intermediate stays below a quarter of it (the chunked kernels keep one block of categories at a time)."""
    model = tiny(num_classes=100)
    model.set_object_erasing(True)
    model.train()
    feat_map = torch.randn(2, model.num_features, 64, 64).relu().requires_grad_()
    full = 2 * 100 * 64 * 64 * model.num_features
    with _LargestTensor() as probe:
        logits, erased = model.forward_head_erasing(feat_map)
        (logits.sum() + erased.sum()).backward()
    assert feat_map.grad is not None
    assert probe.largest < full / 4, (probe.largest, full)


def test_oe_training_forward_keeps_two_per_category_tensors():
    """What the OE training forward keeps for the backward at [B, C, d] size is CA (eq. 4) and eq. 6's arg-max index
    (int16): not the pooled category features f (eqs. 4, 6 and 2 are one function that recomputes f at the arg-max),
    no tanh gate of eq. 4, no transposed copy of f for eq. 2, no gather of CA for the erased pass (each is
    1/(B*C*d) of the memory peak's C-dependent part)."""
    num_classes, batch = 100, 8  # batch 8: a [C, d] fp32 tensor is a quarter of an int16 [B, C, d]
    model = tiny(num_classes=num_classes)
    model.set_object_erasing(True)
    model.train()
    feat_map = torch.randn(batch, model.num_features, 4, 4).relu().requires_grad_()  # P = 16 < C
    kept = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits, erased = model.forward_head_erasing(feat_map)
    half = batch * num_classes * model.num_features * 2  # an int16 [B, C, d]
    assert sorted(n // half for n in kept.values() if n >= half) == [1, 2], kept
    (logits.sum() + erased.sum()).backward()


def test_timm_model_api(images):
    """forward_features/forward_head/pre_logits/reset_classifier/num_features follow timm's contract."""
    model = tiny().eval()
    with torch.no_grad():
        feats = model.forward_features(images)
        assert feats.ndim == 4 and feats.shape[1] == model.num_features
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, model.head_hidden_size)
        cat_feats, sa, ca = model.forward_category_features(feats)
        assert cat_feats.shape == (2, NUM_CLASSES, model.num_features)
        assert model.get_classifier() is model.classifier
        model.reset_classifier(0)
        pooled = model(images)
        assert pooled.shape == pre.shape
        torch.testing.assert_close(pooled, pre)
        model.reset_classifier(0, '')
        assert model(images).ndim == 4
        model.reset_classifier(7, 'max')
        assert model(images).shape == (2, 7)
        assert model.label_graph.node_features.shape[0] == 7


def test_create_model_kwargs_contract():
    """create_model's kwargs (in_chans, drop_rate, device, dtype) are accepted; unknown kwargs raise TypeError."""
    model = tiny(in_chans=1, drop_rate=0.1, device='cpu', dtype=torch.float64)
    assert next(model.parameters()).dtype == torch.float64
    assert model(torch.randn(1, 1, 64, 64, dtype=torch.float64)).shape == (1, NUM_CLASSES)
    with pytest.raises(TypeError):
        tiny(not_a_model_arg=1)


def test_meta_device_and_reset_keeps_device_dtype():
    """Built on the meta device (timm's cfg tests do this) and reset there, parameters stay meta/float64."""
    model = tiny(device='meta', dtype=torch.float32)
    model.to(device='meta', dtype=torch.float64)
    model.reset_classifier(3)
    for p in model.parameters():
        assert p.device.type == 'meta' and p.dtype == torch.float64


def test_group_matcher_and_no_weight_decay():
    """group_matcher splits backbone stages and head into several groups with numeric capture groups."""
    from timm.models._manipulate import group_parameters
    model = tiny()
    groups = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    assert len(set(groups.values())) > 2
    assert set(groups) == {n for n, _ in model.named_parameters()}
    head_group = groups['classifier.weight']
    assert groups['label_graph.adjacency'] == head_group and groups['car.f_sa.weight'] == head_group
    assert isinstance(model.no_weight_decay(), set)


def test_features_only():
    """features_only=True gives the backbone's feature pyramid through forward_intermediates."""
    model = tiny(features_only=True)
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == model.feature_info.channels()


def test_torchscript_fx_and_compile_in_eval(images):
    """torch.jit.script, torch.fx (timm's feature extractor) and torch.compile (backend 'eager') reproduce eager
    eval logits, on a model whose SA is perturbed and checked to vary over positions."""
    from timm.models._features_fx import create_feature_extractor
    model = spatial_attention_on(tiny()).eval()
    assert_attention_not_constant(model, images)
    with torch.no_grad():
        ref = model(images)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            scripted = torch.jit.script(model)
        torch.testing.assert_close(scripted(images), ref)
        traced = create_feature_extractor(model, ['classifier'])
        torch.testing.assert_close(traced(images)['classifier'], ref)
        compiled = torch.compile(model, backend='eager')
        torch.testing.assert_close(compiled(images), ref)


def test_grad_checkpointing_gives_same_gradients(images):
    """set_grad_checkpointing reaches the backbone and leaves gradients unchanged."""
    model = tiny().train()
    model(images).sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    assert model.backbone.grad_checkpointing
    model(images).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], msg=n)


def test_ablation_switches_build_the_table6_variants(images):
    """use_gcn/use_ca/use_sa remove exactly their parts; OE needs SA."""
    assert tiny(use_gcn=False).label_graph.num_layers == 0
    assert tiny(use_ca=False).car.f_ca is None
    assert tiny(use_sa=False).car.f_sa is None
    baseline = tiny(use_ca=False, use_sa=False)
    assert baseline.label_graph is None and baseline(images).shape == (2, NUM_CLASSES)
    with pytest.raises(ValueError, match='use_sa'):
        tiny(use_sa=False, object_erasing=True)


def test_label_embeddings_initialise_the_nodes():
    """An array given as label_embeddings becomes A^0; a wrong shape is refused; none given warns."""
    vectors = torch.randn(NUM_CLASSES, 12)
    model = tiny(label_embeddings=vectors)
    torch.testing.assert_close(model.label_graph.node_features, vectors)
    assert model.car.f_w.in_features == 12
    with pytest.raises(ValueError, match='label_embeddings'):
        tiny(label_embeddings=torch.randn(NUM_CLASSES + 1, 12))


def test_missing_embeddings_warn(caplog):
    """Without label_embeddings the seeded random init is logged as a warning."""
    with caplog.at_level('WARNING'):
        timm.create_model('srdl_test_resnet', num_classes=3)
    assert 'seeded random' in caplog.text


@pytest.mark.parametrize('kwargs, message', [
    (dict(backbone='not_a_model'), 'Unknown backbone'),
    (dict(num_classes=-1), 'num_classes'),
    (dict(global_pool='token'), 'global_pool'),
    (dict(label_names=['a', 'b']), 'label_names'),
    (dict(attention_impl='cuda-magic'), 'attention_impl'),
])
def test_bad_construction_raises_value_error(kwargs, message):
    """Unknown backbones and invalid options raise ValueError naming the problem (a backbone without a spatial
    grid: tests/test_backbones.py)."""
    with pytest.raises(ValueError, match=message):
        tiny(**kwargs)


@pytest.mark.parametrize('x, message', [
    (torch.randn(3, 64, 64), '4-D'),
    (torch.randn(1, 1, 64, 64), 'input channels'),
])
def test_bad_input_raises_value_error(x, message):
    """Non-4-D input or the wrong channel count raise ValueError before the backbone runs."""
    with pytest.raises(ValueError, match=message):
        tiny()(x)


def test_default_zero_init_spatial_starts_sa_at_one_half_and_lets_it_learn(images):
    """The default zero-initialised f_s gives SA = 0.5 at every position of a fresh model (sigmoid's steepest
    point) and f_s itself gets a non-zero gradient, so SA moves away from flat at the first step; the layer's own
    default keeps PyTorch's init (a non-flat SA)."""
    model = tiny()
    sa = model.attention_maps(images)['spatial_attention']
    assert torch.allclose(sa, torch.full_like(sa, 0.5))
    model.train()
    model(images).sum().backward()
    assert model.car.f_s.weight.grad.abs().sum() > 0
    plain = tiny(zero_init_spatial=False).eval()
    sa_plain = plain.attention_maps(images)['spatial_attention']
    assert (sa_plain - 0.5).abs().max() > 1e-3


def test_vit_variant_is_vit_b16_at_448_with_its_backbones_preprocessing():
    """srdl_vit_base_patch16_448: ViT-B/16 (augreg2 ImageNet-21k -> 1k) built for 448 px, so its position embedding
    and the default cfg's pool size are the 28 x 28 patch grid; mean, std and interpolation are the backbone's."""
    with torch.device('meta'):
        model = timm.create_model('srdl_vit_base_patch16_448', num_classes=3, label_embeddings='random')
    backbone_cfg = timm.models.get_pretrained_cfg('vit_base_patch16_224.augreg2_in21k_ft_in1k')
    cfg = model.pretrained_cfg
    assert (cfg['mean'], cfg['std'], cfg['interpolation']) == (
        backbone_cfg.mean, backbone_cfg.std, backbone_cfg.interpolation)
    assert cfg['input_size'] == (3, 448, 448) and cfg['pool_size'] == model.feature_grid_size(448) == (28, 28)
    assert model.backbone.pos_embed.shape[1] == 1 + 28 * 28 and model.num_features == 768
    assert cfg['first_conv'] == 'backbone.patch_embed.proj'


# --------------------------------------------------------------------------------------------------------------
# attention variants and OE on features (not the paper's)
# --------------------------------------------------------------------------------------------------------------
VARIANTS = [('gated', 'features'), ('softmax', 'features'), ('softmax_gated', 'features'),
            ('softmax_gated', 'attention')]


@pytest.mark.parametrize('attention,oe_erase', VARIANTS)
def test_variant_oe_changes_only_topk_and_trains_every_parameter(images, attention, oe_erase):
    """With a variant and OE on, the erased logits differ from the originals exactly in the top-K classes, the
    erased region is non-empty, every trainable parameter gets a gradient, and the variant's eval logits survive
    torch.jit.script and torch.fx unchanged; the attention compared is not constant over positions."""
    from timm.models._features_fx import create_feature_extractor
    torch.manual_seed(0)
    model = tiny(attention=attention, oe_erase=oe_erase, zero_init_spatial=False, oe_topk=2)
    model.train()
    out = model.forward_erasing(model.forward_features(images))
    assert out['sa'].std(dim=-1).min() > 1e-4 and out['region'].any()
    changed = (out['erased_logits'] != out['logits'])
    selected = torch.zeros_like(changed).scatter(1, out['class_index'], True)
    assert not (changed & ~selected).any() and changed[selected].float().mean() > 0.5
    model.set_object_erasing(True)
    logits, erased = model(images)
    (logits.sum() + erased.sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    model.set_object_erasing(False)  # fx traces the training graph too; OE's top-K is not traceable
    model.eval()
    with torch.no_grad():
        ref = model(images)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            torch.testing.assert_close(torch.jit.script(model)(images), ref)
        torch.testing.assert_close(create_feature_extractor(model, ['classifier'])(images)['classifier'], ref)


def test_variant_arguments_are_recorded_and_checked():
    """attention/oe_erase are model arguments (recorded by loading.model_args, so a config rebuilds them); a bad
    value and the one combination that cannot work (feature erasing with the paper's additive eq. 6) are refused
    naming the option."""
    from srdl_timm.loading import model_args
    args = model_args(tiny(attention='softmax_gated', oe_erase='features'))
    assert (args['attention'], args['oe_erase']) == ('softmax_gated', 'features')
    assert tiny(**{k: v for k, v in args.items() if k != 'backbone'}).car.attention == 'softmax_gated'
    assert model_args(tiny())['attention'] == 'paper'
    with pytest.raises(ValueError, match="oe_erase='features' needs attention"):
        tiny(oe_erase='features')
    with pytest.raises(ValueError, match='attention must be one of'):
        tiny(attention='both')
    with pytest.raises(ValueError, match="oe_erase must be 'attention' or 'features'"):
        tiny(attention='gated', oe_erase='boxes')
