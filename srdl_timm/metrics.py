"""Multi-label metrics (paper §4.1, eqs. 14–16): per-class AP / mAP in both definitions, CP/CR/CF1/OP/OR/OF1.

Target -1 leaves that entry out of every ranking and count; a class without a positive has AP NaN (not averaged).
"""
import logging
import math
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ['AP_MODES', 'average_precision', 'precision_recall_f1', 'MultiLabelMetrics']

_logger = logging.getLogger(__name__)

AP_MODES = ('interpolated', 'non_interpolated')

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence]


def _to_numpy(x: ArrayLike, dtype=np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to('cpu', torch.float64 if dtype == np.float64 else torch.float32).numpy()
    return np.asarray(x, dtype=dtype)


def _check_scores_targets(scores: np.ndarray, targets: np.ndarray) -> None:
    if scores.shape != targets.shape:
        raise ValueError(f'scores {scores.shape} and targets {targets.shape} must have the same shape')
    if scores.ndim != 2:
        raise ValueError(f'scores must be [N] or [N, C], got shape {scores.shape}')
    if np.isnan(scores).any():
        raise ValueError('scores contain NaN')
    bad = ~np.isin(targets, (-1.0, 0.0, 1.0))
    if bad.any():
        raise ValueError(f'targets must be 1 (present), 0 (absent) or -1 (ignore); found {np.unique(targets[bad])[:5]}')


def _average_precision_1d(scores: np.ndarray, positive: np.ndarray, interpolated: bool) -> float:
    """AP of one class over its non-ignored entries; tied scores form one threshold."""
    num_pos = int(positive.sum())
    if num_pos == 0:
        return math.nan
    order = np.argsort(-scores, kind='stable')
    s, y = scores[order], positive[order]
    tp = np.cumsum(y, dtype=np.float64)
    fp = np.cumsum(~y, dtype=np.float64)
    last_of_group = np.r_[s[1:] != s[:-1], True]  # evaluate only after each group of tied scores
    tp, fp = tp[last_of_group], fp[last_of_group]
    precision = tp / (tp + fp)
    recall = tp / num_pos
    if interpolated:
        precision = np.maximum.accumulate(precision[::-1])[::-1]
    recall_step = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_step * precision))


def average_precision(
        scores: ArrayLike,
        targets: ArrayLike,
        mode: str = 'interpolated',
        ignore: Optional[ArrayLike] = None,
) -> np.ndarray:
    """Per-class average precision (§4.1), as a fraction in [0, 1].

    Args:
        scores: ``[N, C]`` (or ``[N]``) scores; only their order matters.
        targets: same shape; 1 = positive, 0 = negative, -1 = ignore.
        mode: ``'non_interpolated'`` (scikit-learn's) or ``'interpolated'`` (all-point, VOC2010+).
        ignore: optional boolean mask of entries to leave out.

    Returns:
        float64 ``[C]`` (``[1]`` for 1-D input); NaN for a class without a positive.
    """
    if mode not in AP_MODES:
        raise ValueError(f'AP mode must be one of {AP_MODES}, got {mode!r}')
    s, t = _to_numpy(scores), _to_numpy(targets)
    if s.ndim == 1:
        s = s[:, None]
    if t.ndim == 1:
        t = t[:, None]
    _check_scores_targets(s, t)
    valid = t != -1
    if ignore is not None:
        ign = np.asarray(_to_numpy(ignore), dtype=bool)
        if ign.ndim == 1:
            ign = ign[:, None]
        if ign.shape != t.shape:
            raise ValueError(f'ignore mask {ign.shape} must match targets {t.shape}')
        valid &= ~ign
    out = np.empty(s.shape[1], dtype=np.float64)
    for c in range(s.shape[1]):
        v = valid[:, c]
        out[c] = _average_precision_1d(s[v, c], t[v, c] == 1, mode == 'interpolated')
    return out


