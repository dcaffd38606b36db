"""Triton kernels of eqs. 5-6, launched by :mod:`srdl_timm.ops.triton_launch` (imported lazily). They take contiguous
tensors and accumulate in ``ACC``; ``FAST`` selects ``tanh.approx.f32`` (CUDA, 16-bit only)."""
import triton
import triton.language as tl


@triton.jit
def _tanh(x, FAST: tl.constexpr):
    if FAST:
        # NVIDIA's tanh.approx.f32 (one MUFU op; relative error ~2^-11): used for 16-bit inputs only, where it is
        # well inside the inputs' own rounding (2^-8 for bf16)
        t = tl.inline_asm_elementwise('tanh.approx.f32 $0, $1;', '=r,r', [x], dtype=tl.float32, is_pure=True,
                                      pack=1)
    else:
        # tanh(|x|) = (1 - exp(-2|x|)) / (1 + exp(-2|x|)) with the sign put back: no overflow for any x,
        # absolute error of a few ulp(1) of the compute type
        a = tl.exp(-2.0 * tl.abs(x))
        t = (1.0 - a) / (1.0 + a)
        t = tl.where(x < 0, -t, t)
    return t


# z[b,c,p] = sum_k w[k] tanh(s[b,p,k] e[c,k]); program = (P block, C block, b), loop over k
@triton.jit
def logits_fwd(
        s_ptr, e_ptr, w_ptr, out_ptr, P, C, D,
        ACC: tl.constexpr, FAST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
        BLOCK_K: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < P
    mask_c = offs_c < C
    s_base = s_ptr + b * P * D
    acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=ACC)
    for k0 in range(0, D, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < D
        s = tl.load(s_base + offs_p[:, None] * D + offs_k[None, :],
                    mask=mask_p[:, None] & mask_k[None, :], other=0.0).to(ACC)
        e = tl.load(e_ptr + offs_c[:, None] * D + offs_k[None, :],
                    mask=mask_c[:, None] & mask_k[None, :], other=0.0).to(ACC)
        w = tl.load(w_ptr + offs_k, mask=mask_k, other=0.0).to(ACC)
        t = _tanh(e[:, None, :] * s[None, :, :], FAST)  # [BLOCK_C, BLOCK_P, BLOCK_K]
        acc += tl.sum(t * w[None, None, :], axis=2)
    out = out_ptr + b * C * P + offs_c[:, None] * P + offs_p[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask_c[:, None] & mask_p[None, :])


# ds[b,p,k] = w[k] sum_c g[b,c,p] (1 - t^2) e[c,k] and per-program partial sums of dw[k] = sum g t;
# program = (P block, k block, b), loop over C
@triton.jit
def logits_bwd_s(
        s_ptr, e_ptr, w_ptr, g_ptr, gs_ptr, gw_ptr, P, C, D, NUM_PB,
        ACC: tl.constexpr, FAST: tl.constexpr, NEED_S: tl.constexpr, NEED_W: tl.constexpr,
        BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_k = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_p = offs_p < P
    mask_k = offs_k < D
    s = tl.load(s_ptr + b * P * D + offs_p[:, None] * D + offs_k[None, :],
                mask=mask_p[:, None] & mask_k[None, :], other=0.0).to(ACC)
    acc_s = tl.zeros((BLOCK_P, BLOCK_K), dtype=ACC)
    acc_w = tl.zeros((BLOCK_K,), dtype=ACC)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        e = tl.load(e_ptr + offs_c[:, None] * D + offs_k[None, :],
                    mask=mask_c[:, None] & mask_k[None, :], other=0.0).to(ACC)
        g = tl.load(g_ptr + b * C * P + offs_c[:, None] * P + offs_p[None, :],
                    mask=mask_c[:, None] & mask_p[None, :], other=0.0).to(ACC)
        t = _tanh(e[:, None, :] * s[None, :, :], FAST)  # [BLOCK_C, BLOCK_P, BLOCK_K]
        gt = g[:, :, None]
        if NEED_S:
            acc_s += tl.sum(gt * (1.0 - t * t) * e[:, None, :], axis=0)
        if NEED_W:
            acc_w += tl.sum(tl.sum(gt * t, axis=0), axis=0)
    if NEED_S:
        w = tl.load(w_ptr + offs_k, mask=mask_k, other=0.0).to(ACC)
        gs = gs_ptr + b * P * D + offs_p[:, None] * D + offs_k[None, :]
        tl.store(gs, (acc_s * w[None, :]).to(gs_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_k[None, :])
    if NEED_W:
        gw = gw_ptr + (b * NUM_PB + pid_p) * D + offs_k
        tl.store(gw, acc_w.to(gw_ptr.dtype.element_ty), mask=mask_k)


# per-b partial de[b,c,k] = w[k] sum_p g[b,c,p] (1 - t^2) s[b,p,k]; program = (C block, k block, b), loop over P.
# The caller sums the partials (deterministic, no atomics).
@triton.jit
def logits_bwd_e(
        s_ptr, e_ptr, w_ptr, g_ptr, ge_ptr, P, C, D,
        ACC: tl.constexpr, FAST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
        BLOCK_K: tl.constexpr,
):
    pid_c = tl.program_id(0)
    pid_k = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_c = offs_c < C
    mask_k = offs_k < D
    e = tl.load(e_ptr + offs_c[:, None] * D + offs_k[None, :],
                mask=mask_c[:, None] & mask_k[None, :], other=0.0).to(ACC)
    s_base = s_ptr + b * P * D
    acc = tl.zeros((BLOCK_C, BLOCK_K), dtype=ACC)
    for p0 in range(0, P, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < P
        s = tl.load(s_base + offs_p[:, None] * D + offs_k[None, :],
                    mask=mask_p[:, None] & mask_k[None, :], other=0.0).to(ACC)
        g = tl.load(g_ptr + b * C * P + offs_c[:, None] * P + offs_p[None, :],
                    mask=mask_c[:, None] & mask_p[None, :], other=0.0).to(ACC)
        t = _tanh(e[:, None, :] * s[None, :, :], FAST)
        acc += tl.sum(g[:, :, None] * (1.0 - t * t) * s[None, :, :], axis=1)
    w = tl.load(w_ptr + offs_k, mask=mask_k, other=0.0).to(ACC)
    ge = ge_ptr + b * C * D + offs_c[:, None] * D + offs_k[None, :]
    tl.store(ge, (acc * w[None, :]).to(ge_ptr.dtype.element_ty), mask=mask_c[:, None] & mask_k[None, :])


# f[b,c,k] = max_p F[b,p,k] (a SA[b,c,p] + b CA[b,c,k]) and the first arg-max position;
# program = (k block, C block, b), loop over P
@triton.jit
def pool_fwd(
        f_ptr, sa_ptr, ca_ptr, out_ptr, idx_ptr, P, C, D, sa_weight, ca_weight,
        ACC: tl.constexpr, HAS_CA: tl.constexpr, STORE_INDEX: tl.constexpr,
        BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_k = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_c = offs_c < C
    mask_k = offs_k < D
    mask_ck = mask_c[:, None] & mask_k[None, :]
    ca = tl.zeros((BLOCK_C, BLOCK_K), dtype=ACC)
    if HAS_CA:
        ca = tl.load(ca_ptr + b * C * D + offs_c[:, None] * D + offs_k[None, :], mask=mask_ck, other=0.0).to(ACC)
        ca = ca * ca_weight
    best = tl.full((BLOCK_C, BLOCK_K), float('-inf'), dtype=ACC)
    best_idx = tl.zeros((BLOCK_C, BLOCK_K), dtype=tl.int32)
    f_base = f_ptr + b * P * D
    for p0 in range(0, P, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < P
        f = tl.load(f_base + offs_p[:, None] * D + offs_k[None, :],
                    mask=mask_p[:, None] & mask_k[None, :], other=0.0).to(ACC)
        sa = tl.load(sa_ptr + b * C * P + offs_c[:, None] * P + offs_p[None, :],
                     mask=mask_c[:, None] & mask_p[None, :], other=0.0).to(ACC)
        sa = sa * sa_weight
        if HAS_CA:
            weight = sa[:, :, None] + ca[:, None, :]  # [BLOCK_C, BLOCK_P, BLOCK_K]
        else:
            weight = sa[:, :, None]
        v = f[None, :, :] * weight
        v = tl.where(mask_p[None, :, None], v, float('-inf'))
        m, i = tl.max(v, axis=1, return_indices=True, return_indices_tie_break_left=True)
        better = m > best  # strict: on ties the earlier block (smaller position) is kept
        best = tl.where(better, m, best)
        best_idx = tl.where(better, i + p0, best_idx)
    tl.store(out_ptr + b * C * D + offs_c[:, None] * D + offs_k[None, :],
             best.to(out_ptr.dtype.element_ty), mask=mask_ck)
    if STORE_INDEX:
        tl.store(idx_ptr + b * C * D + offs_c[:, None] * D + offs_k[None, :], best_idx, mask=mask_ck)
