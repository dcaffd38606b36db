"""Evaluation statistics: metrics from logits, the hierarchical (seeds x test images) bootstrap of mAP differences,
ground-truth boxes."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from srdl_timm.metrics import MultiLabelMetrics

from .config import SCALAR_METRICS


def predict_logits(model: nn.Module, loader: Any, device: torch.device, amp_dtype: Optional[torch.dtype] = None
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """float32 logits and targets of ``model`` (eval mode) over ``loader``; with AMP the backbone runs in
    ``amp_dtype`` and the head in float32 (as :func:`srdl_timm.validate.validate`)."""
    model.eval()
    logits, targets = [], []
    with torch.inference_mode():
        for images, target in loader:
            images = images.to(device)
            if amp_dtype is not None:
                with torch.autocast(device_type=device.type, dtype=amp_dtype):
                    feat = model.forward_features(images)
                out = model.forward_head(feat.float())
            else:
                out = model(images)
            logits.append(out.float().cpu())
            targets.append(target.float())
    return torch.cat(logits), torch.cat(targets)


def metrics_from_logits(logits: torch.Tensor, targets: torch.Tensor, label_names: Sequence[str]) -> Dict[str, Any]:
    """:class:`srdl_timm.metrics.MultiLabelMetrics` of a whole split: scalar metrics (percent) and per-class AP by
    class name in both definitions."""
    metrics = MultiLabelMetrics(label_names=label_names)
    metrics.update(logits, targets)
    result = metrics.compute(distributed=False)
    out: Dict[str, Any] = {k: float(result[k]) for k in SCALAR_METRICS if k in result}
    out['num_samples'] = int(result['num_samples'])
    out['per_class_AP'] = {
        'interpolated': dict(zip(label_names, result['AP_interpolated'].tolist())),
        'non_interpolated': dict(zip(label_names, result['AP_non_interpolated'].tolist())),
    }
    return out


def resampled_average_precision(scores: np.ndarray, targets: np.ndarray, weights: np.ndarray,
                                interpolated: bool = True, chunk_elements: int = 1 << 24) -> np.ndarray:
    """Per-class AP of bootstrap resamples given as sample multiplicities, without materialising the resamples.

    A resample that draws sample ``i`` ``w[i]`` times has, in every class's score order, true/false-positive counts
    ``cumsum(w * y)`` / ``cumsum(w * (1 - y))``; tied scores are evaluated once per tied group, exactly as
    :func:`srdl_timm.metrics.average_precision` (which this equals for ``weights`` of ones, and for a resample
    equals it on the explicitly duplicated data). Entries with target -1 are left out.

    Args:
        scores: ``[N, C]`` logits.
        targets: ``[N, C]`` with 1 / 0 / -1.
        weights: ``[R, N]`` non-negative multiplicities (one row per resample).
        interpolated: all-point interpolated (True) or non-interpolated AP.
        chunk_elements: resamples are processed in blocks of about this many ``R x N`` elements.

    Returns:
        ``[R, C]`` AP as fractions; NaN where a resample holds no positive of that class.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    weights = np.asarray(weights, dtype=np.float64)
    num_resamples, num_samples = weights.shape
    out = np.full((num_resamples, scores.shape[1]), np.nan)
    step = max(1, chunk_elements // max(1, num_samples))
    for c in range(scores.shape[1]):
        valid = targets[:, c] != -1
        order = np.argsort(-scores[valid, c], kind='stable')
        s = scores[valid, c][order]
        positive = (targets[valid, c] == 1)[order].astype(np.float64)
        last = np.r_[s[1:] != s[:-1], True]
        for r0 in range(0, num_resamples, step):
            w = weights[r0:r0 + step][:, valid][:, order]
            tp = np.cumsum(w * positive, axis=1)[:, last]
            fp = np.cumsum(w * (1.0 - positive), axis=1)[:, last]
            num_pos = tp[:, -1:]
            with np.errstate(invalid='ignore', divide='ignore'):
                precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-300), 0.0)
                if interpolated:
                    precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
                recall = tp / num_pos
                recall_step = np.diff(recall, axis=1, prepend=0.0)
                ap = np.sum(recall_step * precision, axis=1)
            ap[num_pos[:, 0] <= 0] = np.nan
            out[r0:r0 + step, c] = ap
    return out


