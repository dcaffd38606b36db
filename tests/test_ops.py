"""Tests for srdl_timm/ops (eq. 5's inner sum and eq. 6 + GMP): every fast path against the reference.

Paths: ``chunked`` (CPU here; any device) and ``triton`` (CUDA when present; otherwise the same tests run on CPU
through Triton's interpreter in a subprocess started with ``TRITON_INTERPRET=1``, see
``test_triton_kernels_in_interpreter``). Relative error of a result ``a`` against the reference ``b`` is
``max|a - b| / max|b|`` over the whole tensor.
"""
import os
import importlib.util
import subprocess
import sys
from typing import List, Optional

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from srdl_timm.ops import category_attention as K
from srdl_timm.ops import triton_category_attention as T

HAS_TRITON = importlib.util.find_spec('triton') is not None
HAS_CUDA = torch.cuda.is_available()
INTERPRETING = T.interpreting()


def _triton_device() -> Optional[str]:
    if not HAS_TRITON:
        return None
    if HAS_CUDA and T.is_available(torch.device('cuda')):
        return 'cuda'
    if INTERPRETING:
        return 'cpu'
    return None


TRITON_DEVICE = _triton_device()
_SKIP_TRITON = pytest.mark.skipif(
    TRITON_DEVICE is None, reason='needs CUDA, or TRITON_INTERPRET=1 (run by test_triton_kernels_in_interpreter)')

PATHS = [
    pytest.param(('chunked', 'cpu'), id='chunked-cpu'),
    pytest.param(('chunked', 'cuda'), id='chunked-cuda',
                 marks=pytest.mark.skipif(not HAS_CUDA, reason='CUDA only')),
    pytest.param(('triton', TRITON_DEVICE), id='triton', marks=_SKIP_TRITON),
]

# (B, h, w, d, C): non-square maps; h*w and d never a multiple of a block size (16 / 32 or the chunk sizes)
SHAPES = [
    pytest.param((2, 3, 5, 7, 4), id='B2-3x5-d7-C4'),
    pytest.param((1, 1, 1, 3, 1), id='B1-1x1-d3-C1'),
    pytest.param((2, 2, 9, 5, 1), id='B2-2x9-d5-C1'),
    pytest.param((1, 17, 1, 33, 3), id='B1-17x1-d33-C3'),
]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread (on an oversubscribed machine a second one costs ms per op)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max|a - b| / max|b|`` in float64."""
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def _logits_inputs(b: int, p: int, d: int, c: int, dtype: torch.dtype, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, p, d, generator=g, dtype=torch.float64)
    e = torch.randn(c, d, generator=g, dtype=torch.float64)
    w = torch.randn(d, generator=g, dtype=torch.float64) / d ** 0.5
    return [t.to(device=device, dtype=dtype).requires_grad_() for t in (s, e, w)]


def _pool_inputs(b: int, p: int, d: int, c: int, dtype: torch.dtype, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feat = torch.randn(b, p, d, generator=g, dtype=torch.float64)
    sa = torch.rand(b, c, p, generator=g, dtype=torch.float64)
    ca = torch.rand(b, c, d, generator=g, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype).requires_grad_() for t in (feat, sa, ca)]


def _logits(impl: str, block_elements: Optional[int] = None):
    return lambda s, e, w: K.spatial_attention_logits(s, e, w, impl=impl, block_elements=block_elements)


def _pool(impl: str, sa_weight: float, ca_weight: float, block_elements: Optional[int] = None):
    return lambda f, sa, ca: K.attention_max_pool(f, sa, ca, sa_weight, ca_weight, impl=impl,
                                                  block_elements=block_elements)


def _compare(fn, ref, inputs: List[torch.Tensor], tol: float) -> None:
    """Forward and all input gradients (for one random output cotangent) of ``fn`` within ``tol`` of ``ref``."""
    out = fn(*inputs)
    expected = ref(*[t.detach().double().requires_grad_() for t in inputs])
    assert out.dtype == inputs[0].dtype and out.shape == expected.shape
    assert rel_err(out, expected) <= tol, ('forward', rel_err(out, expected))
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = torch.autograd.grad(out, [t for t in inputs if t is not None], cot.to(out))
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    ref_grads = torch.autograd.grad(ref(*ref_inputs), ref_inputs, cot)
    for i, (a, b) in enumerate(zip(grads, ref_grads)):
        assert a.dtype == inputs[i].dtype
        assert rel_err(a, b) <= tol, (f'grad {i}', rel_err(a, b))


# --------------------------------------------------------------------------------------------------------------
# float64 gradcheck
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize('shape', SHAPES)
def test_logits_gradcheck_float64(path, shape):
    """Eq. 5's inner sum in float64: forward and gradients w.r.t. s, e and w equal the reference to relative
    error 1e-12, and the gradients equal finite differences (gradcheck)."""
    impl, device = path
    b, h, w_, d, c = shape
    inputs = _logits_inputs(b, h * w_, d, c, torch.float64, device)
    fn = _logits(impl)
    _compare(fn, K.spatial_attention_logits_reference, inputs, 1e-12)
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=(impl == 'triton' and device == 'cpu'))


@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('use_ca', [True, False], ids=['sa+ca', 'sa-only'])
def test_pool_gradcheck_float64(path, shape, use_ca):
    """Eq. 6 + GMP (with and without CA) in float64: the forward equals the reference exactly, gradients equal
    the reference's to relative error 1e-12 and finite differences (gradcheck)."""
    impl, device = path
    b, h, w_, d, c = shape
    feat, sa, ca = _pool_inputs(b, h * w_, d, c, torch.float64, device)
    weights = (0.5, 0.5) if use_ca else (1.0, 1.0)
    fn = _pool(impl, *weights)
    ref = lambda f, s, a: K.attention_max_pool_reference(f, s, a, *weights)  # noqa: E731
    if use_ca:
        assert torch.equal(fn(feat, sa, ca), ref(feat, sa, ca))
        _compare(fn, ref, [feat, sa, ca], 1e-12)
        assert torch.autograd.gradcheck(fn, (feat, sa, ca), fast_mode=(impl == 'triton' and device == 'cpu'))
    else:
        assert torch.equal(fn(feat, sa, None), ref(feat, sa, None))
        assert torch.autograd.gradcheck(lambda f, s: fn(f, s, None), (feat, sa),
                                        fast_mode=(impl == 'triton' and device == 'cpu'))


