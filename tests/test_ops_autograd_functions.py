"""Tests for srdl_timm/ops/autograd_functions.py: eq. 6 + GMP's shared backward gives the reference's gradients
whether it walks the categories in one chunk or one at a time, for both saved-index dtypes, and the chunked and
compiled paths record these functions (not their own) in training."""
import pytest
import torch

from ops_cases import logits_inputs, one_thread, pool_inputs, rel_err  # noqa: F401  (one_thread: fixture)
from srdl_timm.ops import autograd_functions as AF
from srdl_timm.ops import chunked as CH
from srdl_timm.ops import dispatch as D
from srdl_timm.ops import reference as R


def test_pool_backward_in_category_chunks(monkeypatch):
    """The max-pool backward gives the same gradients (float64, to 1e-12) when it walks over the categories
    one at a time as in one chunk, for both saved-index dtypes it meets (int16 chunked, int32 Triton)."""
    feat, sa, ca = (t.detach() for t in pool_inputs(2, 7, 5, 6, torch.float64, 'cpu'))
    out, index = CH.pool_forward(feat, sa, ca, 0.5, 0.5, 10, True)
    assert index.dtype == torch.int16
    cot = torch.randn(out.shape, dtype=torch.float64)
    whole = AF.attention_max_pool_backward(cot, feat, sa, ca, index, 0.5, 0.5, (True, True, True))
    monkeypatch.setattr(AF, "BACKWARD_CHUNK_ELEMENTS", 1)
    for idx in (index, index.int()):
        chunked = AF.attention_max_pool_backward(cot, feat, sa, ca, idx, 0.5, 0.5, (True, True, True))
        for a, b in zip(chunked, whole):
            assert rel_err(a, b) <= 1e-12
    ref = [t.clone().requires_grad_() for t in (feat, sa, ca)]
    expected = torch.autograd.grad(R.attention_max_pool_reference(*ref), ref, cot)
    for a, b in zip(whole, expected):
        assert rel_err(a, b) <= 1e-12


@pytest.mark.parametrize('impl', ['chunked', 'compiled'])
def test_fast_paths_record_the_shared_autograd_functions(impl):
    """In training, eq. 5's inner sum and eq. 6 + GMP on the chunked and compiled paths are one node each of
    SpatialAttentionLogitsFunction / AttentionMaxPoolFunction; without a gradient they record nothing."""
    s, e, w = logits_inputs(1, 6, 5, 2, torch.float32, 'cpu')
    feat, sa, ca = pool_inputs(1, 6, 5, 2, torch.float32, 'cpu')
    logits = D.spatial_attention_logits(s, e, w, impl=impl)
    pooled = D.attention_max_pool(feat, sa, ca, impl=impl)
    assert type(logits.grad_fn).__name__ == AF.SpatialAttentionLogitsFunction.__name__ + 'Backward'
    assert type(pooled.grad_fn).__name__ == AF.AttentionMaxPoolFunction.__name__ + 'Backward'
    with torch.no_grad():
        assert D.spatial_attention_logits(s, e, w, impl=impl).grad_fn is None
        assert D.attention_max_pool(feat, sa, ca, impl=impl).grad_fn is None
