"""Eqs. 5-6 of the CAR head with the implementation ``impl`` picks: :func:`spatial_attention_logits` (eq. 5's inner sum)
and :func:`attention_max_pool` (eq. 6 + GMP), features flattened as ``[B, P, d]``. ``'auto'`` is a fixed rule
(:func:`select_impl`), never a timing."""
import warnings
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from . import chunked, compiled, triton_launch
from .common import resolve_block_elements
from .reference import attention_max_pool_reference, spatial_attention_logits_reference

__all__ = ['spatial_attention_logits', 'attention_max_pool', 'attention_max_pool_indexed', 'ATTENTION_IMPLS',
           'select_impl', 'auto_decisions', 'reset', 'AUTO_MIN_ELEMENTS']

ATTENTION_IMPLS = ('auto', 'reference', 'chunked', 'triton', 'compiled')

#: ``'auto'`` on CPU runs the compiled kernels from this ``B*C*P*d`` product on (2**24: one 448 px image with 80
#: classes is 1.9x it); below it the chunked path takes milliseconds and a compile (seconds) cannot pay off.
AUTO_MIN_ELEMENTS = 1 << 24

_PICKS: Dict[str, str] = {}  # op -> what 'auto' last ran, for the benchmarks' notes
_WARNED: set = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message)


def auto_decisions() -> Dict[str, str]:
    """What ``'auto'`` last ran per op in this process (``{'logits': impl, 'pool': impl}``; a copy)."""
    return dict(_PICKS)


def reset() -> None:
    """Forget the compiled kernels, a recorded compile failure and ``'auto'``'s picks (tests)."""
    compiled.reset()
    _PICKS.clear()


def select_impl(impl: str, device: Optional[torch.device] = None, elements: int = 0,
                dtype: torch.dtype = torch.float32) -> str:
    """Resolve ``impl`` for inputs on ``device`` of ``dtype`` with a ``B*C*P*d`` product of ``elements``.

    ``'auto'``: the reference under TorchScript, tracing and compile; on CUDA Triton only after
    :func:`~.triton_launch.passed_check` on that device and dtype, else chunked; on CPU compiled from
    :data:`AUTO_MIN_ELEMENTS` on (when compiling works), else chunked. Other choices are returned as given.
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f'Unknown attention impl {impl!r}; expected one of {ATTENTION_IMPLS}')
    if impl not in ('auto', 'compiled'):
        return impl
    if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return 'reference'
    if impl == 'compiled':
        return impl
    device = device if device is not None else torch.device('cpu')
    if device.type == 'cuda':
        return 'triton' if triton_launch.passed_check(device, dtype) else 'chunked'
    if (device.type == 'cpu' and elements >= AUTO_MIN_ELEMENTS and compiled.available()
            and torch._C._len_torch_dispatch_stack() == 0):
        return 'compiled'
    return 'chunked'


class _Implementations(NamedTuple):
    """One op under each implementation; the arguments are the op's tensors and weights (``*args``)."""
    name: str
    elements: Callable[..., int]  # the B*C*P*d product of *args
    reference: Callable[..., Tensor]
    triton: Callable[..., Tensor]
    compiled: Callable[..., Tensor]
    chunked: Callable[..., Tensor]  # takes block_elements after *args


_LOGITS = _Implementations('logits', lambda s, e, w: s.numel() * e.shape[0], spatial_attention_logits_reference,
                           triton_launch.spatial_attention_logits_triton,
                           compiled.spatial_attention_logits_compiled, chunked.spatial_attention_logits_chunked)
_POOL = _Implementations('pool', lambda feat, sa, *_: feat.numel() * sa.shape[1], attention_max_pool_reference,
                         triton_launch.attention_max_pool_triton, compiled.attention_max_pool_compiled,
                         chunked.attention_max_pool_chunked)

# (out, first arg-max) without autograd, for a caller's own backward (:mod:`.category_head`); the reference's
# place is taken by the chunked path (bitwise the reference's values)
_POOL_INDEXED = _Implementations(
    'pool', _POOL.elements,
    lambda feat, sa, ca, a, b: chunked.attention_max_pool_indexed_chunked(
        feat, sa, ca, a, b, resolve_block_elements(None, feat.device)),
    triton_launch.attention_max_pool_indexed_triton, compiled.attention_max_pool_indexed_compiled,
    chunked.attention_max_pool_indexed_chunked)