@pytest.mark.parametrize('block_elements', [1, 7, 12, 40, 64])
def test_chunked_block_splits_gradcheck(block_elements):
    """The chunked path is exact whatever the block: one position or channel at a time (1), splits of
    positions/channels that do not divide them (7, 12), one whole category (40) or several per block (64);
    float64 forward against the reference and gradcheck of both ops."""
    b, p, d, c = 2, 6, 5, 3  # one category is 30 elements: 1, 7 split rows, 40 and 64 take 1 and 2 categories
    s, e, w = _logits_inputs(b, p, d, c, torch.float64, 'cpu')
    fn = _logits('chunked', block_elements)
    torch.testing.assert_close(fn(s, e, w), K.spatial_attention_logits_reference(s, e, w), rtol=1e-13, atol=1e-13)
    assert torch.autograd.gradcheck(fn, (s, e, w))
    feat, sa, ca = _pool_inputs(b, p, d, c, torch.float64, 'cpu')
    pool = _pool('chunked', 0.5, 0.5, block_elements)
    assert torch.equal(pool(feat, sa, ca), K.attention_max_pool_reference(feat, sa, ca))
    assert torch.autograd.gradcheck(pool, (feat, sa, ca))


# --------------------------------------------------------------------------------------------------------------
# fp32 / bf16 against the reference (C = 1 and C = 1000 included)
# --------------------------------------------------------------------------------------------------------------

FP32_SHAPES = SHAPES + [pytest.param((2, 3, 5, 8, 1000), id='B2-3x5-d8-C1000')]


@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize('shape', FP32_SHAPES)
def test_fp32_matches_reference(path, shape):
    """fp32: forward and gradients of both ops within relative error 1e-5 of the float64 reference."""
    impl, device = path
    b, h, w_, d, c = shape
    _compare(_logits(impl), K.spatial_attention_logits_reference,
             _logits_inputs(b, h * w_, d, c, torch.float32, device), 1e-5)
    _compare(_pool(impl, 0.5, 0.5), K.attention_max_pool_reference,
             _pool_inputs(b, h * w_, d, c, torch.float32, device), 1e-5)


