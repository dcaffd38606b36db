"""Tests for srdl_timm/loss.py (paper eqs. 11-13)."""
import math

import pytest
import torch

from srdl_timm.loss import SRDLLoss, masked_bce_with_logits


def _direct_bce(logits, target):
    p = torch.sigmoid(logits.double())
    total, count = 0.0, 0
    for n in range(logits.shape[0]):
        for c in range(logits.shape[1]):
            y = target[n, c].item()
            if y < 0:
                continue
            total -= y * math.log(p[n, c]) + (1 - y) * math.log(1 - p[n, c])
            count += 1
    return total / count


def test_eq11_is_mean_binary_cross_entropy():
    """L_ori = -(y log p + (1-y) log(1-p)) averaged over all B*C entries."""
    logits = torch.randn(4, 6)
    target = torch.randint(0, 2, (4, 6)).float()
    assert masked_bce_with_logits(logits, target).item() == pytest.approx(_direct_bce(logits, target), rel=1e-5)


def test_eq13_sums_original_and_erased_terms():
    """L = L_ori + L_era when the model returns (logits, erased_logits); L_ori alone for a tensor."""
    logits, erased = torch.randn(3, 5), torch.randn(3, 5)
    target = torch.randint(0, 2, (3, 5)).float()
    loss = SRDLLoss()
    expected = _direct_bce(logits, target) + _direct_bce(erased, target)
    assert loss((logits, erased), target).item() == pytest.approx(expected, rel=1e-5)
    assert loss(logits, target).item() == pytest.approx(_direct_bce(logits, target), rel=1e-5)


def test_ignored_entries_do_not_count():
    """Targets of -1 (VOC difficult-only) contribute neither loss nor gradient."""
    logits = torch.randn(2, 3, requires_grad=True)
    target = torch.tensor([[1.0, -1.0, 0.0], [-1.0, 0.0, 1.0]])
    loss = masked_bce_with_logits(logits, target)
    assert loss.item() == pytest.approx(_direct_bce(logits.detach(), target), rel=1e-5)
    loss.backward()
    assert logits.grad[0, 1] == 0 and logits.grad[1, 0] == 0


def test_extreme_logits_stay_finite():
    """Computed from logits in float32: saturated bf16 logits give a finite loss."""
    logits = torch.tensor([[80.0, -80.0]], dtype=torch.bfloat16)
    loss = masked_bce_with_logits(logits, torch.tensor([[0.0, 1.0]]))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(80.0, rel=1e-3)


def test_shape_mismatch_is_reported():
    """Logits and targets of different shapes raise ValueError with both shapes."""
    with pytest.raises(ValueError, match=r'\(2, 3\).*\(2, 4\)'):
        masked_bce_with_logits(torch.zeros(2, 3), torch.zeros(2, 4))


def test_era_scope_erased_covers_only_the_top_k_classes():
    """era_scope='erased': L_era is the BCE over the B*K entries of the top-K classes of the detached original
    logits (the selection the model's OE uses); 'all' (default) is the BCE over all B*C erased-pass entries."""
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [0.0, 1.0, -2.0, -1.0]])
    erased = torch.tensor([[1.0, -1.0, 0.2, 1.5], [0.0, -0.5, -2.0, -1.0]])
    target = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, -1.0]])
    top2 = [[3, 0], [1, 0]]  # per sample, the two largest original logits
    picked_logits = torch.tensor([[erased[n, c].item() for c in top2[n]] for n in range(2)])
    picked_target = torch.tensor([[target[n, c].item() for c in top2[n]] for n in range(2)])
    expected = _direct_bce(logits, target) + _direct_bce(picked_logits, picked_target)
    loss = SRDLLoss(era_scope='erased', topk=2)
    assert loss((logits, erased), target).item() == pytest.approx(expected, rel=1e-5)
    assert SRDLLoss()((logits, erased), target).item() == pytest.approx(
        _direct_bce(logits, target) + _direct_bce(erased, target), rel=1e-5)
    # no gradient reaches the original logits through the selection, only through L_ori
    x = logits.clone().requires_grad_(True)
    e = erased.clone().requires_grad_(True)
    loss((x, e), target).backward()
    assert (e.grad[0, [1, 2]] == 0).all() and (e.grad[0, [0, 3]] != 0).all()


def test_era_scope_erased_matches_the_models_erased_classes():
    """The loss's top-K is exactly the classes the model's ObjectErasing erased (one definition)."""
    from srdl_timm.layers import ObjectErasing
    from srdl_timm.layers.oe import select_erased_classes
    logits = torch.randn(6, 9)
    index, _, _ = ObjectErasing(topk=3)(logits, torch.rand(6, 9, 16), 4, 4)
    assert torch.equal(index, select_erased_classes(logits, 3))


