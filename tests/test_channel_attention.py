"""Tests for srdl_timm/ops/channel_attention.py (eq. 4): the chunked training function against the reference
(float64 values and gradients, chunks that do not divide C), the per-image category selection of OE's erased
pass, and what the training forward keeps for the backward."""
import pytest
import torch

from srdl_timm.ops.channel_attention import _ChannelAttention, channel_attention, channel_attention_reference

B, C, D = 3, 7, 5


def _inputs(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(B, D, generator=g, dtype=dtype)
    e = torch.randn(C, D, generator=g, dtype=dtype)
    w = torch.randn(D, D, generator=g, dtype=dtype) / D ** 0.5
    b = torch.randn(D, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (a, e, w, b)]


@pytest.mark.parametrize('chunk_elements', [1, 2 * B * D, 10 ** 6])  # 1 class, 2 (7 = 2+2+2+1), all at once
def test_chunked_function_equals_reference_with_gradients(chunk_elements):
    """Values and all four gradients equal the autograd reference for any chunking of the categories."""
    a, e, w, b = _inputs()
    ref = channel_attention_reference(a, e, w, b)
    cot = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, (a, e, w, b), cot)
    out = _ChannelAttention.apply(a, e, w, b, chunk_elements)
    grads = torch.autograd.grad(out, (a, e, w, b), cot)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_chunked_function_passes_gradcheck():
    """torch.autograd.gradcheck of the chunked function (2 classes per chunk) in float64."""
    a, e, w, b = _inputs()
    assert torch.autograd.gradcheck(lambda *t: _ChannelAttention.apply(*t, 2 * B * D), (a, e, w, b))


def test_training_call_uses_the_chunked_function_and_inference_the_reference():
    """With a gradient needed (float32/64, no autocast) the chunked function runs; under no_grad the reference."""
    a, e, w, b = _inputs(torch.float32)
    assert type(channel_attention(a, e, w, b).grad_fn).__name__ == '_ChannelAttentionBackward'
    with torch.no_grad():
        torch.testing.assert_close(channel_attention(a, e, w, b), channel_attention_reference(a, e, w, b))


def test_training_forward_keeps_only_ca_of_size_b_c_d():
    """The only [B, C, d] tensor kept for the backward is CA itself (autograd ops would keep the tanh gate too)."""
    a, e, w, b = _inputs(torch.float32)
    kept = []

    def pack(t):
        kept.append(t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = channel_attention(a, e, w, b)
    per_category = B * C * D * 4
    assert sum(n >= per_category for n in kept) == 1, kept
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        kept.clear()
        channel_attention_reference(a, e, w, b)
    assert sum(n >= per_category for n in kept) >= 2  # the probe can tell the difference
    assert out.shape == (B, C, D)


def test_selected_categories_equal_gathering_the_full_ca_with_gradients():
    """class_index [B, K] gives CA[b, class_index[b, k]] and the gradients of gathering it from the full CA."""
    a, e, w, b = _inputs()
    index = torch.tensor([[6, 0], [2, 2], [5, 1]])
    full = channel_attention_reference(a, e, w, b)
    gathered = torch.gather(full, 1, index.unsqueeze(-1).expand(-1, -1, D))
    selected = channel_attention(a, e, w, b, index)
    torch.testing.assert_close(selected, gathered)
    cot = torch.randn_like(selected)
    for got, want in zip(torch.autograd.grad(selected, (a, e, w, b), cot),
                         torch.autograd.grad(gathered, (a, e, w, b), cot)):
        torch.testing.assert_close(got, want)


def test_meta_tensors_take_the_training_path_without_autocast_errors():
    """On the meta device (timm's default-cfg test builds models there) the autocast check is False, not an error."""
    from srdl_timm.ops.common import autocast_enabled
    assert autocast_enabled(torch.device('meta')) is False
    a, e, w, b = (torch.empty(s, device='meta', requires_grad=True) for s in ((B, D), (C, D), (D, D), (D,)))
    assert channel_attention(a, e, w, b).shape == (B, C, D)