@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize('shape', [SHAPES[0], SHAPES[2]])
def test_bf16_matches_reference(path, shape):
    """bf16 inputs: forward and gradients within relative error 1e-2 of the float64 reference evaluated on the
    same (bf16-rounded) inputs; results keep dtype bf16."""
    impl, device = path
    b, h, w_, d, c = shape
    _compare(_logits(impl), K.spatial_attention_logits_reference,
             _logits_inputs(b, h * w_, d, c, torch.bfloat16, device), 1e-2)
    _compare(_pool(impl, 0.5, 0.5), K.attention_max_pool_reference,
             _pool_inputs(b, h * w_, d, c, torch.bfloat16, device), 1e-2)


def test_pool_backward_in_category_chunks(monkeypatch):
    """The max-pool backward gives the same gradients (float64, to 1e-12) when it walks over the categories
    one at a time as in one chunk, for both saved-index dtypes it meets (int16 chunked, int32 Triton)."""
    feat, sa, ca = (t.detach() for t in _pool_inputs(2, 7, 5, 6, torch.float64, 'cpu'))
    out, index = K._pool_forward(feat, sa, ca, 0.5, 0.5, 10, True)
    assert index.dtype == torch.int16
    cot = torch.randn(out.shape, dtype=torch.float64)
    whole = K.attention_max_pool_backward(cot, feat, sa, ca, index, 0.5, 0.5, (True, True, True))
    monkeypatch.setattr(K, "BACKWARD_CHUNK_ELEMENTS", 1)
    for idx in (index, index.int()):
        chunked = K.attention_max_pool_backward(cot, feat, sa, ca, idx, 0.5, 0.5, (True, True, True))
        for a, b in zip(chunked, whole):
            assert rel_err(a, b) <= 1e-12
    ref = [t.clone().requires_grad_() for t in (feat, sa, ca)]
    expected = torch.autograd.grad(K.attention_max_pool_reference(*ref), ref, cot)
    for a, b in zip(whole, expected):
        assert rel_err(a, b) <= 1e-12


@pytest.mark.parametrize('path', PATHS)
def test_max_ties_go_to_first_position(path):
    """When several positions share the maximum (a constant map), the pooled gradient goes to the first one."""
    impl, device = path
    p = 40  # more than one block of positions in every path, so ties also cross blocks
    feat = torch.ones(1, p, 3, dtype=torch.float64, device=device)
    feat[0, :3] = 0.5  # the maximum is first reached at position 3
    feat.requires_grad_()
    sa = torch.full((1, 2, p), 0.25, dtype=torch.float64, device=device, requires_grad=True)
    ca = torch.full((1, 2, 3), 0.75, dtype=torch.float64, device=device, requires_grad=True)
    out = K.attention_max_pool(feat, sa, ca, impl=impl)
    out.sum().backward()
    expected = torch.zeros(1, p, 3, dtype=torch.float64)
    expected[0, 3] = 2 * 0.5  # two categories, each weight 0.5 * 0.25 + 0.5 * 0.75
    torch.testing.assert_close(feat.grad.cpu(), expected)
    grad_sa = sa.grad.cpu()
    assert grad_sa[0, :, 4:].abs().sum() == 0 and grad_sa[0, :, :3].abs().sum() == 0
    assert (grad_sa[0, :, 3] == 0.5 * 3).all()


@pytest.mark.parametrize('path', PATHS)
def test_mixed_dtypes_as_under_autocast(path):
    """Autocast hands the ops bf16 features with fp32 weights/attention (f_s.weight, SA after the fp32 bias):
    results take the reference's promoted dtype, gradients their input's dtype, values within 1e-2."""
    impl, device = path
    s, e, w = _logits_inputs(2, 10, 6, 3, torch.bfloat16, device)
    w = w.detach().float().requires_grad_()
    out = K.spatial_attention_logits(s, e, w, impl=impl)
    assert out.dtype == torch.bfloat16
    expected = K.spatial_attention_logits_reference(s.detach().double(), e.detach().double(), w.detach().double())
    assert rel_err(out, expected) <= 1e-2
    grads = torch.autograd.grad(out.float().sum(), (s, e, w))
    assert [g.dtype for g in grads] == [torch.bfloat16, torch.bfloat16, torch.float32]
    feat, sa, ca = _pool_inputs(2, 10, 6, 3, torch.bfloat16, device)
    sa = sa.detach().float().requires_grad_()
    pooled = K.attention_max_pool(feat, sa, ca, impl=impl)
    reference = K.attention_max_pool_reference(feat, sa, ca)
    assert pooled.dtype == reference.dtype == torch.float32
    assert rel_err(pooled, reference) <= 1e-2
    grads = torch.autograd.grad(pooled.sum(), (feat, sa, ca))
    ref_grads = torch.autograd.grad(reference.sum(), (feat, sa, ca))
    for g, r in zip(grads, ref_grads):
        assert g.dtype == r.dtype and rel_err(g, r) <= 1e-2