def test_bad_era_scope_is_refused():
    with pytest.raises(ValueError, match='era_scope'):
        SRDLLoss(era_scope='some')
    with pytest.raises(ValueError, match='topk'):
        SRDLLoss(era_scope='erased')


def test_sum_reduction_is_the_mean_times_the_labelled_count():
    """reduction='sum' (eqs. 11-12 as written) equals the mean times the number of labelled entries, per term and
    for L_ori + L_era; ignored (-1) entries count in neither."""
    torch.manual_seed(0)
    logits, erased = torch.randn(4, 6), torch.randn(4, 6)
    target = torch.randint(0, 2, (4, 6)).float()
    target[0, :2] = -1
    labelled = int((target >= 0).sum())
    mean, total = SRDLLoss(), SRDLLoss(reduction='sum')
    assert torch.allclose(total(logits, target), mean(logits, target) * labelled)
    assert torch.allclose(total((logits, erased), target), mean((logits, erased), target) * labelled)
    with pytest.raises(ValueError, match='reduction'):
        SRDLLoss(reduction='avg')


def test_asl_with_no_focusing_and_no_margin_is_bce():
    """ASL with gamma- = gamma+ = 0 and margin 0 is binary cross-entropy (up to timm's eps clamp)."""
    torch.manual_seed(1)
    logits, target = torch.randn(5, 7) * 2, torch.randint(0, 2, (5, 7)).float()
    target[1, 3] = -1
    asl = SRDLLoss(loss='asl', asl={'gamma_neg': 0.0, 'gamma_pos': 0.0, 'clip': 0.0})
    assert torch.allclose(asl(logits, target), SRDLLoss()(logits, target), atol=1e-6)


def test_asl_focusing_terms_are_pinned_to_their_closed_form():
    """ASL's per-entry values at logit 0 (p = 0.5), written out: a negative costs p_m^gamma- * -log(1 - p_m) with
    p_m = 0.5 - 0.05 (0.45^4 * log(1/0.55) under the defaults, log(1/0.55) with gamma- = 0), a positive
    (1 - p)^gamma+ * -log p; SRDLLoss(loss='asl') uses the defaults gamma- = 4, gamma+ = 0, margin 0.05."""
    from srdl_timm.loss import masked_asl_with_logits
    zero, neg, pos = torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1)
    neg_ce, pos_ce = math.log(1 / 0.55), math.log(2.0)
    assert masked_asl_with_logits(zero, neg).item() == pytest.approx(0.45 ** 4 * neg_ce, rel=1e-6)
    assert masked_asl_with_logits(zero, neg, gamma_neg=0.0).item() == pytest.approx(neg_ce, rel=1e-6)
    assert masked_asl_with_logits(zero, neg, gamma_neg=1.0).item() == pytest.approx(0.45 * neg_ce, rel=1e-6)
    assert masked_asl_with_logits(zero, pos).item() == pytest.approx(pos_ce, rel=1e-6)
    assert masked_asl_with_logits(zero, pos, gamma_pos=1.0).item() == pytest.approx(0.5 * pos_ce, rel=1e-6)
    both = SRDLLoss(loss='asl')(torch.zeros(1, 2), torch.tensor([[0.0, 1.0]]))
    assert both.item() == pytest.approx((0.45 ** 4 * neg_ce + pos_ce) / 2, rel=1e-6)


def test_asl_down_weights_easy_negatives_and_ignores_unlabelled_entries():
    """With the ASL defaults (gamma- 4, margin 0.05) an easy negative (p < 0.05) costs nothing, a confident wrong
    negative still costs; entries with target -1 change nothing; the loss is float32 from bfloat16 logits."""
    from srdl_timm.loss import masked_asl_with_logits
    easy = masked_asl_with_logits(torch.tensor([[-4.0]]), torch.tensor([[0.0]]))
    wrong = masked_asl_with_logits(torch.tensor([[3.0]]), torch.tensor([[0.0]]))
    assert easy.item() == 0.0 and wrong.item() > 1.0
    logits, target = torch.randn(3, 4), torch.randint(0, 2, (3, 4)).float()
    masked = target.clone()
    masked[0, 0] = -1
    keep = torch.ones_like(target, dtype=torch.bool)
    keep[0, 0] = False
    expected = masked_asl_with_logits(logits[keep][None], target[keep][None])
    assert torch.allclose(masked_asl_with_logits(logits, masked), expected)
    assert masked_asl_with_logits(logits.bfloat16(), target).dtype == torch.float32
    with pytest.raises(ValueError, match='loss'):
        SRDLLoss(loss='focal')
