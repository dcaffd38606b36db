"""Category-specific attentional regions (CAR, paper §3.2, eqs. 2 and 4-6)."""
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from ..ops import channel_attention as channel_kernels
from ..ops import category_head
from ..ops import dispatch as kernels
from ..ops import reference as reference_kernels
from ..ops.common import lean_autograd_applies

__all__ = ['CategoryAttention', 'CategoryClassifier', 'ATTENTION_VARIANTS']

#: How SA is normalised and fused: 'paper' is eqs. 5-6 as written; not the paper's: 'gated' (``f_c = CA * max_p
#: F_p SA_p``), 'softmax' (``0.5 sum_p SA_p F_p + 0.5 CA * GMP(F)``, SA softmax over p), 'softmax_gated' (both).
ATTENTION_VARIANTS = ('paper', 'gated', 'softmax', 'softmax_gated')


class CategoryAttention(nn.Module):
    """Channel-wise (eq. 4) and spatial-wise (eq. 5) attention per category, fused and pooled (eq. 6).

    ``f_ca``, ``f_sa``, ``f_c``: d -> d; ``f_w``: d' -> d; ``f_s``: d -> 1 (one value per position). Table 6
    ablations: ``use_ca=False`` / ``use_sa=False`` drop eq. 4 / eq. 5; with both off ``f_c = GMP(F)``.
    ``zero_init_spatial=True`` zero-initialises ``f_s`` so SA starts at 0.5, sigmoid's steepest point, and does not
    collapse to ~0 once CA selects the channels. ``attention`` is one of :data:`ATTENTION_VARIANTS`.
    """

    def __init__(
            self,
            num_features: int,
            embed_dim: int,
            use_ca: bool = True,
            use_sa: bool = True,
            attention_impl: str = 'auto',
            zero_init_spatial: bool = False,
            attention: str = 'paper',
    ):
        super().__init__()
        if attention_impl not in kernels.ATTENTION_IMPLS:
            raise ValueError(f'attention_impl must be one of {kernels.ATTENTION_IMPLS}, got {attention_impl!r}')
        if attention not in ATTENTION_VARIANTS:
            raise ValueError(f'attention must be one of {ATTENTION_VARIANTS}, got {attention!r}')
        self.attention = attention
        self.softmax_spatial = attention in ('softmax', 'softmax_gated')
        self.gated = attention in ('gated', 'softmax_gated')
        self.num_features = num_features
        self.use_ca = use_ca
        self.use_sa = use_sa
        self.attention_impl = attention_impl
        self.f_w = nn.Linear(embed_dim, num_features) if (use_ca or use_sa) else None
        self.f_ca = nn.Linear(num_features, num_features) if use_ca else None
        self.f_c = nn.Linear(num_features, num_features) if use_ca else None
        self.f_sa = nn.Linear(num_features, num_features) if use_sa else None
        self.f_s = nn.Linear(num_features, 1) if use_sa else None
        if self.f_s is not None and zero_init_spatial:
            nn.init.zeros_(self.f_s.weight)
            nn.init.zeros_(self.f_s.bias)
        # eq. 6 weights 0.5/0.5; with one attention ablated the remaining one is used alone
        self.sa_weight = 0.5 if use_ca else 1.0
        self.ca_weight = 0.5 if use_sa else 1.0

    def channel_attention(self, pooled: Tensor, embeddings: Tensor, class_index: Optional[Tensor] = None) -> Tensor:
        """Eq. 4: ``CA = sigmoid(f_c(tanh(f_ca(GMP(F)) * f_w(x_c))))`` -> ``[B, C, d]``.

        Args:
            pooled: ``GMP(F)`` ``[B, d]``.
            embeddings: ``f_w(x_c)`` ``[C, d]``.
            class_index: ``[B, K]``: the CA of those categories only, ``[B, K, d]`` (OE's erased pass).
        """
        assert self.f_ca is not None and self.f_c is not None
        return channel_kernels.channel_attention(self.f_ca(pooled), embeddings, self.f_c.weight, self.f_c.bias,
                                                 class_index)

    def selected_channel_attention(self, feat: Tensor, nodes: Optional[Tensor], class_index: Tensor
                                   ) -> Optional[Tensor]:
        """Eq. 4 for the categories ``class_index`` ``[B, K]`` of each image -> ``[B, K, d]`` (None without CA)."""
        if not self.use_ca or nodes is None or self.f_w is None:
            return None
        return self.channel_attention(feat.amax(dim=1), self.f_w(nodes.to(feat.dtype)), class_index)

    def spatial_attention(self, feat: Tensor, embeddings: Tensor) -> Tensor:
        """Eq. 5: ``SA[p] = sigmoid(f_s(tanh(f_sa(F_p) * f_w(x_c))))`` -> ``[B, C, P]`` from ``feat`` ``[B, P, d]``
        and ``embeddings`` ``[C, d]``; the softmax variants use a softmax over the positions p instead."""
        assert self.f_sa is not None and self.f_s is not None
        projected = self.f_sa(feat)
        if torch.jit.is_scripting():
            logits = reference_kernels.spatial_attention_logits_reference(
                projected, embeddings, self.f_s.weight.view(-1))
        else:
            logits = kernels.spatial_attention_logits(
                projected, embeddings, self.f_s.weight.view(-1), impl=self.attention_impl)
        if self.softmax_spatial:
            return torch.softmax(logits + self.f_s.bias, dim=-1)
        return torch.sigmoid(logits + self.f_s.bias)

    def _max_pool(self, feat: Tensor, sa: Optional[Tensor], ca: Optional[Tensor], sa_weight: float,
                  ca_weight: float) -> Tensor:
        if torch.jit.is_scripting():
            return reference_kernels.attention_max_pool_reference(feat, sa, ca, sa_weight, ca_weight)
        return kernels.attention_max_pool(feat, sa, ca, sa_weight, ca_weight, impl=self.attention_impl)

    def pool(self, feat: Tensor, sa: Optional[Tensor], ca: Optional[Tensor], pooled: Optional[Tensor] = None
             ) -> Tensor:
        """Eq. 6 then GMP: ``f_c = max_p F_p * (0.5 SA_p + 0.5 CA)`` -> ``[B, C, d]``, or the ``attention`` variant's
        fusion; ``pooled``: per-category ``GMP(F)`` ``[B, C, d]`` where it is not that of ``feat`` (OE)."""
        if self.attention == 'paper' or (sa is None and pooled is None):
            return self._max_pool(feat, sa, ca, self.sa_weight, self.ca_weight)
        if sa is None:  # CA alone: max_p F_p * CA == CA * GMP(F) (CA > 0)
            assert ca is not None and pooled is not None
            return ca * pooled
        if self.softmax_spatial:
            spatial = torch.bmm(sa, feat)  # sum_p SA_p F_p, [B, C, d]
        else:  # 'gated': max_p F_p SA_p
            spatial = self._max_pool(feat, sa, None, 1.0, 1.0)
        if ca is None:
            return spatial
        if self.gated:
            return ca * spatial
        gmp = feat.amax(dim=1, keepdim=True) if pooled is None else pooled
        return self.sa_weight * spatial + self.ca_weight * (ca * gmp)

    def fused_logits_apply(self, feat: Tensor, weight: Tensor) -> bool:
        """Whether :meth:`category_logits` may stand in for ``forward`` + eq. 2: the paper's eqs. 4-6 with both
        attentions, a non-reference kernel, float32/64 training in eager mode (see ``lean_autograd_applies``)."""
        if torch.jit.is_scripting() or not (self.attention == 'paper' and self.use_ca and self.use_sa):
            return False
        if self.attention_impl == 'reference' or feat.dtype not in (torch.float32, torch.float64):
            return False
        return lean_autograd_applies(feat, weight, *self.parameters())

    @torch.jit.unused
    def category_logits(self, feat: Tensor, nodes: Tensor, weight: Tensor) -> Tuple[Tensor, Tensor]:
        """Eq. 2's ``<w_c, f_c>`` ``[B, C]`` (no bias) of this head's ``f_c`` (eqs. 4-6) and SA ``[B, C, P]``,
        through one memory-lean function (:mod:`~srdl_timm.ops.category_head`): ``f_c`` is not kept for the
        backward. Values equal ``forward`` then :func:`category_logits` bit for bit."""
        assert self.f_w is not None and self.f_ca is not None and self.f_c is not None
        embeddings = self.f_w(nodes.to(feat.dtype))
        sa = self.spatial_attention(feat, embeddings)
        logits = category_head.category_head_logits(
            self.f_ca(feat.amax(dim=1)), embeddings, self.f_c.weight, self.f_c.bias, feat, sa, weight,
            self.sa_weight, self.ca_weight, self.attention_impl)
        return logits, sa

    def erased_features(self, feat: Tensor, nodes: Tensor, sa: Tensor, class_index: Tensor, erased: Tensor
                        ) -> Tensor:
        """OE's feature erasing (not the paper's): features ``[B, K, d]`` of the categories ``class_index`` with
        their region ``erased`` (bool ``[B, K, P]``) removed from eq. 4's GMP and from SA ``sa`` ``[B, K, P]``."""
        keep = (~erased).to(feat.dtype)
        pooled = self._max_pool(feat, keep, None, 1.0, 1.0)  # GMP(F * (1 - M)) per category
        ca: Optional[Tensor] = None
        if self.use_ca and self.f_w is not None and self.f_ca is not None and self.f_c is not None:
            ca = channel_kernels.channel_attention(self.f_ca(pooled), self.f_w(nodes.to(feat.dtype)),
                                                   self.f_c.weight, self.f_c.bias, class_index)
        kept = sa * keep
        if self.softmax_spatial:
            kept = kept / kept.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(kept.dtype).tiny)
        return self.pool(feat, kept, ca, pooled)

    def forward(
            self, feat: Tensor, nodes: Optional[Tensor], num_classes: int,
    ) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        """Category features and the attentions that made them.

        Args:
            feat: feature map ``[B, P, d]``.
            nodes: contextualised embeddings ``x_c`` ``[C, d']`` (None only when both attentions are off).
            num_classes: C, used by the GMP baseline.
        Returns:
            ``(f [B, C, d], SA [B, C, P] or None, CA [B, C, d] or None)``.
        """
        if nodes is None or self.f_w is None:
            pooled = feat.amax(dim=1)
            return pooled.unsqueeze(1).expand(-1, num_classes, -1), None, None
        embeddings = self.f_w(nodes.to(feat.dtype))
        ca: Optional[Tensor] = None
        sa: Optional[Tensor] = None
        if self.use_ca:
            ca = self.channel_attention(feat.amax(dim=1), embeddings)
        if self.use_sa:
            sa = self.spatial_attention(feat, embeddings)
        return self.pool(feat, sa, ca), sa, ca

    def extra_repr(self) -> str:
        return (f'use_ca={self.use_ca}, use_sa={self.use_sa}, attention={self.attention!r}, '
                f'attention_impl={self.attention_impl!r}')