@pytest.mark.parametrize('path', PATHS)
def test_inference_mode_matches_grad_mode(path):
    """Under no_grad / inference_mode (no arg-max, nothing saved) both ops give the same values as with grad."""
    impl, device = path
    s, e, w = _logits_inputs(2, 10, 6, 3, torch.float32, device)
    feat, sa, ca = _pool_inputs(2, 10, 6, 3, torch.float32, device)
    with_grad = (_logits(impl)(s, e, w), _pool(impl, 0.5, 0.5)(feat, sa, ca))
    with torch.inference_mode():
        without = (_logits(impl)(s, e, w), _pool(impl, 0.5, 0.5)(feat, sa, ca))
    for a, b in zip(with_grad, without):
        assert not b.requires_grad
        torch.testing.assert_close(a.detach(), b, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------------------
# selection, memory
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings('ignore:`torch.jit.trace` is deprecated')
def test_auto_selection_on_cpu_and_under_tracing():
    """'auto' is chunked for eager CPU tensors and the reference when tracing (export); unknown names raise."""
    assert K.select_impl('auto', torch.device('cpu')) == 'chunked'
    assert K.select_impl('auto') == 'chunked'
    for impl in ('reference', 'chunked', 'triton'):
        assert K.select_impl(impl, torch.device('cpu')) == impl
    with pytest.raises(ValueError, match='impl'):
        K.select_impl('fused')
    seen = []

    def traced(s, e, w):
        seen.append(K.select_impl('auto', s.device))
        return K.spatial_attention_logits(s, e, w)

    s, e, w = (t.detach() for t in _logits_inputs(1, 4, 3, 2, torch.float32, 'cpu'))
    module = torch.jit.trace(traced, (s, e, w), check_trace=False)
    assert seen == ['reference']
    torch.testing.assert_close(module(s, e, w), K.spatial_attention_logits_reference(s, e, w))


@pytest.mark.skipif(not HAS_CUDA, reason='CUDA only')
def test_auto_selection_on_cuda():
    """On CUDA 'auto' picks Triton when it is usable there, else the chunked path."""
    expected = 'triton' if T.is_available(torch.device('cuda')) else 'chunked'
    assert K.select_impl('auto', torch.device('cuda')) == expected


def test_cpu_kernel_request_without_interpreter_raises():
    """Asking for 'triton' on CPU tensors outside interpreter mode is a clear error, not a silent fallback."""
    if INTERPRETING or not HAS_TRITON:
        pytest.skip('only meaningful with Triton installed and the interpreter off')
    s, e, w = _logits_inputs(1, 4, 3, 2, torch.float32, 'cpu')
    with pytest.raises(RuntimeError, match='TRITON_INTERPRET'):
        K.spatial_attention_logits(s, e, w, impl='triton')


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
    s, e, w = _logits_inputs(b, p, d, c, torch.float32, 'cpu')
    feat, sa, ca = _pool_inputs(b, p, d, c, torch.float32, 'cpu')
    with _LargestTensor() as probe:
        out = K.spatial_attention_logits(s, e, w, impl='chunked', block_elements=block)
        pooled = K.attention_max_pool(feat, sa, ca, impl='chunked', block_elements=block)
        (out.sum() + pooled.sum()).backward()
    linear = max(b * c * p, b * c * d, block)
    assert probe.largest <= linear, (probe.largest, linear)
    assert probe.largest * 10 < b * c * p * d


def test_block_plan_respects_budget():
    """_plan's blocks never exceed the element budget (beyond one row) and cover the ranges evenly."""
    for classes, rows, cols, budget in [(80, 196, 2048, 1 << 18), (1000, 49, 2048, 1 << 18), (3, 5, 7, 1),
                                        (1, 1, 1, 10), (7, 13, 3, 100)]:
        step_c, step_r = K._plan(classes, rows, cols, budget)
        assert 1 <= step_c <= classes and 1 <= step_r <= rows
        assert step_c * step_r * cols <= max(budget, cols)
        assert step_r == rows or step_c == 1


def _nvidia_backend() -> bool:
    if not HAS_TRITON or INTERPRETING:
        return False
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
        import triton.backends.nvidia  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _nvidia_backend(), reason='needs Triton with its NVIDIA backend (interpreter off)')
