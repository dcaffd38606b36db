"""Multi-label metrics (paper §4.1, eqs. 14–16): per-class AP / mAP in both definitions, CP/CR/CF1/OP/OR/OF1.

Both AP definitions in use in the literature are always reported, each under its own name (never 11-point AP):
``'non_interpolated'`` (ML-GCN, ASL; scikit-learn's) and ``'interpolated'`` (all-point, VOC2010+), see
:func:`average_precision`, including ties. Target -1 (VOC difficult-only at evaluation, any ignore mask) removes
that (image, class) entry from its class's ranking and from every count; a class without a positive has AP NaN and
is left out of mAP, CP and CR. :func:`precision_recall_f1` is eqs. 14–16; :class:`MultiLabelMetrics` streams
batches (gathering them under ``torch.distributed``) and reports every value in percent, top-3 variants included.
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
        scores: ``[N, C]`` (or ``[N]``) scores, logits or probabilities — only their order matters.
        targets: same shape; 1 = positive, 0 = negative, -1 = ignore.
        mode: ``'non_interpolated'``: the mean, over the positives, of the precision at each positive's rank
            (ML-GCN, ASL, CSRA; equals scikit-learn's ``average_precision_score``); ``'interpolated'``: all-point
            interpolated AP (VOC2010+ devkit; SSGRL, Query2Label), precision replaced by its running maximum from
            the right (the envelope) before summing over recall steps, so it is >= the non-interpolated value.
            Ties: samples with equal scores form one threshold (precision and recall taken after the whole tied
            group), as scikit-learn does, so AP does not depend on sample order (gathering from several processes
            in any order gives the same number); peer code ranking with ``argsort`` breaks ties by order instead,
            and agrees whenever scores are tie-free. Compute it from fp32 logits (ranking is invariant under the
            sigmoid, and fp16/bf16 sigmoids saturate into ties).
        ignore: optional boolean mask of entries to leave out, in addition to targets == -1.

    Returns:
        float64 array ``[C]`` (shape ``[1]`` for 1-D input); NaN for a class without any (non-ignored) positive.
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
    """CP, CR, CF1, OP, OR, OF1 of eqs. 14–16 from binary predictions, as fractions.

    With N^c_i correct, N^p_i predicted and N^g_i ground-truth positives of class i::

        OP = Σ N^c / Σ N^p     CP = 1/C Σ N^c_i / N^p_i     (a class with N^p_i = 0 has precision 0, as in ML-GCN)
        OR = Σ N^c / Σ N^g     CR = 1/C Σ N^c_i / N^g_i
        OF1 = 2·OP·OR/(OP+OR)  CF1 = 2·CP·CR/(CP+CR)

    Unlike ML-GCN, which counts predictions on VOC difficult entries as false positives, ignored entries are left
    out of the counts.

    Args:
        predicted: ``[N, C]`` boolean predictions.
        targets: ``[N, C]`` with 1 / 0 / -1 (ignored entries are left out of every count).

    Returns:
        ``{'CP', 'CR', 'CF1', 'OP', 'OR', 'OF1'}``; class averages run over classes with ≥ 1 positive, a class with
        no prediction has precision 0, an F1 with P + R = 0 is 0; NaN when no class has a positive.
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

    "Predicted" means sigmoid(logit) >= ``threshold`` (0.5 ⇔ logit >= 0), a global probability or one per class
    (:mod:`srdl_timm.labels.thresholds`). The top-k variants (keys ``CP_top3`` …)
    predict the k highest-scored classes of each image (ties → lower class index) and, as in ML-GCN's
    ``overall_topk``, only those of them that also pass the threshold (``topk_requires_threshold=False`` drops that
    condition). ``num_classes_evaluated`` says how many classes (those with a positive) were averaged.

    Logits are stored as float32 on the CPU. Under ``torch.distributed`` :meth:`compute` (a collective: every
    rank must call it) gathers all ranks' arrays first, so with a non-padding sampler every sample counts once.

    Args:
        label_names: class names (keys of the per-class AP in reports); optional.
        num_classes: C, checked on every update (taken from ``label_names`` or the first batch when None).
        threshold: probability threshold for CP … OF1 (0.5 in the paper's tables), or a sequence of per-class ones.
        top_k: k of the top-k variants (3 in the literature).
        topk_requires_threshold: top-k predictions must also pass the threshold (ML-GCN's ``overall_topk``).
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
        """Add a batch: ``logits`` ``[B, C]`` (any float dtype, stored as float32) and ``targets`` ``[B, C]``
        with 1 / 0 / -1 (ignore)."""
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
        """Accumulated ``(logits, targets)`` ``[N, C]``; with ``distributed`` (default: when a process group is
        initialised) from every rank, concatenated in rank order — a collective every rank must call."""
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
        """Compute every metric over all accumulated samples, in percent.

        Args:
            distributed: gather every rank's samples first (default: when torch.distributed is initialised). Pass
                False when only this rank evaluated (e.g. rank 0 on the whole set), or the call would block.

        Returns:
            ``mAP_interpolated``, ``mAP_non_interpolated`` (floats); ``AP_interpolated``, ``AP_non_interpolated``
            (float64 arrays ``[C]``, NaN for classes without positives); ``CP``, ``CR``, ``CF1``, ``OP``, ``OR``,
            ``OF1`` at ``threshold`` (per class when given so); the same with suffix ``_top{k}``; ``num_samples``,
            ``num_classes``, ``num_classes_evaluated``, ``num_ignored_entries``, ``num_samples_all_ignored`` (e.g.
            unreadable images skipped by the dataset), ``threshold``, ``top_k``.
        """
        logits_t, targets_t = self.gather(distributed)
        return self.compute_from(logits_t, targets_t)

    def compute_from(self, logits: ArrayLike, targets: ArrayLike) -> Dict[str, Any]:
        """:meth:`compute` on given ``logits`` and ``targets`` ``[N, C]`` (1 / 0 / -1) instead of the accumulated
        ones, with this object's threshold and top-k (e.g. the same logits under another ignore policy)."""
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