def _dot_per_category(features: Tensor, weight: Tensor) -> Tensor:
    # [B, C, d] x [C, d] -> [B, C]: a matmul batched over C on a transposed view (einsum would copy features)
    return torch.bmm(features.transpose(0, 1), weight.unsqueeze(-1)).squeeze(-1).t()


class _CategoryLogits(torch.autograd.Function):
    """Eq. 2's dot products ``<f_c, w_c>`` whose backward writes ``df`` directly as a contiguous ``[B, C, d]``."""

    @staticmethod
    def forward(ctx, features: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(features, weight)
        return _dot_per_category(features, weight)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        features, weight = ctx.saved_tensors
        grad = grad.contiguous()  # [B, C] (it arrives transposed), so df below is laid out as features
        grad_features = grad.unsqueeze(-1) * weight if ctx.needs_input_grad[0] else None
        grad_weight = torch.bmm(grad.t().unsqueeze(1), features.transpose(0, 1)).squeeze(1) \
            if ctx.needs_input_grad[1] else None
        return grad_features, grad_weight


@torch.fx.wrap
def category_logits(features: Tensor, weight: Tensor) -> Tensor:
    """``logits[b, c] = <features[b, c], weight[c]>`` (eq. 2 without its bias) -> ``[B, C]``."""
    if torch.jit.is_scripting():
        return _dot_per_category(features, weight)
    return _category_logits_eager(features, weight)


@torch.jit.unused
def _category_logits_eager(features: Tensor, weight: Tensor) -> Tensor:
    if lean_autograd_applies(features, weight):
        return _CategoryLogits.apply(features, weight)
    return _dot_per_category(features, weight)


class CategoryClassifier(nn.Module):
    """``phi`` of eq. 2: ``logit_c = <w_c, f_c> + b_c`` (sigmoid ``psi`` is applied by the loss / at prediction)."""

    def __init__(self, num_features: int, num_classes: int):
        super().__init__()
        self.num_features = num_features
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, num_features))
        self.bias = nn.Parameter(torch.zeros(num_classes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / self.num_features ** 0.5
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)

    def forward(self, features: Tensor, class_index: Optional[Tensor] = None) -> Tensor:
        """Eq. 2 logits ``[B, C]`` from ``[B, C, d]``; with ``class_index`` ``[B, K]``, logits of those classes."""
        if class_index is None:
            return category_logits(features, self.weight.to(features.dtype)) + self.bias.to(features.dtype)
        weight = self.weight.to(features.dtype)[class_index]  # [B, K, d]
        return (features * weight).sum(-1) + self.bias.to(features.dtype)[class_index]

    def extra_repr(self) -> str:
        return f'num_features={self.num_features}, num_classes={self.num_classes}'
