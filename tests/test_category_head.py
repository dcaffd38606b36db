"""Tests for srdl_timm/ops/category_head.py (eqs. 4, 6 and 2 fused for training): values and the gradients of every
input against the float64 reference kernels, for any chunking; bit-identical logits and float64 gradients of every
parameter of a model against the separate functions; and what the training step keeps for the backward (counted with
saved_tensors_hooks) and allocates in it (counted with a dispatch mode): no pooled ``f`` ``[B, C, d]``, no
``[B, C, d]`` gradient."""
import pytest
import timm
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import srdl_timm  # noqa: F401
from srdl_timm.ops import category_head
from srdl_timm.ops.category_head import CategoryHeadFunction, category_head_logits
from srdl_timm.ops.channel_attention import channel_attention_reference
from srdl_timm.ops.reference import attention_max_pool_reference

B, C, P, D = 2, 7, 4, 6  # P < d: SA [B, C, P] is smaller than [B, C, d]


def _inputs(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(B, D, generator=g, dtype=dtype)
    e = torch.randn(C, D, generator=g, dtype=dtype)
    wc = torch.randn(D, D, generator=g, dtype=dtype) / D ** 0.5
    bc = torch.randn(D, generator=g, dtype=dtype)
    feat = torch.randn(B, P, D, generator=g, dtype=dtype)
    sa = torch.rand(B, C, P, generator=g, dtype=dtype)
    w = torch.randn(C, D, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (a, e, wc, bc, feat, sa, w)]


def _reference(a, e, wc, bc, feat, sa, w):
    ca = channel_attention_reference(a, e, wc, bc)
    return (attention_max_pool_reference(feat, sa, ca, 0.5, 0.5) * w).sum(-1)


@pytest.mark.parametrize('save_ca', [True, False])  # CA kept, or recomputed in the backward
@pytest.mark.parametrize('chunk_elements', [1, 2 * B * D, 10 ** 6])  # 1 class, 2 (7 = 2+2+2+1), all at once
def test_fused_function_equals_the_float64_reference_with_all_gradients(chunk_elements, save_ca, monkeypatch):
    """Logits and the gradients of all seven inputs equal the reference kernels' in float64, any chunking, with CA
    kept for the backward or recomputed there."""
    monkeypatch.setattr(category_head, 'SAVE_CA_MAX_ELEMENTS', 10 ** 9 if save_ca else 0)
    inputs = _inputs()
    ref = _reference(*inputs)
    cot = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, inputs, cot)
    out = category_head_logits(*inputs, impl='chunked', chunk_elements=chunk_elements)
    grads = torch.autograd.grad(out, inputs, cot)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for name, got, want in zip(('a', 'e', 'W_c', 'b_c', 'F', 'SA', 'w'), grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize('save_ca', [True, False])
def test_fused_function_passes_gradcheck(save_ca, monkeypatch):
    """torch.autograd.gradcheck of the fused function (2 categories per chunk) in float64."""
    monkeypatch.setattr(category_head, 'SAVE_CA_MAX_ELEMENTS', 10 ** 9 if save_ca else 0)
    assert torch.autograd.gradcheck(lambda *t: category_head_logits(*t, impl='chunked', chunk_elements=2 * B * D),
                                    tuple(_inputs()))


def _model(impl='auto', dtype=torch.float32, num_classes=C):
    torch.manual_seed(0)
    model = timm.create_model('srdl_test_resnet', num_classes=num_classes, object_erasing=True,
                              attention_impl=impl).to(dtype).train()
    with torch.no_grad():  # a non-constant SA, so eq. 6's arg-max moves with it
        model.car.f_s.weight.normal_()
    return model


def _images(dtype=torch.float32):
    return torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(2), dtype=dtype)


def test_training_logits_are_bit_identical_to_the_separate_functions():
    """The fused training path gives the logits and erased logits of forward + classifier bit for bit."""
    model = _model()
    feat_map = model.forward_features(_images())
    fused = model.forward_erasing(feat_map, keep_features=False)
    separate = model.forward_erasing(feat_map)
    assert 'features' not in fused and 'features' in separate
    assert torch.equal(fused['logits'], separate['logits'])
    assert torch.equal(fused['erased_logits'], separate['erased_logits'])
    assert torch.equal(model.forward_head(feat_map), separate['logits'])


