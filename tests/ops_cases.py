"""What the tests of srdl_timm/ops share (not a test module): the paths each op is checked on, random inputs,
the relative error ``max|a - b| / max|b|``, a forward + gradient comparison against the float64 reference, and
fixtures (one intra-op thread; the compiled path's and 'auto''s process state cleared around a test). A test module
uses a fixture by importing it."""
import importlib.util
from typing import List, Optional

import pytest
import torch

from srdl_timm.ops import dispatch as D
from srdl_timm.ops import triton_launch as T

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
SKIP_TRITON = pytest.mark.skipif(
    TRITON_DEVICE is None, reason='needs CUDA, or TRITON_INTERPRET=1 (run by test_triton_kernels_in_interpreter)')

PATHS = [
    pytest.param(('chunked', 'cpu'), id='chunked-cpu'),
    pytest.param(('chunked', 'cuda'), id='chunked-cuda',
                 marks=pytest.mark.skipif(not HAS_CUDA, reason='CUDA only')),
    pytest.param(('triton', TRITON_DEVICE), id='triton', marks=SKIP_TRITON),
    pytest.param(('compiled', 'cpu'), id='compiled-cpu'),
]

# (B, h, w, d, C): non-square maps; h*w and d never a multiple of a block size (16 / 32 or the chunk sizes)
SHAPES = [
    pytest.param((2, 3, 5, 7, 4), id='B2-3x5-d7-C4'),
    pytest.param((1, 1, 1, 3, 1), id='B1-1x1-d3-C1'),
    pytest.param((2, 2, 9, 5, 1), id='B2-2x9-d5-C1'),
    pytest.param((1, 17, 1, 33, 3), id='B1-17x1-d33-C3'),
]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread (on an oversubscribed machine a second one costs ms per op)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def fresh_compiled():
    """The compiled path's process state (kernels, 'auto' decisions, a recorded failure) cleared around a test."""
    D.reset()
    yield
    D.reset()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max|a - b| / max|b|`` in float64."""
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def logits_inputs(b: int, p: int, d: int, c: int, dtype: torch.dtype, device: str, seed: int = 0):
    """Random ``s [B, P, d], e [C, d], w [d]`` of eq. 5's inner sum, requiring grad."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, p, d, generator=g, dtype=torch.float64)
    e = torch.randn(c, d, generator=g, dtype=torch.float64)
    w = torch.randn(d, generator=g, dtype=torch.float64) / d ** 0.5
    return [t.to(device=device, dtype=dtype).requires_grad_() for t in (s, e, w)]


def pool_inputs(b: int, p: int, d: int, c: int, dtype: torch.dtype, device: str, seed: int = 0):
    """Random ``F [B, P, d], SA [B, C, P], CA [B, C, d]`` of eq. 6 + GMP, requiring grad."""
    g = torch.Generator().manual_seed(seed)
    feat = torch.randn(b, p, d, generator=g, dtype=torch.float64)
    sa = torch.rand(b, c, p, generator=g, dtype=torch.float64)
    ca = torch.rand(b, c, d, generator=g, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype).requires_grad_() for t in (feat, sa, ca)]


def logits_op(impl: str, block_elements: Optional[int] = None):
    """The public eq. 5 op with ``impl`` (and ``block_elements``) fixed."""
    return lambda s, e, w: D.spatial_attention_logits(s, e, w, impl=impl, block_elements=block_elements)


def pool_op(impl: str, sa_weight: float, ca_weight: float, block_elements: Optional[int] = None):
    """The public eq. 6 + GMP op with ``impl``, the weights (and ``block_elements``) fixed."""
    return lambda f, sa, ca: D.attention_max_pool(f, sa, ca, sa_weight, ca_weight, impl=impl,
                                                  block_elements=block_elements)


def compare(fn, ref, inputs: List[torch.Tensor], tol: float) -> None:
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