def _run_eager(op: _Implementations, impl: str, block_elements: Optional[int], *args):
    """``op(*args)`` under :func:`select_impl`'s choice in eager mode. The compiled path's shape limit, and under
    ``'auto'`` a failed compile (turning the compiled path off in this process), fall back to the chunked path."""
    device = args[0].device
    chosen = select_impl(impl, device, op.elements(*args), args[0].dtype)
    if impl == 'auto' and chosen != 'reference':
        _PICKS[op.name] = chosen
    if chosen == 'reference':
        return op.reference(*args)
    if chosen == 'triton':
        return op.triton(*args)
    if chosen == 'compiled':
        try:
            return op.compiled(*args)
        except compiled.ShapeLimitError as error:
            _warn_once(f'{error}; new shapes of the CAR kernels use the chunked path from here on.')
        except torch.OutOfMemoryError:
            raise
        except Exception as error:  # no compiler, compile error: keep the model usable on the chunked path
            if impl != 'auto':
                raise
            message = str(error).strip()
            compiled.disable(f'{type(error).__name__}: {message.splitlines()[0] if message else ""}')
            _PICKS[op.name] = 'chunked'
    return op.chunked(*args, resolve_block_elements(block_elements, device))


@torch.fx.wrap
def spatial_attention_logits(
        s: Tensor, e: Tensor, w: Tensor, impl: str = 'auto', block_elements: Optional[int] = None,
) -> Tensor:
    """Eq. 5's inner sum ``sum_k w[k] tanh(s[b,p,k] e[c,k])`` -> ``[B, C, P]``.

    Args:
        s: ``[B, P, d]``; e: ``[C, d]``; w: ``[d]``.
        impl: one of :data:`ATTENTION_IMPLS`.
        block_elements: block size of the chunked path (None: the default).
    """
    if torch.jit.is_scripting():
        return spatial_attention_logits_reference(s, e, w)
    return _spatial_attention_logits_eager(s, e, w, impl, block_elements)


@torch.jit.unused
def _spatial_attention_logits_eager(
        s: Tensor, e: Tensor, w: Tensor, impl: str, block_elements: Optional[int]) -> Tensor:
    return _run_eager(_LOGITS, impl, block_elements, s, e, w)


@torch.fx.wrap
def attention_max_pool(
        feat: Tensor, sa: Optional[Tensor], ca: Optional[Tensor], sa_weight: float = 0.5, ca_weight: float = 0.5,
        impl: str = 'auto', block_elements: Optional[int] = None,
) -> Tensor:
    """Eq. 6 + GMP ``max_p F[b,p,k] (a SA[b,c,p] + b CA[b,c,k])`` -> ``[B, C, d]``.

    Args:
        feat: ``[B, P, d]``; sa: ``[B, C, P]`` or None; ca: ``[B, C, d]`` or None.
        sa_weight, ca_weight: eq. 6's weights.
        impl, block_elements: as :func:`spatial_attention_logits`.
    """
    if torch.jit.is_scripting():
        return attention_max_pool_reference(feat, sa, ca, sa_weight, ca_weight)
    return _attention_max_pool_eager(feat, sa, ca, sa_weight, ca_weight, impl, block_elements)


@torch.jit.unused
def _attention_max_pool_eager(
        feat: Tensor, sa: Optional[Tensor], ca: Optional[Tensor], sa_weight: float, ca_weight: float,
        impl: str, block_elements: Optional[int]) -> Tensor:
    if sa is None:  # O(B*C*d) closed form, no per-position product
        return attention_max_pool_reference(feat, sa, ca, sa_weight, ca_weight)
    return _run_eager(_POOL, impl, block_elements, feat, sa, ca, sa_weight, ca_weight)


@torch.jit.unused
def attention_max_pool_indexed(
        feat: Tensor, sa: Tensor, ca: Optional[Tensor], sa_weight: float = 0.5, ca_weight: float = 0.5,
        impl: str = 'auto', block_elements: Optional[int] = None,
) -> Tuple[Tensor, Tensor]:
    """Eq. 6 + GMP ``[B, C, d]`` (values as :func:`attention_max_pool`'s with the same ``impl``) and the first
    arg-max position over ``p`` ``[B, C, d]``, recording no autograd: for a fused backward that recomputes the
    pooled values from the index."""
    with torch.no_grad():
        return _run_eager(_POOL_INDEXED, impl, block_elements, feat, sa, ca, sa_weight, ca_weight)