def precision_recall_f1(predicted: ArrayLike, targets: ArrayLike) -> Dict[str, float]:
    """CP, CR, CF1, OP, OR, OF1 of eqs. 14–16 from boolean ``predicted`` ``[N, C]``, as fractions::

        OP = Σ N^c / Σ N^p     CP = 1/C Σ N^c_i / N^p_i     (N^p_i = 0: precision 0)
        OR = Σ N^c / Σ N^g     CR = 1/C Σ N^c_i / N^g_i
        OF1 = 2·OP·OR/(OP+OR)  CF1 = 2·CP·CR/(CP+CR)

    Ignored targets (-1) are left out of every count; class averages run over classes with a positive.
    """
    pred = np.asarray(_to_numpy(predicted), dtype=bool)
    t = _to_numpy(targets)
    if pred.shape != t.shape or t.ndim != 2:
        raise ValueError(f'predicted {pred.shape} and targets {t.shape} must both be [N, C]')
    valid = t != -1
    gt = t == 1
    n_pred = (pred & valid).sum(0).astype(np.float64)
    n_correct = (pred & gt).sum(0).astype(np.float64)
    n_gt = gt.sum(0).astype(np.float64)
    evaluated = n_gt > 0
    if not evaluated.any():
        return {k: math.nan for k in ('CP', 'CR', 'CF1', 'OP', 'OR', 'OF1')}
    per_class_p = np.divide(n_correct, n_pred, out=np.zeros_like(n_correct), where=n_pred > 0)
    cp = float(per_class_p[evaluated].mean())
    cr = float((n_correct[evaluated] / n_gt[evaluated]).mean())
    op = float(n_correct.sum() / n_pred.sum()) if n_pred.sum() > 0 else 0.0
    orc = float(n_correct.sum() / n_gt.sum())

    def f1(p: float, r: float) -> float:
        return 2 * p * r / (p + r) if p + r > 0 else 0.0

    return dict(CP=cp, CR=cr, CF1=f1(cp, cr), OP=op, OR=orc, OF1=f1(op, orc))


def _logit(p: Union[float, Sequence[float]]) -> Union[float, np.ndarray]:
    values = np.asarray(p, dtype=np.float64)
    if values.ndim > 1 or values.size == 0 or not np.all((values > 0.0) & (values < 1.0)):
        raise ValueError(f'threshold must be a probability in (0, 1) or one per class, got {p}')
    logits = np.log(values / (1.0 - values))
    return float(logits) if values.ndim == 0 else logits


