"""Evaluate a multi-label timm model on a loader (paper §4.1): the library behind ``srdl-validate``.

:func:`validate` runs the model over an evaluation loader and returns
:meth:`srdl_timm.metrics.MultiLabelMetrics.compute`'s dict (mAP in both AP definitions, CP, CR, CF1, OP, OR, OF1
and their top-3 variants); :func:`format_row` prints a Table 1/2-style row. :func:`voc_difficult_negative`
recomputes the metrics with VOC's difficult-only entries counted negative (the convention some labs report)
from the same logits, so both VOC numbers come from one pass.

Under torchrun each rank evaluates a disjoint, unpadded slice of the dataset and the logits are gathered before
the metrics are computed, so every image counts exactly once. With AMP the backbone runs in the AMP dtype but,
for models with ``forward_features`` / ``forward_head`` (every timm model), the head runs in float32 so AP is
ranked on fp32 logits (checked against ``model(x)`` on the first batch; a model whose forward is not
head∘features falls back to ``model(x)``).
"""
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from .data.samplers import is_dist_initialized
from .errors import InputError
from .labels import model_label_names
from .metrics import MultiLabelMetrics

__all__ = ['validate', 'format_row', 'format_rows', 'voc_difficult_negative', 'class_index_by_name', 'AP_DEFINITIONS',
           'DIFFICULT_POLICY_NAMES']

_logger = logging.getLogger('srdl_timm.validate')

#: how each reported AP is defined (copied into every JSON report)
AP_DEFINITIONS = {
    'mAP_interpolated': 'mean over classes of all-point interpolated AP (VOC2010+ devkit): sum over recall steps '
                        'of the precision envelope max_{r\' >= r} P(r\'); not 11-point',
    'mAP_non_interpolated': 'mean over classes of non-interpolated AP: mean of the precision at each positive\'s '
                            'rank (ML-GCN/ASL; equals sklearn.metrics.average_precision_score)',
    'ties': 'samples with equal logits form one threshold (order-independent, as scikit-learn)',
    'scores': 'float32 logits (ranking unchanged by the sigmoid)',
    'classes_averaged': 'classes with at least one (non-ignored) positive',
}

#: how the two VOC numbers are named in the printed rows and the JSON report
DIFFICULT_POLICY_NAMES = {
    'ignore': 'difficult-only entries ignored (standard VOC evaluation)',
    'negative': 'difficult-only entries counted negative (the authors\' lab convention)',
}


def _forward_logits(model: nn.Module, images: torch.Tensor, device: torch.device, amp_dtype: Optional[torch.dtype],
                    split_head: bool) -> torch.Tensor:
    if amp_dtype is None:
        out = model(images)
    elif split_head:
        with torch.autocast(device_type=device.type, dtype=amp_dtype):
            feats = model.forward_features(images)
        with torch.autocast(device_type=device.type, enabled=False):
            out = model.forward_head(feats.float())
    else:
        with torch.autocast(device_type=device.type, dtype=amp_dtype):
            out = model(images)
    if not isinstance(out, torch.Tensor):
        raise InputError(f'the model returned {type(out).__name__} in eval mode; srdl-validate needs logits [B, C]')
    return out


def validate(
        model: nn.Module,
        loader: torch.utils.data.DataLoader,
        device: torch.device,
        amp_dtype: Optional[torch.dtype] = None,
        channels_last: bool = False,
        progress: bool = True,
        class_index: Optional[Sequence[int]] = None,
        fp32_head: bool = True,
        label_names: Optional[Sequence[str]] = None,
        return_outputs: bool = False,
) -> Dict[str, Any]:
    """Evaluate ``model`` on ``loader`` and return :meth:`srdl_timm.metrics.MultiLabelMetrics.compute`'s dict.

    Args:
        model: a multi-label classifier returning logits ``[B, C]`` in eval mode.
        loader: yields ``(images, targets)`` with targets 1 / 0 / -1 (ignore); under torch.distributed each rank's
            loader must hold a disjoint slice (``create_loader(..., distributed=True)``).
        device: where the model runs.
        amp_dtype: autocast dtype (``torch.bfloat16``/``torch.float16``) or None for float32.
        channels_last: run in channels-last memory format.
        progress: show a tqdm bar (rank 0 only).
        class_index: logits columns to take, in the dataset's class order (to re-order a model's classes).
        fp32_head: with AMP, run ``forward_head`` in float32 on float32 features so the logits are fp32.
        label_names: class names for the metrics object (optional).
        return_outputs: also return the gathered ``logits`` and ``targets`` (float32 ``[N, C]`` arrays, dataset
            order) under those keys, e.g. for :func:`voc_difficult_negative`.

    Returns:
        The metrics (percent): ``mAP_interpolated``, ``mAP_non_interpolated``, per-class ``AP_*``, CP … OF1 and
        ``*_top3``, sample counts; plus ``head_dtype`` (the dtype the classifier ran in).
    """
    model.eval()
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    rank = torch.distributed.get_rank() if is_dist_initialized() else 0
    num_classes = len(class_index) if class_index is not None else None
    metrics = MultiLabelMetrics(label_names=label_names, num_classes=num_classes)
    index = torch.as_tensor(list(class_index), dtype=torch.long) if class_index is not None else None
    split_head = bool(amp_dtype is not None and fp32_head and hasattr(model, 'forward_features')
                      and hasattr(model, 'forward_head'))
    checked = not split_head
    with torch.inference_mode():
        for images, targets in tqdm(loader, desc='validate', disable=not progress or rank != 0, dynamic_ncols=True):
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            logits = _forward_logits(model, images, device, amp_dtype, split_head)
            if not checked:
                reference = _forward_logits(model, images, device, amp_dtype, False).float()
                scale = reference.abs().max().clamp_min(1.0)
                if reference.shape != logits.shape or not torch.allclose(logits.float(), reference, rtol=0.05,
                                                                        atol=0.05 * float(scale)):
                    _logger.warning('forward_head(forward_features(x)) differs from model(x); using model(x) under '
                                    'autocast (logits in %s)', amp_dtype)
                    split_head = False
                    logits = reference
                checked = True
            if logits.ndim != 2:
                raise InputError(f'the model returned logits of shape {tuple(logits.shape)}, expected [B, C]')
            if index is not None:
                logits = logits[:, index.to(logits.device)]
            if logits.shape != targets.shape:
                raise InputError(f'the model returned {logits.shape[1]} logits per image but the dataset has '
                                 f'{targets.shape[1]} classes: use weights trained on this label set')
            metrics.update(logits.float(), targets)
    all_logits, all_targets = metrics.gather()
    result = metrics.compute_from(all_logits, all_targets)
    if return_outputs:
        result['logits'], result['targets'] = all_logits.numpy(), all_targets.numpy()
    result['head_dtype'] = 'float32' if amp_dtype is None or split_head else str(amp_dtype).replace('torch.', '')
    return result