def test_fused_kernels_compile_for_sm90():
    """Every kernel variant the launcher uses (fp32 exact tanh, bf16 hardware tanh, pool with/without CA and
    arg-max) compiles ahead of time to an sm_90 cubin -- no GPU needed; catches what the interpreter cannot
    (inline PTX, layouts, types)."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    kernels = T.load_kernels()
    target = GPUTarget('cuda', 90, 32)
    ints = {'P': 'i32', 'C': 'i32', 'D': 'i32'}
    for dt, fast in (('*fp32', False), ('*bf16', True)):
        tiles = dict(BLOCK_C=T.BLOCK_C, BLOCK_P=T.BLOCK_P)
        variants = [
            (kernels.logits_fwd, dict(s_ptr=dt, e_ptr=dt, w_ptr=dt, out_ptr=dt, **ints),
             dict(ACC=tl.float32, FAST=fast, BLOCK_K=T.BLOCK_K, **tiles)),
            (kernels.logits_bwd_s, dict(s_ptr=dt, e_ptr=dt, w_ptr=dt, g_ptr=dt, gs_ptr=dt, gw_ptr='*fp32', **ints,
                                        NUM_PB='i32'),
             dict(ACC=tl.float32, FAST=fast, NEED_S=True, NEED_W=True, BLOCK_K=T.BLOCK_K_BACKWARD, **tiles)),
            (kernels.logits_bwd_e, dict(s_ptr=dt, e_ptr=dt, w_ptr=dt, g_ptr=dt, ge_ptr='*fp32', **ints),
             dict(ACC=tl.float32, FAST=fast, BLOCK_K=T.BLOCK_K_BACKWARD, **tiles)),
        ]
        for has_ca, index in ((True, True), (False, False)):
            variants.append((kernels.pool_fwd, dict(f_ptr=dt, sa_ptr='*fp32', ca_ptr=dt, out_ptr='*fp32',
                                                    idx_ptr='*i32', **ints, sa_weight='fp32', ca_weight='fp32'),
                             dict(ACC=tl.float32, HAS_CA=has_ca, STORE_INDEX=index, BLOCK_K=T.BLOCK_K, **tiles)))
        for fn, signature, constexprs in variants:
            compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs), target=target,
                                      options={'num_warps': 4})
            assert compiled.asm.get('cubin'), fn
            assert ('tanh.approx.f32' in compiled.asm['ptx']) == (fast and fn is not kernels.pool_fwd)


# --------------------------------------------------------------------------------------------------------------
# the Triton kernels on a machine without CUDA: the tests above, in the interpreter
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.skipif(not HAS_TRITON, reason='triton not installed')
@pytest.mark.skipif(HAS_CUDA or INTERPRETING, reason='the Triton tests run directly here')
def test_triton_kernels_in_interpreter():
    """Every 'triton' test of this file passes on CPU under TRITON_INTERPRET=1 (the kernels' logic, fwd and
    grads, float64 / fp32 / bf16; the interpreter rounds bf16 by truncation, within the 1e-2 bound)."""
    env = dict(os.environ, TRITON_INTERPRET='1', OMP_NUM_THREADS='1')
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-k', 'triton and not interpreter',
         os.path.abspath(__file__)],
        env=env, capture_output=True, text=True, timeout=300)
    tail = result.stdout[-3000:] + result.stderr[-2000:]
    assert result.returncode == 0, tail
    assert ' passed' in result.stdout and 'skipped' not in result.stdout, tail