class MultiLabelMetrics:
    """Streaming multi-label evaluation: accumulate ``(logits, targets)`` batches, then :meth:`compute`.

    "Predicted" is sigmoid(logit) >= ``threshold`` (global or per class); top-k variants predict the k highest
    (that also pass the threshold unless ``topk_requires_threshold=False``). :meth:`compute` may be a collective.
    """

    def __init__(
            self,
            label_names: Optional[Sequence[str]] = None,
            num_classes: Optional[int] = None,
            threshold: Union[float, Sequence[float]] = 0.5,
            top_k: int = 3,
            topk_requires_threshold: bool = True,
    ) -> None:
        self.label_names = list(label_names) if label_names is not None else None
        if self.label_names is not None and num_classes is not None and num_classes != len(self.label_names):
            raise ValueError(f'num_classes {num_classes} != len(label_names) {len(self.label_names)}')
        self.num_classes = num_classes if num_classes is not None else (
            len(self.label_names) if self.label_names is not None else None)
        self.logit_threshold = _logit(threshold)
        self.threshold = threshold if isinstance(self.logit_threshold, float) else [float(t) for t in threshold]
        if self.num_classes is not None and not isinstance(self.logit_threshold, float) \
                and len(self.logit_threshold) != self.num_classes:
            raise ValueError(f'{len(self.logit_threshold)} thresholds for {self.num_classes} classes')
        if top_k < 1:
            raise ValueError(f'top_k must be >= 1, got {top_k}')
        self.top_k = top_k
        self.topk_requires_threshold = topk_requires_threshold
        self.reset()

    def reset(self) -> None:
        """Drop everything accumulated."""
        self._logits = []
        self._targets = []

    @property
    def num_samples(self) -> int:
        """Samples accumulated in this process."""
        return sum(x.shape[0] for x in self._logits)

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: ``logits`` ``[B, C]`` (stored as float32) and ``targets`` ``[B, C]`` (1 / 0 / -1)."""
        logits = torch.as_tensor(logits).detach().to('cpu', torch.float32)
        targets = torch.as_tensor(targets).detach().to('cpu', torch.float32)
        if logits.ndim != 2 or logits.shape != targets.shape:
            raise ValueError(f'logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must both be [B, C]')
        if self.num_classes is None:
            self.num_classes = logits.shape[1]
        if logits.shape[1] != self.num_classes:
            raise ValueError(f'got {logits.shape[1]} classes, expected {self.num_classes}')
        if torch.isnan(logits).any():
            raise ValueError('logits contain NaN')
        if not ((targets == 1) | (targets == 0) | (targets == -1)).all():
            raise ValueError('targets must be 1 (present), 0 (absent) or -1 (ignore)')
        self._logits.append(logits)
        self._targets.append(targets)

    def gather(self, distributed: Optional[bool] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Accumulated ``(logits, targets)`` ``[N, C]``; with ``distributed`` a collective over every rank."""
        from .data.samplers import all_gather_concat, is_dist_initialized
        c = self.num_classes or 0
        logits = torch.cat(self._logits) if self._logits else torch.zeros(0, c)
        targets = torch.cat(self._targets) if self._targets else torch.zeros(0, c)
        if distributed is None:
            distributed = is_dist_initialized()
        if not distributed:
            return logits, targets
        return all_gather_concat(logits), all_gather_concat(targets)

    def compute(self, distributed: Optional[bool] = None) -> Dict[str, Any]:
        """Every metric over all accumulated samples (of every rank if ``distributed``), in percent."""
        logits_t, targets_t = self.gather(distributed)
        return self.compute_from(logits_t, targets_t)

    def compute_from(self, logits: ArrayLike, targets: ArrayLike) -> Dict[str, Any]:
        """:meth:`compute` on given ``logits`` and ``targets`` ``[N, C]`` instead of the accumulated ones."""
        logits = _to_numpy(logits)
        targets = _to_numpy(targets)
        _check_scores_targets(logits, targets)
        n, c = logits.shape
        if n == 0:
            raise ValueError('no samples accumulated; call update() before compute()')
        if not isinstance(self.logit_threshold, float) and len(self.logit_threshold) != c:
            raise ValueError(f'{len(self.logit_threshold)} thresholds for {c} classes')
        out: Dict[str, Any] = {}
        for mode in AP_MODES:
            ap = average_precision(logits, targets, mode=mode)
            out[f'AP_{mode}'] = ap * 100.0
            out[f'mAP_{mode}'] = float(np.nanmean(ap) * 100.0) if np.isfinite(ap).any() else math.nan
        evaluated = int(((targets == 1).sum(0) > 0).sum())
        if evaluated < c:
            _logger.warning('%d of %d classes have no positive sample; they are left out of mAP, CP and CR',
                            c - evaluated, c)
        pred = logits >= self.logit_threshold
        for k, v in precision_recall_f1(pred, targets).items():
            out[k] = v * 100.0
        k = min(self.top_k, c)
        top = np.argsort(-logits, axis=1, kind='stable')[:, :k]
        pred_top = np.zeros_like(pred)
        np.put_along_axis(pred_top, top, True, axis=1)
        if self.topk_requires_threshold:
            pred_top &= pred
        for name, v in precision_recall_f1(pred_top, targets).items():
            out[f'{name}_top{self.top_k}'] = v * 100.0
        out.update(
            num_samples=n,
            num_classes=c,
            num_classes_evaluated=evaluated,
            num_ignored_entries=int((targets == -1).sum()),
            num_samples_all_ignored=int((targets == -1).all(axis=1).sum()),
            threshold=self.threshold,
            top_k=self.top_k,
        )
        return out