def class_index_by_name(model: nn.Module, label_names: Sequence[str]) -> Optional[List[int]]:
    """Logit columns in the dataset's class order, matched by name, or None when no re-ordering is needed (same
    order, or the model carries no label names).

    Raises:
        InputError: the model's label names are not the dataset's (naming the first missing ones).
    """
    model_names = model_label_names(model)
    label_names = [str(n) for n in label_names]
    if not model_names or model_names == label_names:
        return None
    if sorted(model_names) == sorted(label_names):
        _logger.warning('the model\'s classes are in another order than the dataset\'s; re-ordering logits by name')
        return [model_names.index(n) for n in label_names]
    missing = sorted(set(label_names) - set(model_names))[:5]
    unknown = sorted(set(model_names) - set(label_names))[:5]
    raise InputError(f'the weights\' {len(model_names)} label names are not the dataset\'s {len(label_names)} '
                     f'(dataset classes the weights do not know: {missing}; weights\' classes not in the dataset: '
                     f'{unknown}); evaluate on the label set the weights were trained on')


def voc_difficult_negative(logits: np.ndarray, targets: np.ndarray, difficult_only: np.ndarray,
                           label_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Metrics with VOC's difficult-only (image, class) entries counted negative instead of ignored.

    Args:
        logits, targets: ``[N, C]`` from :func:`validate` with ``return_outputs=True`` on a VOC dataset built with
            ``difficult='ignore'`` (difficult-only entries are -1); dataset order.
        difficult_only: ``[N, C]`` bool, the dataset's :attr:`~srdl_timm.data.VocMultiLabel.difficult_only`.

    Rows that are ignored as a whole (an unreadable image skipped with ``on_corrupt='skip'``) stay ignored.
    """
    targets = np.array(targets, dtype=np.float32, copy=True)
    difficult_only = np.asarray(difficult_only, dtype=bool)
    if difficult_only.shape != targets.shape:
        raise InputError(f'difficult_only has shape {difficult_only.shape}, targets {targets.shape}')
    skipped = (targets == -1).all(axis=1, keepdims=True)
    targets[difficult_only & ~skipped] = 0.0
    return MultiLabelMetrics(label_names=label_names, num_classes=targets.shape[1]).compute_from(logits, targets)


_ROW_KEYS = ('mAP_interpolated', 'mAP_non_interpolated', 'CP', 'CR', 'CF1', 'OP', 'OR', 'OF1')


def format_row(results: Dict[str, Any], title: str, top_k: int = 3) -> str:
    """A Table 1/2-style header + row: both mAPs, CP … OF1 at threshold 0.5, and the top-k variants."""
    return format_rows([(title, results)], top_k)


def format_rows(rows: Sequence[Tuple[str, Dict[str, Any]]], top_k: int = 3) -> str:
    """One header and one row per ``(title, results)``, titles padded to one width (e.g. the two VOC rows)."""
    keys = list(_ROW_KEYS) + [f'{k}_top{top_k}' for k in ('CP', 'CR', 'CF1', 'OP', 'OR', 'OF1')]
    heads = ['mAP(interp)', 'mAP(non-interp)', 'CP', 'CR', 'CF1', 'OP', 'OR', 'OF1'] + \
            [f'{k}@top{top_k}' for k in ('CP', 'CR', 'CF1', 'OP', 'OR', 'OF1')]
    widths = [max(len(h), 6) for h in heads]
    tw = max(len(title) for title, _ in rows)
    lines = [f'{"":<{tw}} | ' + ' | '.join(f'{h:>{w}}' for h, w in zip(heads, widths))]
    for title, results in rows:
        lines.append(f'{title:<{tw}} | ' + ' | '.join(f'{results[k]:>{w}.2f}' for k, w in zip(keys, widths)))
    return '\n'.join(lines)