def hierarchical_bootstrap(logits_a: Sequence[np.ndarray], logits_b: Sequence[np.ndarray], targets: np.ndarray,
                           num_resamples: int = 1000, seed: int = 0, mode: str = 'interpolated') -> Dict[str, Any]:
    """Interval for the mAP difference of two rows that includes the spread between training seeds.

    Two-level paired bootstrap: each resample draws the *training seeds* with replacement (the same draw for both
    rows, which are paired by seed) and, independently, the *test images* with replacement (one draw shared by every
    run of the resample), and computes ``mean over the drawn seeds of [mAP(a_s) - mAP(b_s)]`` on the drawn images
    (classes without a positive among them are left out of both). So the interval reflects both how the
    difference depends on which models training happened to produce and on which test images happened to be
    drawn. With few seeds the seed level is coarse (3 seeds: 10 distinct draws); ``per_seed`` gives the
    differences themselves.

    Args:
        logits_a / logits_b: per seed, test logits ``[N, C]`` of row a and row b (same seeds, same order).
        targets: ``[N, C]`` test targets.
        num_resamples: bootstrap resamples (0: only the point estimate).
        seed: resampling seed.
        mode: AP definition, 'interpolated' or 'non_interpolated'.

    Returns:
        ``diff`` (mean over seeds on the whole test set, percent), ``per_seed`` (each seed's difference),
        ``ci_low`` / ``ci_high`` (2.5 / 97.5 percentiles), ``frac_le_0`` (share of resamples with a difference
        <= 0), ``resamples``, ``method`` ('hierarchical: seeds and test images').
    """
    if len(logits_a) != len(logits_b) or not logits_a:
        raise ValueError('hierarchical_bootstrap needs the same (non-zero) number of runs for both rows')
    if mode not in ('interpolated', 'non_interpolated'):
        raise ValueError(f'unknown AP mode {mode!r}')
    n, num_seeds = targets.shape[0], len(logits_a)
    rng = np.random.default_rng(seed)
    weights = np.ones((1, n))
    if num_resamples > 0:
        draws = rng.integers(0, n, size=(num_resamples, n))
        weights = np.concatenate([weights, np.stack([np.bincount(d, minlength=n) for d in draws])])
    per_seed = np.zeros((num_seeds, weights.shape[0]))  # [seed, resample] mAP difference on that image draw
    for s, (a, b) in enumerate(zip(logits_a, logits_b)):
        ap_a = resampled_average_precision(a, targets, weights, mode == 'interpolated')
        ap_b = resampled_average_precision(b, targets, weights, mode == 'interpolated')
        both = np.isfinite(ap_a) & np.isfinite(ap_b)
        per_seed[s] = (np.where(both, ap_a - ap_b, 0).sum(1)) / np.maximum(both.sum(1), 1) * 100.0
    point = float(per_seed[:, 0].mean())
    result: Dict[str, Any] = {'diff': point, 'per_seed': per_seed[:, 0].tolist(), 'ci_low': point, 'ci_high': point,
                              'frac_le_0': float(point <= 0), 'resamples': 0,
                              'method': 'hierarchical: seeds and test images'}
    if num_resamples > 0:
        seed_draws = rng.integers(0, num_seeds, size=(num_resamples, num_seeds))
        values = per_seed[seed_draws, np.arange(1, num_resamples + 1)[:, None]].mean(1)
        result.update(ci_low=float(np.percentile(values, 2.5)), ci_high=float(np.percentile(values, 97.5)),
                      frac_le_0=float(np.mean(values <= 0)), resamples=int(num_resamples))
    return result


def load_boxes(dataset: Any) -> Optional[List[Dict[int, List[Tuple[float, float, float, float]]]]]:
    """Ground-truth boxes of a COCO-format dataset, per sample: ``{class index: [(x0, y0, x1, y1), ...]}`` in pixels
    of the original image, plus the image size under key -1 as ``[(0, 0, width, height)]``; None for datasets
    without COCO annotations (VOC)."""
    from srdl_timm.data import load_coco_json
    ann_file = getattr(dataset, 'info', {}).get('ann_file')
    if not ann_file or not hasattr(dataset, 'image_ids') or not hasattr(dataset, 'category_ids'):
        return None
    data = load_coco_json(ann_file)
    column = {cid: i for i, cid in enumerate(dataset.category_ids)}
    sizes = {img['id']: (float(img.get('width', 0)), float(img.get('height', 0))) for img in data['images']}
    per_image: Dict[Any, Dict[int, List[Tuple[float, float, float, float]]]] = {}
    for ann in data['annotations']:
        bbox = ann.get('bbox')
        if not bbox or len(bbox) != 4 or ann['category_id'] not in column:
            continue
        x, y, w, h = (float(v) for v in bbox)
        per_image.setdefault(ann['image_id'], {}).setdefault(column[ann['category_id']], []).append(
            (x, y, x + w, y + h))
    out = []
    for image_id in dataset.image_ids:
        boxes = dict(per_image.get(image_id, {}))
        width, height = sizes.get(image_id, (0.0, 0.0))
        boxes[-1] = [(0.0, 0.0, width, height)]
        out.append(boxes)
    return out


def summarize(values: Sequence[float]) -> Dict[str, Any]:
    """Mean, sample standard deviation (ddof=1; 0 for one value), n and the values."""
    v = np.asarray(values, dtype=np.float64)
    return {'mean': float(v.mean()), 'std': float(v.std(ddof=1)) if len(v) > 1 else 0.0, 'n': int(len(v)),
            'values': v.tolist()}
