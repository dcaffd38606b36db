"""Object erasing (OE, paper §3.3, eqs. 7-10): training-only regulariser on the spatial attention."""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ['ObjectErasing', 'above_threshold_runs', 'peak_interval', 'erase_region', 'select_erased_classes']


def select_erased_classes(logits: Tensor, topk: int) -> Tensor:
    """The categories OE erases (§3.3): the top-``min(topk, C)`` of the *detached* predicted scores, ``[B, K]``
    (ground truth is not used); shared by the model and ``SRDLLoss(era_scope='erased')``."""
    return logits.detach().topk(min(topk, logits.shape[1]), dim=1).indices


def above_threshold_runs(marginal: Tensor, alpha: float) -> Tuple[Tensor, Tensor]:
    """Eqs. 9-10 on one axis: the runs of positions with ``Norm(marginal) >= alpha`` (a flat marginal is all above).

    Returns:
        ``(run, width)``, both int64 ``[..., L]``: the run id of each position (1, 2, ... from the left; 0 below the
        threshold) and the width of the run each position lies in (0 below the threshold).
    """
    lo = marginal.amin(dim=-1, keepdim=True)
    hi = marginal.amax(dim=-1, keepdim=True)
    span = hi - lo
    flat = span <= 0
    normalized = torch.where(flat, torch.ones_like(marginal), (marginal - lo) / torch.where(flat, torch.ones_like(span), span))
    above = normalized >= alpha
    previous = F.pad(above[..., :-1], (1, 0), value=False)
    run = torch.cumsum((above & ~previous).to(torch.int64), dim=-1) * above
    counts = torch.zeros(marginal.shape[:-1] + (marginal.shape[-1] + 1,), dtype=torch.int64, device=marginal.device)
    widths = counts.scatter_add(-1, run, torch.ones_like(run))
    widths[..., 0] = 0  # slot 0 collects the below-threshold positions
    return run, widths.gather(-1, run)


def peak_interval(marginal: Tensor, alpha: float) -> Tensor:
    """Eqs. 7-10 on one axis (§3.3): bool ``[..., L]``, True in the above-``alpha`` interval of ``marginal`` holding
    the global maximum (with several, the widest; the first among equally wide ones)."""
    run, width = above_threshold_runs(marginal, alpha)
    peak = marginal == marginal.amax(dim=-1, keepdim=True)
    best = torch.where(peak, width, torch.full_like(width, -1)).argmax(dim=-1, keepdim=True)  # first widest peak
    return run == run.gather(-1, best)


def erase_region(attention: Tensor, alpha: float) -> Tensor:
    """Rectangle OE erases from spatial attention maps ``[..., h, w]`` (eqs. 7-10): bool, True where erased.

    The marginals ``m_x`` (eq. 7) and ``m_y`` (eq. 8) split each axis into above-threshold intervals (eqs. 9-10);
    the region is the row x column interval of the global maximum. Tied maxima are chosen together in 2-D (the
    largest rectangle, first in row-major order), so rows and columns never come from different peaks. A flat map
    erases nothing.
    """
    width = attention.shape[-1]
    col_run, col_width = above_threshold_runs(attention.amax(dim=-2), alpha)  # [..., w]
    row_run, row_width = above_threshold_runs(attention.amax(dim=-1), alpha)  # [..., h]
    area = row_width.unsqueeze(-1) * col_width.unsqueeze(-2)  # [..., h, w]: the rectangle of each position
    is_max = attention == attention.amax(dim=(-2, -1), keepdim=True)
    peak = torch.where(is_max, area, torch.full_like(area, -1)).flatten(-2).argmax(dim=-1, keepdim=True)
    cols = col_run == col_run.gather(-1, peak % width)
    rows = row_run == row_run.gather(-1, torch.div(peak, width, rounding_mode='floor'))
    flat = attention.amax(dim=(-2, -1)) == attention.amin(dim=(-2, -1))
    region = rows.unsqueeze(-1) & cols.unsqueeze(-2)
    return region & ~flat.unsqueeze(-1).unsqueeze(-1)


class ObjectErasing(nn.Module):
    """Select the top-K categories and erase their most obvious region in SA (§3.3); the mask carries no gradient."""

    def __init__(self, topk: int = 3, alpha: float = 0.5):
        super().__init__()
        if topk < 1:
            raise ValueError(f'oe_topk must be >= 1, got {topk}')
        if not 0.0 < alpha < 1.0:
            raise ValueError(f'oe_alpha must be in (0, 1), got {alpha}')
        self.topk = topk
        self.alpha = alpha

    def forward(self, logits: Tensor, sa: Tensor, height: int, width: int) -> Tuple[Tensor, Tensor, Tensor]:
        """From ``logits`` ``[B, C]`` and SA ``[B, C, P]`` (``P = height * width``): ``(class_index [B, K], their SA
        with the region set to 0 [B, K, P], region bool [B, K, P])``."""
        class_index = select_erased_classes(logits, self.topk)
        selected = torch.gather(sa, 1, class_index.unsqueeze(-1).expand(-1, -1, sa.shape[-1]))
        mask = erase_region(selected.detach().unflatten(-1, (height, width)), self.alpha).flatten(-2)
        return class_index, selected.masked_fill(mask, 0.0), mask

    def extra_repr(self) -> str:
        return f'topk={self.topk}, alpha={self.alpha}'
