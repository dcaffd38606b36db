"""Tests for srdl_timm/ops/chunked.py: the chunked kernels are exact (float64 against the reference, gradcheck)
whatever the block size, and never hold a ``B x C x P x d`` tensor. (Every path, chunked included, against the
reference at many shapes and dtypes: tests/test_ops_dispatch.py.)"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ops_cases import logits_inputs, logits_op, one_thread, pool_inputs, pool_op  # noqa: F401  (one_thread: fixture)
from srdl_timm.ops import dispatch as D
from srdl_timm.ops import reference as R


@pytest.mark.parametrize('block_elements', [1, 7, 12, 40, 64])
def test_chunked_block_splits_gradcheck(block_elements):
    """The chunked path is exact whatever the block: one position or channel at a time (1), splits of
    positions/channels that do not divide them (7, 12), one whole category (40) or several per block (64);
    float64 forward against the reference and gradcheck of both ops."""
    b, p, d, c = 2, 6, 5, 3  # one category is 30 elements: 1, 7 split rows, 40 and 64 take 1 and 2 categories
    s, e, w = logits_inputs(b, p, d, c, torch.float64, 'cpu')
    fn = logits_op('chunked', block_elements)
    torch.testing.assert_close(fn(s, e, w), R.spatial_attention_logits_reference(s, e, w), rtol=1e-13, atol=1e-13)
    assert torch.autograd.gradcheck(fn, (s, e, w))
    feat, sa, ca = pool_inputs(b, p, d, c, torch.float64, 'cpu')
    pool = pool_op('chunked', 0.5, 0.5, block_elements)
    assert torch.equal(pool(feat, sa, ca), R.attention_max_pool_reference(feat, sa, ca))
    assert torch.autograd.gradcheck(pool, (feat, sa, ca))


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.untyped_storage().nbytes() // t.element_size())
        return out


def test_chunked_memory_has_no_b_c_p_d_term():
    """Forward + backward of both chunked ops at C = 1000 never hold a tensor larger than one block or the
    O(B*C*(P + d)) inputs/outputs: far below B*C*P*d."""
    b, p, d, c = 2, 24, 16, 1000
    block = 4096
    s, e, w = logits_inputs(b, p, d, c, torch.float32, 'cpu')
    feat, sa, ca = pool_inputs(b, p, d, c, torch.float32, 'cpu')
    with _LargestTensor() as probe:
        out = D.spatial_attention_logits(s, e, w, impl='chunked', block_elements=block)
        pooled = D.attention_max_pool(feat, sa, ca, impl='chunked', block_elements=block)
        (out.sum() + pooled.sum()).backward()
    linear = max(b * c * p, b * c * d, block)
    assert probe.largest <= linear, (probe.largest, linear)
    assert probe.largest * 10 < b * c * p * d
