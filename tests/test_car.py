"""Tests for srdl_timm/layers/car.py (paper eqs. 2, 4, 5, 6): each equation against a direct per-category
computation in float64."""
import pytest
import torch

from srdl_timm.layers import CategoryAttention, CategoryClassifier

B, P, D, E, C = 2, 6, 5, 4, 3


@pytest.fixture
def car():
    torch.manual_seed(0)
    return CategoryAttention(D, E).double()


def _inputs():
    feat = torch.randn(B, P, D, dtype=torch.float64).relu()
    nodes = torch.randn(C, E, dtype=torch.float64)
    return feat, nodes


def test_eq4_channel_attention_per_category(car):
    """CA^{n,c} = sigmoid(f_c(tanh(f_ca(GMP(F)) * f_w(x_c)))) for every sample and category."""
    feat, nodes = _inputs()
    embeddings = car.f_w(nodes)
    ca = car.channel_attention(feat.amax(1), embeddings)
    for n in range(B):
        gmp = feat[n].max(dim=0).values
        for c in range(C):
            expected = torch.sigmoid(car.f_c(torch.tanh(car.f_ca(gmp) * car.f_w(nodes[c]))))
            torch.testing.assert_close(ca[n, c], expected)


@pytest.mark.parametrize('impl', ['reference', 'chunked'])
def test_eq5_spatial_attention_per_position(car, impl):
    """SA^{n,c}_{x,y} = sigmoid(f_s(tanh(f_sa(F_{x,y}) * f_w(x_c)))) position by position, both kernels."""
    car.attention_impl = impl
    feat, nodes = _inputs()
    sa = car.spatial_attention(feat, car.f_w(nodes))
    assert sa.shape == (B, C, P)
    for n in range(B):
        for c in range(C):
            for p in range(P):
                expected = torch.sigmoid(car.f_s(torch.tanh(car.f_sa(feat[n, p]) * car.f_w(nodes[c]))))
                torch.testing.assert_close(sa[n, c, p], expected[0])


@pytest.mark.parametrize('impl', ['reference', 'chunked'])
def test_eq6_fusion_then_gmp(car, impl):
    """f_c = GMP(0.5 F*SA + 0.5 F*CA), with SA repeated over channels and CA over positions."""
    car.attention_impl = impl
    feat, nodes = _inputs()
    features, sa, ca = car(feat, nodes, C)
    for n in range(B):
        for c in range(C):
            sa_rep = sa[n, c].unsqueeze(1).expand(P, D)
            ca_rep = ca[n, c].unsqueeze(0).expand(P, D)
            fused = 0.5 * feat[n] * sa_rep + 0.5 * feat[n] * ca_rep
            torch.testing.assert_close(features[n, c], fused.max(dim=0).values)


@pytest.mark.parametrize('use_ca, use_sa', [(False, True), (True, False), (False, False)])
def test_ablations_of_table6(use_ca, use_sa):
    """Without CA eq. 6 is F*SA, without SA it is F*CA, without both the head is plain GMP."""
    torch.manual_seed(0)
    car = CategoryAttention(D, E, use_ca=use_ca, use_sa=use_sa).double()
    feat, nodes = _inputs()
    features, sa, ca = car(feat, nodes, C)
    assert (sa is None) != use_sa and (ca is None) != use_ca
    for n in range(B):
        for c in range(C):
            weight = torch.ones(P, D, dtype=torch.float64)
            if use_sa:
                weight = weight * sa[n, c].unsqueeze(1)
            if use_ca:
                weight = weight * ca[n, c].unsqueeze(0)
            torch.testing.assert_close(features[n, c], (feat[n] * weight).max(dim=0).values)
    if not (use_ca or use_sa):
        assert car.f_w is None and list(car.parameters()) == []


