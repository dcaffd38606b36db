"""Object erasing (OE, paper §3.3, eqs. 7-10): training-only regulariser on the spatial attention."""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ['ObjectErasing', 'peak_interval', 'erase_region', 'select_erased_classes']


def select_erased_classes(logits: Tensor, topk: int) -> Tensor:
    """The categories OE erases (§3.3): the top-``topk`` of the *detached* predicted scores, ``[B, K]``.

    The paper sorts the probability score vectors (sigmoid is monotonic, so the logits sort the same); ground truth
    is not used. ``K = min(topk, C)``; ties keep ``torch.topk``'s order. The one definition of the selection: the
    model (:class:`ObjectErasing`) and the loss (``SRDLLoss(era_scope='erased')``) both call it.
    """
    return logits.detach().topk(min(topk, logits.shape[1]), dim=1).indices


def peak_interval(marginal: Tensor, alpha: float, anchor: Optional[Tensor] = None) -> Tensor:
    """Eqs. 7-10 on one axis: the above-threshold interval that holds the maximum.

    ``m = Norm(marginal)`` (min-max); positions with ``m >= alpha`` form intervals (eqs. 9-10). With ``anchor``
    (the index of one maximum per marginal, ``[...]``), the interval containing it is kept. Without, the interval
    containing the global maximum; with several global maxima in different intervals, the widest of them, and
    among equally wide ones the first. A flat marginal (max == min) is all maximum, so its interval is the whole
    axis. Vectorised over all leading dims; no host synchronisation.

    Args:
        marginal: ``[..., L]`` marginal maxima of an attention map along one axis.
        alpha: threshold in (0, 1).
        anchor: optional int64 ``[...]`` position of a maximum of ``marginal`` (it is above any threshold).
    Returns:
        bool ``[..., L]``, True inside the chosen interval.
    """
    length = marginal.shape[-1]
    lo = marginal.amin(dim=-1, keepdim=True)
    hi = marginal.amax(dim=-1, keepdim=True)
    span = hi - lo
    flat = span <= 0
    normalized = torch.where(flat, torch.ones_like(marginal), (marginal - lo) / torch.where(flat, torch.ones_like(span), span))
    above = normalized >= alpha
    peak = marginal == hi
    # label the runs of above-threshold positions 1..S (0 = below threshold)
    previous = F.pad(above[..., :-1], (1, 0), value=False)
    starts = above & ~previous
    segment = torch.cumsum(starts.to(torch.int64), dim=-1) * above
    counts = torch.zeros(marginal.shape[:-1] + (length + 1,), dtype=torch.int64, device=marginal.device)
    widths = counts.scatter_add(-1, segment, torch.ones_like(segment))
    if anchor is not None:
        return segment == segment.gather(-1, anchor.unsqueeze(-1))
    peaks = counts.scatter_add(-1, segment, peak.to(torch.int64))
    score = torch.where(peaks > 0, widths, torch.zeros_like(widths))
    score[..., 0] = 0  # slot 0 collects the below-threshold positions
    best = score.argmax(dim=-1, keepdim=True)  # first of the widest peak-holding intervals
    return segment == best


def erase_region(attention: Tensor, alpha: float) -> Tensor:
    """Rectangle OE erases from spatial attention maps ``[..., h, w]`` (eqs. 7-10).

    Column marginal ``m_x = Norm(max_y SA)`` (eq. 7) and row marginal ``m_y = Norm(max_x SA)`` (eq. 8) each
    give one interval (:func:`peak_interval`); the region is their product. Both intervals are anchored on the
    same 2-D peak of the map (the first maximum in row-major order), so the rectangle always contains a peak,
    also when the map has tied maxima in different rows and columns. A flat map (max == min, which includes
    every 1x1 map) erases nothing.

    Returns:
        bool ``[..., h, w]``, True where the attention is erased.
    """
    width = attention.shape[-1]
    peak = attention.flatten(-2).argmax(dim=-1)  # first maximum in row-major order
    cols = peak_interval(attention.amax(dim=-2), alpha, anchor=peak % width)  # [..., w]
    rows = peak_interval(attention.amax(dim=-1), alpha, anchor=torch.div(peak, width, rounding_mode='floor'))
    flat = attention.amax(dim=(-2, -1)) == attention.amin(dim=(-2, -1))
    region = rows.unsqueeze(-1) & cols.unsqueeze(-2)
    return region & ~flat.unsqueeze(-1).unsqueeze(-1)


class ObjectErasing(nn.Module):
    """Select the top-K categories and erase their most obvious region in SA (§3.3).

    Categories are the top-K by *detached* predicted score (the paper sorts the probability score vectors;
    ground truth is not used). The mask carries no gradient; gradients flow through the kept attention.
    """

    def __init__(self, topk: int = 3, alpha: float = 0.5):
        super().__init__()
        if topk < 1:
            raise ValueError(f'oe_topk must be >= 1, got {topk}')
        if not 0.0 < alpha < 1.0:
            raise ValueError(f'oe_alpha must be in (0, 1), got {alpha}')
        self.topk = topk
        self.alpha = alpha

    def forward(self, logits: Tensor, sa: Tensor, height: int, width: int) -> Tuple[Tensor, Tensor]:
        """Erase the selected categories' regions.

        Args:
            logits: ``[B, C]`` scores of the original pass.
            sa: spatial attention ``[B, C, P]`` with ``P = height * width``.
        Returns:
            ``(class_index [B, K], erased SA of those classes [B, K, P])``.
        """
        class_index = select_erased_classes(logits, self.topk)
        selected = torch.gather(sa, 1, class_index.unsqueeze(-1).expand(-1, -1, sa.shape[-1]))
        mask = erase_region(selected.detach().unflatten(-1, (height, width)), self.alpha).flatten(-2)
        return class_index, selected.masked_fill(mask, 0.0)

    def extra_repr(self) -> str:
        return f'topk={self.topk}, alpha={self.alpha}'
