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
