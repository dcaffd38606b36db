"""Multi-label predictions (and Figure-5 attention overlays) for image files: the library behind ``srdl-predict``.

Each image gets the labels :func:`select_labels` chooses by :func:`decision_thresholds` (a given threshold, else
the weights' per-class ones, else 0.5) and/or ``topk``; a failed input is kept with its reason.
"""
import csv
import dataclasses
import io
import json
import logging
import os
import sys
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader

from .data.inputs import IMAGE_EXTENSIONS, ImageFiles, InputItem, collate_items, collect_inputs
from .errors import InputError
from .labels import DEFAULT_THRESHOLD, model_label_thresholds
from .utils import jsonable

__all__ = [
    'IMAGE_EXTENSIONS', 'InputItem', 'Prediction', 'collect_inputs',
    'weights_summary', 'summary_lines', 'decision_thresholds', 'select_labels', 'predict_files', 'format_table',
    'format_json', 'format_csv', 'CSV_COLUMNS',
]

_logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Prediction:
    """The result for one input: ``path``, ``labels`` (``(label, index, score)``, by decreasing score), ``error``,
    image ``size`` and the ``explanations`` PNGs."""
    path: str
    labels: List[Tuple[str, int, float]] = dataclasses.field(default_factory=list)
    error: Optional[str] = None
    size: Optional[Tuple[int, int]] = None
    explanations: List[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the image was read and predicted."""
        return self.error is None

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready record: path, ok, labels (label / index / score), error, size, explanations."""
        return dict(
            path=self.path,
            ok=self.ok,
            labels=[dict(label=name, index=int(index), score=round(float(score), 6))
                    for name, index, score in self.labels],
            error=self.error,
            size=None if self.size is None else list(self.size),
            explanations=list(self.explanations),
        )


def weights_summary(model: nn.Module, label_names: Sequence[str], source: Optional[str] = None,
                    trained_on: Optional[str] = None) -> Dict[str, Any]:
    """What the loaded weights know: ``{'weights', 'num_labels', 'label_names', 'trained_on', 'note', 'attention'}``
    from the model's ``pretrained_cfg`` (``trained_on``: the given one, else its dataset/description); ``attention``
    warns when the model's maps are known not to be category-specific (the paper's head), else None."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    arch, tag = cfg.get('architecture'), cfg.get('tag')
    weights = (f'{arch}.{tag}' if arch and tag else arch) or type(model).__name__
    if source and source not in (weights, arch):
        weights = f'{weights} ({source})'
    backbone = getattr(model, 'backbone_name', None)
    if backbone:  # backbone= may have replaced the architecture's own: always say which
        weights = f'{weights}, backbone {backbone}'
    trained_on = trained_on or cfg.get('dataset') or cfg.get('description') or None
    n = len(label_names)
    note = (f'it scores only these {n} labels; any image gets {n} scores, so other content is not recognised '
            f'and can still score high')
    if trained_on:
        note += ' (best on images like its training data)'
    attention = None
    if getattr(model, 'attention', None) == 'paper' and getattr(model, 'use_sa', False):
        attention = ("the paper's spatial attention (eqs. 5-6) was measured to be one map shared by every class, "
                     'off the objects once the backbone is trained: its overlays do not show where each class is '
                     "(MODEL_CARD.md, 'Attention variants')")
    return dict(weights=weights, num_labels=n, label_names=list(label_names), trained_on=trained_on, note=note,
                attention=attention)


def summary_lines(summary: Dict[str, Any], max_names: int = 20) -> List[str]:
    """The header lines of :func:`weights_summary` (``# ...``), for the table output or stderr."""
    names = summary['label_names']
    shown = ', '.join(names[:max_names]) + (f', … ({len(names) - max_names} more)' if len(names) > max_names else '')
    lines = [f'# weights: {summary["weights"]}',
             f'# knows {summary["num_labels"]} labels: {shown}']
    if summary['trained_on']:
        lines.append(f'# trained on: {summary["trained_on"]}')
    lines.append(f'# note: {summary["note"]}')
    if summary.get('attention'):
        lines.append(f'# attention: {summary["attention"]}')
    return lines


def decision_thresholds(model: nn.Module, threshold: Optional[float] = None,
                        topk: Optional[int] = None) -> Dict[str, Any]:
    """Which thresholds decide the labels: ``threshold`` when given, none with ``topk`` alone, else the model's
    per-class thresholds, else 0.5. Returns ``{'threshold', 'source', 'description'}``."""
    if threshold is not None:
        return dict(threshold=float(threshold), source='given',
                    description=f'{threshold:g} for every class (given)'
                    + (f', at most the {topk} best' if topk else ''))
    if topk is not None:
        return dict(threshold=None, source='top-k only', description=f'none: the {topk} best labels of each image')
    tuned = model_label_thresholds(model)
    if tuned is not None:
        return dict(threshold=list(tuned.values), source='weights',
                    description=f'the weights\' own, {tuned.describe()}')
    return dict(threshold=DEFAULT_THRESHOLD, source='default',
                description=f'{DEFAULT_THRESHOLD} for every class (the weights carry no tuned thresholds)')


def select_labels(
        scores: np.ndarray, label_names: Sequence[str], threshold: Union[None, float, Sequence[float]] = None,
        topk: Optional[int] = None,
) -> List[Tuple[str, int, float]]:
    """Labels of one image by score: all >= ``threshold``, the ``topk`` best, or the ``topk`` best >= ``threshold``.

    ``threshold`` is one probability or one per class (:func:`decision_thresholds`); with neither it and ``topk``
    given it is 0.5. Ties keep the lower class index first. Returns ``(label, index, score)`` in decreasing score
    order.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if threshold is None and topk is None:
        threshold = DEFAULT_THRESHOLD
    order = np.argsort(-scores, kind='stable')
    if threshold is not None:
        cut = np.broadcast_to(np.asarray(threshold, dtype=np.float64), scores.shape)
        order = order[scores[order] >= cut[order]]
    if topk is not None:
        order = order[:topk]
    return [(str(label_names[i]), int(i), float(scores[i])) for i in order]


def _forward_scores(model: nn.Module, batch: torch.Tensor, amp_dtype: Optional[torch.dtype]) -> torch.Tensor:
    """Sigmoid scores ``[B, C]`` in float32; with AMP the backbone runs under autocast and the head in float32."""
    if amp_dtype is None:
        logits = model(batch)
    elif hasattr(model, 'forward_features') and hasattr(model, 'forward_head'):
        with torch.autocast(device_type=batch.device.type, dtype=amp_dtype):
            features = model.forward_features(batch)
        with torch.autocast(device_type=batch.device.type, enabled=False):
            logits = model.forward_head(features.float())
    else:
        with torch.autocast(device_type=batch.device.type, dtype=amp_dtype):
            logits = model(batch)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise InputError('the model must return logits [B, C] in eval mode')
    return torch.sigmoid(logits.float())


def _unique_stem(path: str, used: set) -> str:
    base = os.path.splitext(os.path.basename(path))[0] or 'image'
    stem, n = base, 1
    while stem in used:
        n += 1
        stem = f'{base}-{n}'
    used.add(stem)
    return stem


def _check_outputs(model: nn.Module, label_names: Sequence[str], threshold: Union[None, float, Sequence[float]],
                   scores: Optional[int] = None) -> None:
    """The label names (and thresholds, and the scores per image returned) match the model's outputs."""
    num_classes = getattr(model, 'num_classes', len(label_names))
    if scores is not None and scores != len(label_names):
        raise InputError(f'the model returned {scores} scores per image for {len(label_names)} label names')
    if len(label_names) != num_classes:
        raise InputError(f'{len(label_names)} label names for a model with {num_classes} outputs')
    if threshold is not None and np.ndim(threshold) and len(threshold) != num_classes:
        raise InputError(f'{len(threshold)} thresholds for a model with {num_classes} outputs')


def _keep_decoded(batch_items: List[Dict[str, Any]], results: List[Prediction]) -> List[Dict[str, Any]]:
    """The decoded items of a batch; records the error of each other one in its result (``results``: per index)."""
    for it in batch_items:
        if it['error'] is not None:
            results[it['index']].error = it['error']
            _logger.warning('%s: %s', results[it['index']].path, it['error'])
    return [it for it in batch_items if it['error'] is None]


def predict_files(
        model: nn.Module,
        items: Sequence[InputItem],
        label_names: Sequence[str],
        transform: Optional[Callable[[Image.Image], torch.Tensor]] = None,
        threshold: Union[None, float, Sequence[float]] = None,
        topk: Optional[int] = None,
        batch_size: int = 16,
        device: Optional[torch.device] = None,
        amp_dtype: Optional[torch.dtype] = None,
        channels_last: bool = False,
        workers: int = 0,
        explain_dir: Optional[str] = None,
        explain_topk: int = 3,
        explain_erase: bool = False,
        erase_alpha: Optional[float] = None,
        progress: bool = False,
) -> List[Prediction]:
    """Predict labels for every input, one :class:`Prediction` per item, in input order.

    Args:
        model: timm model returning logits ``[B, C]``; moved to ``device`` and put in eval mode.
        items: from :func:`collect_inputs`; items that already failed are passed through.
        label_names: one name per output.
        threshold / topk: label selection (:func:`select_labels`).
        transform, batch_size, device, amp_dtype, channels_last, workers, progress: the forward pass.
        explain_dir, explain_topk, explain_erase, erase_alpha: write Figure-5 attention overlays here (SRDL only).
    """
    from .explain import default_eval_transform, explain_batch, save_explanation
    if batch_size < 1:
        raise InputError(f'batch_size must be >= 1, got {batch_size}')
    if device is None:
        device = next(model.parameters()).device
    model.eval().to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if transform is None:
        transform = default_eval_transform(model)
    _check_outputs(model, label_names, threshold)
    results: List[Prediction] = [Prediction(item.path, error=item.error) for item in items]
    todo = [i for i, item in enumerate(items) if item.error is None]
    pending = [results[i] for i in todo]
    dataset = ImageFiles([items[i].path for i in todo], transform, keep_image=explain_dir is not None)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_items)
    used_stems: set = set()
    batches: Iterable = loader
    if progress:
        from tqdm import tqdm
        batches = tqdm(loader, desc='predict', dynamic_ncols=True, file=sys.stderr)
    with torch.inference_mode():
        for batch_items in batches:
            good = _keep_decoded(batch_items, pending)
            if not good:
                continue
            batch = torch.stack([it['tensor'] for it in good]).to(device, non_blocking=True)
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            explained: Optional[List[Dict[str, Any]]] = None
            if explain_dir is not None:
                explained = explain_batch(model, batch, [it['size'] for it in good], explain_topk, label_names,
                                          erase=explain_erase, erase_alpha=erase_alpha, amp_dtype=amp_dtype,
                                          upsample=False)
                scores = np.stack([e['probabilities'] for e in explained])
            else:
                scores = _forward_scores(model, batch, amp_dtype).cpu().numpy()
            _check_outputs(model, label_names, None, scores.shape[1])
            for j, it in enumerate(good):
                result = pending[it['index']]
                result.labels = select_labels(scores[j], label_names, threshold, topk)
                result.size = tuple(it['size'])
                if explained is not None:
                    assert explain_dir is not None
                    stem = _unique_stem(result.path, used_stems)
                    result.explanations = save_explanation(it['image'], explained[j], explain_dir, stem,
                                                           erase=explain_erase)
    return results


def format_table(predictions: Sequence[Prediction], decimals: int = 3, header: Sequence[str] = ()) -> str:
    """Plain-text table: ``header`` lines (e.g. :func:`summary_lines`), then one row per input (``label score``
    pairs or ``ERROR: …``) and a summary line at the end."""
    width = max([len('image')] + [len(p.path) for p in predictions])
    lines = list(header) + [f'{"image":<{width}}  labels']
    for p in predictions:
        if p.ok:
            cell = ', '.join(f'{name} {score:.{decimals}f}' for name, _, score in p.labels) or '(none)'
        else:
            cell = f'ERROR: {p.error}'
        lines.append(f'{p.path:<{width}}  {cell}')
    failed = sum(not p.ok for p in predictions)
    lines.append(f'{len(predictions) - failed} predicted, {failed} failed')
    return '\n'.join(lines) + '\n'


def format_json(predictions: Sequence[Prediction], meta: Optional[Dict[str, Any]] = None) -> str:
    """JSON document: ``meta`` fields, ``num_inputs``, ``num_failed`` and ``results`` (see ``Prediction.to_dict``)."""
    doc: Dict[str, Any] = dict(meta or {})
    doc['num_inputs'] = len(predictions)
    doc['num_failed'] = sum(not p.ok for p in predictions)
    doc['results'] = [p.to_dict() for p in predictions]
    return json.dumps(jsonable(doc), indent=2, allow_nan=False) + '\n'


#: columns of ``--format csv``
CSV_COLUMNS = ('path', 'ok', 'rank', 'label', 'index', 'score', 'error')


def format_csv(predictions: Sequence[Prediction]) -> str:
    """CSV with one row per (image, label) (:data:`CSV_COLUMNS`); an image without labels or a failed input has
    one row with empty label columns (and the error)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(CSV_COLUMNS)
    for p in predictions:
        if p.ok and p.labels:
            for rank, (name, index, score) in enumerate(p.labels, start=1):
                writer.writerow([p.path, 1, rank, name, index, f'{score:.6f}', ''])
        else:
            writer.writerow([p.path, int(p.ok), '', '', '', '', p.error or ''])
    return buffer.getvalue()
