"""Tests for srdl_timm/ops/triton_launch.py and triton_kernels.py that need no GPU: every kernel variant compiles
ahead of time for sm_90, and 'triton' on CPU tensors without the interpreter is a clear error. (The kernels'
values and gradients against the reference, on CUDA or in Triton's interpreter: tests/test_ops_dispatch.py.)"""
import pytest
import torch

from ops_cases import HAS_TRITON, INTERPRETING, logits_inputs, one_thread  # noqa: F401  (one_thread: fixture)
from srdl_timm.ops import dispatch as D
from srdl_timm.ops import triton_launch as T


def test_cpu_kernel_request_without_interpreter_raises():
    """Asking for 'triton' on CPU tensors outside interpreter mode is a clear error, not a silent fallback."""
    if INTERPRETING or not HAS_TRITON:
        pytest.skip('only meaningful with Triton installed and the interpreter off')
    s, e, w = logits_inputs(1, 4, 3, 2, torch.float32, 'cpu')
    with pytest.raises(RuntimeError, match='TRITON_INTERPRET'):
        D.spatial_attention_logits(s, e, w, impl='triton')


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
