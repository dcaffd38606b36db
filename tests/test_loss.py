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