def test_eq2_classifier_has_one_weight_vector_per_category():
    """logit_c = <w_c, f_c> + b_c; selecting classes by index gives the same numbers."""
    clf = CategoryClassifier(D, C).double()
    with torch.no_grad():
        clf.bias.normal_()
    features = torch.randn(B, C, D, dtype=torch.float64)
    logits = clf(features)
    for n in range(B):
        for c in range(C):
            torch.testing.assert_close(logits[n, c], features[n, c] @ clf.weight[c] + clf.bias[c])
    index = torch.tensor([[2, 0], [1, 1]])
    picked = clf(torch.gather(features, 1, index.unsqueeze(-1).expand(-1, -1, D)), index)
    torch.testing.assert_close(picked, torch.gather(logits, 1, index))


def test_layer_sizes_follow_section_4_2():
    """f_ca, f_sa, f_c: d->d; f_w: d'->d; f_s: d->1."""
    car = CategoryAttention(16, 7)
    assert (car.f_ca.in_features, car.f_ca.out_features) == (16, 16)
    assert (car.f_sa.in_features, car.f_sa.out_features) == (16, 16)
    assert (car.f_c.in_features, car.f_c.out_features) == (16, 16)
    assert (car.f_w.in_features, car.f_w.out_features) == (7, 16)
    assert (car.f_s.in_features, car.f_s.out_features) == (16, 1)


def test_unknown_attention_impl_is_rejected():
    """A misspelt kernel choice raises ValueError naming the accepted values."""
    with pytest.raises(ValueError, match='attention_impl'):
        CategoryAttention(4, 4, attention_impl='fast')


