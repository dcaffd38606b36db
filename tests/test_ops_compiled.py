"""Tests for srdl_timm/ops/compiled.py: the compiled CPU path's fp32 tanh, its memory (no ``B x C x P x d``
allocation), the CAR layer on it against the reference layer, and kernels compiled off the caller's thread being
reused on it. (The compiled path against the reference at many shapes and dtypes, and 'auto''s measured choice:
tests/test_ops_dispatch.py.)"""
import pytest
import torch

from ops_cases import fresh_compiled, logits_inputs, one_thread, pool_inputs, rel_err  # noqa: F401  (fixtures)
from srdl_timm.ops import compiled as CC
from srdl_timm.ops import dispatch as D
from srdl_timm.ops import reference as R


def test_compiled_fp32_tanh_accuracy():
    """The fp32 rational tanh of the compiled path is within 4e-7 (absolute) of float64 tanh on [-20, 20],
    odd, exactly +-1 beyond the clamp and at +-inf, and propagates NaN."""
    x = torch.linspace(-20, 20, 4_000_001, dtype=torch.float64)
    approx = CC._tanh_fp32(x.float()).double()
    assert (approx - torch.tanh(x)).abs().max().item() <= 4e-7
    assert torch.equal(CC._tanh_fp32(-x.float()), -CC._tanh_fp32(x.float()))
    special = CC._tanh_fp32(torch.tensor([float('inf'), -float('inf'), 9.0, -9.0, float('nan')]))
    assert special[:4].tolist() == [1.0, -1.0, 1.0, -1.0] and special[4].isnan()


def test_compiled_memory_has_no_b_c_p_d_term():
    """Forward + backward of both compiled ops at C = 1000 allocate nothing near B*C*P*d values: the largest
    single allocation the profiler records is O(B*C*(P + d)) (at most the int64 copy of the [B, C, d] arg-max
    the backward gathers with), less than a tenth of the product's bytes."""
    b, p, d, c = 2, 24, 128, 1000
    s, e, w = logits_inputs(b, p, d, c, torch.float32, 'cpu')
    feat, sa, ca = pool_inputs(b, p, d, c, torch.float32, 'cpu')
    D.spatial_attention_logits(s, e, w, impl='compiled').sum().backward()  # compile outside the profiled region
    D.attention_max_pool(feat, sa, ca, impl='compiled').sum().backward()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        out = D.spatial_attention_logits(s, e, w, impl='compiled')
        pooled = D.attention_max_pool(feat, sa, ca, impl='compiled')
        (out.sum() + pooled.sum()).backward()
    largest = max(ev.cpu_memory_usage for ev in prof.events() if not ev.cpu_children)  # bytes, leaf ops
    assert 0 < largest <= 8 * max(b * c * p, b * c * d), largest
    assert largest * 10 < 4 * b * c * p * d


@pytest.mark.parametrize('use_ca', [True, False], ids=['sa+ca', 'sa-only'])
def test_car_layer_with_compiled_kernels_matches_reference(use_ca):
    """The CAR layer (eqs. 4-6, layers/car.py) with attention_impl='compiled' gives the reference layer's
    category features, attentions and parameter gradients (float64, 1e-12; odd h*w = 35), and still scripts
    (TorchScript takes the reference kernels)."""
    from srdl_timm.layers.car import CategoryAttention
    torch.manual_seed(0)
    layers = {impl: CategoryAttention(16, 8, use_ca=use_ca, attention_impl=impl).double()
              for impl in ('reference', 'compiled')}
    layers['compiled'].load_state_dict(layers['reference'].state_dict())
    feat = torch.randn(2, 35, 16, dtype=torch.float64).relu_()
    nodes = torch.randn(5, 8, dtype=torch.float64)
    results = {}
    for impl, layer in layers.items():
        f, sa, ca = layer(feat, nodes, 5)
        grads = torch.autograd.grad(f.sum() + sa.sum(), list(layer.parameters()), allow_unused=True)
        results[impl] = [f, sa] + ([ca] if use_ca else []) + [g for g in grads if g is not None]
    assert len(results['compiled']) == len(results['reference'])
    for a, b in zip(results['compiled'], results['reference']):
        assert rel_err(a, b) <= 1e-12
    scripted = torch.jit.script(layers['compiled'])
    torch.testing.assert_close(scripted(feat, nodes, 5)[0], results['reference'][0])


@pytest.mark.parametrize('mode', ['grad', 'no_grad', 'inference'])
def test_kernels_compiled_off_the_main_thread_are_not_recompiled_on_it(fresh_compiled, mode):
    """A kernel's first call compiles it in a one-time thread; the caller's next calls (same shapes, same mode)
    reuse it -- Dynamo compiles no new graph -- and its output equals the reference's."""
    from torch._dynamo.utils import counters
    s, e, w = logits_inputs(1, 6, 5, 3, torch.float32, 'cpu')
    context = {'grad': torch.enable_grad, 'no_grad': torch.no_grad, 'inference': torch.inference_mode}[mode]

    def step():
        with context():
            out = CC.spatial_attention_logits_compiled(s, e, w)
            if mode == 'grad':
                out.sum().backward()
        return out

    step()
    frames = counters['stats']['unique_graphs']
    assert frames > 0 and len(CC._COMPILED) == (2 if mode == 'grad' else 1)
    out = step()
    assert counters['stats']['unique_graphs'] == frames, 'a kernel was compiled again on the caller thread'
    torch.testing.assert_close(out.detach(), R.spatial_attention_logits_reference(s, e, w).detach())