@pytest.mark.parametrize('save_ca', [True, False])
def test_every_parameter_gradient_equals_the_float64_reference(save_ca, monkeypatch):
    """One OE training step in float64: the gradient of every parameter with the fused path (chunked kernels; CA
    kept or recomputed) equals that of the reference kernels run as separate functions."""
    monkeypatch.setattr(category_head, 'SAVE_CA_MAX_ELEMENTS', 10 ** 9 if save_ca else 0)
    calls = []
    monkeypatch.setattr(category_head, 'category_head_logits',
                        lambda *a, **k: calls.append(1) or category_head_logits(*a, **k))
    grads = {}
    for impl in ('chunked', 'reference'):  # 'reference' never takes the fused path
        model = _model(impl, torch.float64)
        logits, erased = model(_images(torch.float64))
        assert len(calls) == (1 if impl == 'chunked' else 1)
        (logits.square().sum() + erased.sin().sum()).backward()
        grads[impl] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads['chunked'].keys() == grads['reference'].keys() and len(grads['chunked']) > 10
    for name, want in grads['reference'].items():
        torch.testing.assert_close(grads['chunked'][name], want, rtol=1e-10, atol=1e-12, msg=name)


def _saved_category_sized(model, feat_map, keep_features, num_classes):
    """Unique storages kept for the backward that are ``[B, C, d]`` (or bigger, same count of elements per category
    and channel): ``[(numel, dtype name)]``."""
    kept = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = (t.numel(), str(t.dtype))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.forward_erasing(feat_map, keep_features=keep_features)
    per_category = feat_map.shape[0] * num_classes * model.num_features
    return sorted(v for v in kept.values() if v[0] % per_category == 0)


@pytest.mark.parametrize('num_classes', [7, 40])
def test_training_step_keeps_the_arg_max_and_small_ca_only(num_classes, monkeypatch):
    """Of the [B, C, d]-sized tensors the fused OE step keeps eq. 6's arg-max (int16), and CA (float) only up to
    SAVE_CA_MAX_ELEMENTS: never the pooled f_c; the separate functions keep f_c and CA, two float [B, C, d] (the
    probe can tell)."""
    model = _model(num_classes=num_classes)
    feat_map = model.forward_features(_images()).detach().requires_grad_()
    size = feat_map.shape[0] * num_classes * model.num_features
    fused = _saved_category_sized(model, feat_map, False, num_classes)
    assert fused == sorted([(size, 'torch.float32'), (size, 'torch.int16')]), fused
    monkeypatch.setattr(category_head, 'SAVE_CA_MAX_ELEMENTS', size - 1)  # as at OpenImages scale
    assert _saved_category_sized(model, feat_map, False, num_classes) == [(size, 'torch.int16')]
    separate = _saved_category_sized(model, feat_map, True, num_classes)
    assert sum(dtype == 'torch.float32' for _, dtype in separate) == 2, separate


class _LargestAllocation(TorchDispatchMode):
    """Records the largest new storage (in elements) any op outputs (views of its inputs are not new)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat_in = list(args) + [a for x in args if isinstance(x, (tuple, list)) for a in x]
        inputs = {t.untyped_storage().data_ptr() for t in flat_in if isinstance(t, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.largest = max(self.largest, t.untyped_storage().nbytes() // t.element_size())
        return out


@pytest.mark.parametrize('save_ca', [True, False])
def test_backward_allocates_no_b_c_d_tensor(save_ca, monkeypatch):
    """With 2 categories per chunk, no op of the fused backward outputs a [B, C, d]-sized tensor."""
    monkeypatch.setattr(category_head, 'SAVE_CA_MAX_ELEMENTS', 10 ** 9 if save_ca else 0)
    inputs = _inputs(torch.float32)
    out = category_head_logits(*inputs, impl='chunked', chunk_elements=2 * B * D)
    with _LargestAllocation() as probe:
        torch.autograd.grad(out, inputs, torch.ones_like(out))
    assert 0 < probe.largest < B * C * D, probe.largest
    ref = _reference(*inputs)
    with _LargestAllocation() as probe:  # the probe can tell: the separate functions' backward does
        torch.autograd.grad(ref, inputs, torch.ones_like(ref))
    assert probe.largest >= B * C * D
    assert type(out.grad_fn).__name__ == CategoryHeadFunction.__name__ + 'Backward'