def test_eq2_training_function_equals_the_direct_sum_with_gradients():
    """category_logits' training function: <f_c, w_c> and its gradients as the direct sum (float64 gradcheck),
    the features' gradient laid out as the features (not a transposed copy)."""
    from srdl_timm.layers.car import _CategoryLogits, category_logits
    features = torch.randn(B, C, D, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(C, D, dtype=torch.float64, requires_grad=True)
    out = category_logits(features, weight)
    assert type(out.grad_fn).__name__ == '_CategoryLogitsBackward'
    direct = (features * weight).sum(-1)
    torch.testing.assert_close(out, direct)
    cot = torch.randn(B, C, dtype=torch.float64)
    grads = torch.autograd.grad(out, (features, weight), cot)
    for got, want in zip(grads, torch.autograd.grad(direct, (features, weight), cot)):
        torch.testing.assert_close(got, want)
    assert grads[0].is_contiguous()
    assert torch.autograd.gradcheck(_CategoryLogits.apply, (features, weight))


# --------------------------------------------------------------------------------------------------------------
# attention variants (not the paper's; MODEL_CARD.md "Attention variants")
# --------------------------------------------------------------------------------------------------------------
def _variant(attention):
    torch.manual_seed(0)
    return CategoryAttention(D, E, attention=attention).double()


def _variant_reference(car, feat, sa, ca, gmp):
    """Each variant's fusion by direct broadcast over [B, C, P, d] (the oracle)."""
    if car.attention == 'gated':
        spatial = (feat.unsqueeze(1) * sa.unsqueeze(-1)).amax(dim=2)
    else:
        spatial = (feat.unsqueeze(1) * sa.unsqueeze(-1)).sum(dim=2)
    return ca * spatial if car.gated else 0.5 * spatial + 0.5 * ca * gmp


@pytest.mark.parametrize('attention', ['gated', 'softmax', 'softmax_gated'])
def test_variant_fusion_matches_direct_computation(attention):
    """Each variant's f_c equals its formula computed by broadcasting (gated: CA * max_p F_p SA_p; softmax: 0.5
    sum_p SA_p F_p + 0.5 CA * GMP(F); softmax_gated: CA * sum_p SA_p F_p), and softmax maps sum to 1 over p."""
    car = _variant(attention)
    torch.nn.init.normal_(car.f_s.weight)
    feat, nodes = _inputs()
    features, sa, ca = car(feat, nodes, C)
    assert sa.std(dim=-1).min() > 1e-3  # the attention compared is not constant over positions
    if car.softmax_spatial:
        torch.testing.assert_close(sa.sum(-1), torch.ones(B, C, dtype=torch.float64))
    else:
        assert ((sa > 0) & (sa < 1)).all()
    torch.testing.assert_close(features, _variant_reference(car, feat, sa, ca, feat.amax(1, keepdim=True)))


@pytest.mark.parametrize('attention', ['gated', 'softmax', 'softmax_gated'])
def test_feature_erasing_is_the_head_on_the_erased_feature_map(attention):
    """erased_features(F, M) is the variant's head on F * (1 - M) for each erased class: eq. 4 on GMP(F * (1 - M)),
    SA zeroed on M (softmax: renormalised over the rest), fused as the variant fuses; computed here per class from
    the literal erased map [B, K, P, d]."""
    car = _variant(attention)
    torch.nn.init.normal_(car.f_s.weight)
    feat, nodes = _inputs()
    _, sa, _ = car(feat, nodes, C)
    class_index = torch.tensor([[2, 0], [1, 2]])
    erased = torch.zeros(B, 2, P, dtype=torch.bool)
    erased[0, 0, 1:3] = erased[0, 1, 4] = erased[1, 0, 0] = erased[1, 1, 2:5] = True
    selected = torch.gather(sa, 1, class_index.unsqueeze(-1).expand(-1, -1, P)).masked_fill(erased, 0.0)
    got = car.erased_features(feat, nodes, selected, class_index, erased)
    erased_map = feat.unsqueeze(1) * (~erased).unsqueeze(-1)  # [B, K, P, d]
    gmp = erased_map.amax(dim=2)
    e = car.f_w(nodes)[class_index]
    ca = torch.sigmoid(car.f_c(torch.tanh(car.f_ca(gmp) * e)))
    kept = selected * (~erased)
    if car.softmax_spatial:
        kept = kept / kept.sum(-1, keepdim=True)
    spatial = (erased_map * kept.unsqueeze(-1))
    spatial = spatial.amax(dim=2) if attention == 'gated' else spatial.sum(dim=2)
    expected = ca * spatial if car.gated else 0.5 * spatial + 0.5 * ca * gmp
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize('attention', ['paper', 'gated', 'softmax', 'softmax_gated'])
def test_maps_peak_on_each_class_own_object(attention):
    """A constructed two-object scene: class 0's evidence lives in channels 0-1 at position 1, class 1's in
    channels 2-3 at position 4 (position 1 also shows some class-1 channels). With f_sa = identity, f_w mapping each
    node to its class's channels and f_s summing, every head's maps peak on different objects, each on its own
    (eq. 5's map can be category-specific; whether training keeps it so is measured in offline_benchmark.md)."""
    feat = torch.full((1, P, 4), 0.1, dtype=torch.float64)
    feat[0, 1, :2] = feat[0, 4, 2:] = 3.0
    feat[0, 1, 2:] = 1.0
    car = CategoryAttention(4, 2, attention=attention).double()
    with torch.no_grad():
        car.f_sa.weight.copy_(torch.eye(4))
        car.f_sa.bias.zero_()
        car.f_w.weight.copy_(torch.tensor([[1., 0], [1, 0], [0, 1], [0, 1]]))
        car.f_w.bias.zero_()
        car.f_s.weight.fill_(1.0)
        car.f_s.bias.zero_()
    _, sa, _ = car(feat, torch.eye(2, dtype=torch.float64), 2)
    assert sa[0].argmax(-1).tolist() == [1, 4]


def test_unknown_attention_variant_is_refused_by_name():
    """An attention name outside ATTENTION_VARIANTS is a ValueError naming the value and the choices."""
    with pytest.raises(ValueError, match="attention must be one of .*'sideways'"):
        CategoryAttention(D, E, attention='sideways')
