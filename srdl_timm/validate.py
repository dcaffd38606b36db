"""Evaluate a multi-label timm model (paper §4.1): the library behind ``srdl-validate``.

:func:`evaluate_dataset` evaluates a model on a dataset split and builds the JSON report with its exact protocol;
:func:`validate` runs a model over a loader and returns the metrics. Thresholds tuned on the evaluated split are
never reported on it; under torchrun each rank evaluates a disjoint, unpadded slice.
"""
import dataclasses
import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
import torch.nn as nn
from timm.data import resolve_data_config
from tqdm import tqdm

import srdl_timm
from .data import (
    DEFAULT_SPLITS, LABELS_FROM_FILE, create_multilabel_dataset, create_multilabel_loader, create_paper_transform,
    init_distributed_from_env, is_dist_initialized)
from .errors import InputError
from .labels import (
    LabelThresholds, model_label_names, model_label_thresholds, read_thresholds_file, same_split, split_fingerprint,
    tune_thresholds)
from .loading import ModelSpec, load_model_from_spec, read_model_config
from .metrics import MultiLabelMetrics
from .utils import atomic_write_json, sha256_file

__all__ = ['validate', 'format_rows', 'voc_difficult_negative', 'class_index_by_name', 'AP_DEFINITIONS',
           'DIFFICULT_POLICY_NAMES', 'THRESHOLDS_FROM_WEIGHTS', 'Evaluation', 'evaluate_dataset']

_logger = logging.getLogger(__name__)

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
        loader: ``(images, targets)`` batches, targets 1 / 0 / -1 (ignore); a disjoint slice per rank under DDP.
        device, amp_dtype, channels_last, progress: the forward pass.
        class_index: logits columns to take, in the dataset's class order.
        fp32_head: with AMP, run ``forward_head`` in float32 on float32 features so AP is ranked on fp32 logits.
        label_names: class names for the metrics (optional).
        return_outputs: also return the gathered ``logits`` and ``targets`` (``[N, C]``, dataset order).

    Returns:
        The metrics in percent, plus ``head_dtype`` (the dtype the classifier ran in).
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
    """Logit columns in the dataset's class order, matched by name, or None when no re-ordering is needed;
    an :class:`InputError` when the model's label names are not the dataset's."""
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
    """Metrics with VOC's difficult-only entries (``difficult_only`` ``[N, C]``) counted negative instead of
    ignored, from :func:`validate`'s ``logits`` and ``targets``; wholly ignored rows stay ignored."""
    targets = np.array(targets, dtype=np.float32, copy=True)
    difficult_only = np.asarray(difficult_only, dtype=bool)
    if difficult_only.shape != targets.shape:
        raise InputError(f'difficult_only has shape {difficult_only.shape}, targets {targets.shape}')
    skipped = (targets == -1).all(axis=1, keepdims=True)
    targets[difficult_only & ~skipped] = 0.0
    return MultiLabelMetrics(label_names=label_names, num_classes=targets.shape[1]).compute_from(logits, targets)


_ROW_KEYS = ('mAP_interpolated', 'mAP_non_interpolated', 'CP', 'CR', 'CF1', 'OP', 'OR', 'OF1')


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


#: ``thresholds=`` value of :func:`evaluate_dataset` (``srdl-validate --thresholds``) for the weights' own thresholds
THRESHOLDS_FROM_WEIGHTS = 'from-weights'


def _given_thresholds(source: str, model: nn.Module, model_names: Optional[List[str]],
                      evaluated: Dict[str, Any]) -> LabelThresholds:
    """The thresholds ``source`` names (the weights' own or a file), refused when tuned on the evaluated split."""
    if source == THRESHOLDS_FROM_WEIGHTS:
        thresholds = model_label_thresholds(model)
        if thresholds is None:
            raise InputError('--thresholds from-weights: these weights carry no decision thresholds (srdl-train tunes '
                             'them on its validation split; or tune them on a held-out split with srdl-validate '
                             '--tune-thresholds FILE and pass --thresholds FILE)')
    else:
        thresholds = read_thresholds_file(source, getattr(model, 'num_classes', None), model_names)
    if same_split(thresholds.tuned_on, evaluated):
        tuned_on = thresholds.tuned_on or {}
        raise InputError(f'--thresholds {source}: they were tuned on {tuned_on.get("data")} split '
                         f'{tuned_on.get("split")!r} ({tuned_on.get("num_images")} images), the split evaluated here; '
                         'metrics at thresholds tuned on the same images overstate them. Evaluate another split '
                         '(e.g. --split test), or tune on a held-out split with --tune-thresholds')
    return thresholds


def _in_order(values: Sequence[float], index: Optional[Sequence[int]]) -> List[float]:
    """Per-class values of the model's outputs in the dataset's class order (``index``: the logit columns)."""
    return [float(values[i]) for i in index] if index is not None else [float(v) for v in values]


@dataclasses.dataclass
class Evaluation:
    """What :func:`evaluate_dataset` found: the JSON ``report``, the ``rows`` to print with :func:`format_rows`
    and this process's ``rank`` (only rank 0 prints or writes)."""
    report: Dict[str, Any]
    rows: List[Tuple[str, Dict[str, Any]]]
    rank: int = 0


def _checkpoint_record(path: Optional[str]) -> Optional[Dict[str, Any]]:
    if not path:
        return None
    record: Dict[str, Any] = dict(path=os.path.abspath(path))
    if os.path.isfile(path):
        record['sha256'] = sha256_file(path)
    return record


def _scalars(results: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in results.items() if not isinstance(v, np.ndarray)}


def _per_class(results: Dict[str, Any], names: Sequence[str]) -> Dict[str, Any]:
    return dict(interpolated=dict(zip(names, results['AP_interpolated'].tolist())),
                non_interpolated=dict(zip(names, results['AP_non_interpolated'].tolist())))


def evaluate_dataset(
        spec: ModelSpec,
        data: str,
        root: str,
        split: Optional[str] = None,
        *,
        ann_file: Optional[str] = None,
        image_dir: Optional[str] = None,
        keep_empty: bool = False,
        on_corrupt: str = 'error',
        img_size: Optional[int] = None,
        interpolation: Optional[str] = None,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        batch_size: int = 32,
        workers: int = 4,
        device: str = 'cpu',
        amp_dtype: Optional[str] = None,
        channels_last: bool = False,
        seed: int = 0,
        progress: bool = False,
        thresholds: Optional[str] = None,
        tune_thresholds_file: Optional[str] = None,
) -> Evaluation:
    """Evaluate the model of ``spec`` on a dataset split (paper §4.1): ``srdl-validate`` without its printing.

    Args:
        spec: the model (:func:`srdl_timm.loading.load_model_from_spec`).
        data, root, split: dataset format, folder and split (default: the format's evaluation split).
        ann_file, image_dir, keep_empty, on_corrupt: dataset options.
        img_size, interpolation, mean, std: overrides of timm's data config of the model.
        batch_size, workers, device, amp_dtype, channels_last, progress: loader and :func:`validate` options.
        seed: torch seed before building a ``random_init`` model.
        thresholds: also report CP … OF1 at :data:`THRESHOLDS_FROM_WEIGHTS` or a thresholds file's values.
        tune_thresholds_file: tune per-class thresholds (best F1) on this split and write them there.
    """
    device_, rank, world = init_distributed_from_env(device)
    split = split or DEFAULT_SPLITS[data][1]
    dataset, model, weights_names = _dataset_and_model(spec, data, root, split, seed, dict(
        keep_empty=keep_empty, on_corrupt=on_corrupt, ann_file=ann_file or None, image_dir=image_dir or None))
    class_index = None if spec.random_init else class_index_by_name(model, dataset.label_names)
    data_config = _data_config(model, img_size, interpolation, mean, std)
    dataset.transform = create_paper_transform(data_config, is_training=False)
    loader = create_multilabel_loader(dataset, batch_size, is_training=False, num_workers=workers,
                                      distributed=world > 1, pin_memory=device_.type == 'cuda')
    evaluated_split = split_fingerprint(dataset.image_paths, root, data, split)
    given = _given_thresholds(thresholds, model, weights_names, evaluated_split) if thresholds else None
    results = validate(model, loader, device_, amp_dtype=getattr(torch, amp_dtype) if amp_dtype else None,
                       channels_last=channels_last, progress=progress, class_index=class_index,
                       label_names=dataset.label_names, return_outputs=True)
    logits, targets = results.pop('logits'), results.pop('targets')
    if results['num_samples'] != len(dataset):
        raise RuntimeError(f'evaluated {results["num_samples"]} samples but the dataset has {len(dataset)}')
    # an unreadable image skipped by on_corrupt='skip' comes back as an all-ignore row the dataset did not have
    skipped = results['num_samples_all_ignored'] - int((dataset.targets == -1).all(axis=1).sum())
    names = dataset.label_names
    report = _report(spec, results, dataset, split, skipped, data_config, dict(
        amp_dtype=amp_dtype, head_dtype=results['head_dtype'], logits_dtype='float32',
        channels_last=bool(channels_last), batch_size=batch_size, world_size=world, class_reorder=class_index))
    title = _title(spec, data, split, dataset, skipped)
    rows = _policy_rows(report, title, results, dataset, logits, targets, data == 'voc')
    if given is not None:
        rows.append(_at_thresholds(report, title, given, thresholds, class_index, names, logits, targets))
    if tune_thresholds_file:
        tuned = tune_thresholds(logits, targets, label_names=names, tuned_on=evaluated_split, tool='srdl-validate')
        _write_tuned(report, tuned, tune_thresholds_file, class_index, weights_names or names,
                     spec.checkpoint or spec.model, rank)
    return Evaluation(report=report, rows=rows, rank=rank)


def _dataset_and_model(spec: ModelSpec, data: str, root: str, split: str, seed: int,
                       options: Dict[str, Any]) -> Tuple[Any, nn.Module, Optional[List[str]]]:
    """The dataset, the model and the weights' label names; a CSV without ``classes.txt`` takes the weights' label
    set (a label the weights do not know is then an error naming the CSV line; an absent one has no AP)."""
    options = {k: v for k, v in options.items() if v is not None}
    if data == 'voc':
        options['difficult'] = 'ignore'  # standard VOC evaluation; 'negative' is computed from the same logits
    dataset = create_multilabel_dataset(data, root, split, **options)
    if spec.random_init:
        torch.manual_seed(seed)
    names_from_file = dataset.info.get('label_names_from') == LABELS_FROM_FILE
    bare_checkpoint = bool(spec.checkpoint) and not read_model_config(spec.checkpoint)
    model = load_model_from_spec(spec, num_classes=None if names_from_file and not (spec.random_init or bare_checkpoint)
                                 else dataset.num_classes)
    weights_names = None if spec.random_init else model_label_names(model)
    if names_from_file and weights_names and weights_names != dataset.label_names:
        _logger.info('%s: classes taken from the weights (%d label names), not from the labels in the file',
                     dataset.info.get('name', data), len(weights_names))
        dataset = create_multilabel_dataset(data, root, split, label_names=weights_names,  # (files checked above)
                                            label_names_from=f'the weights ({spec.checkpoint or spec.model})',
                                            check_files=False, **options)
    if getattr(model, 'num_classes', None) != dataset.num_classes:
        raise InputError(f'the weights ({spec.checkpoint or spec.model}) have {getattr(model, "num_classes", 0)} '
                         f'classes but {dataset.info.get("name", data)} has {dataset.num_classes}: evaluate on '
                         f'the label set the weights were trained on')
    return dataset, model, weights_names


def _data_config(model: nn.Module, img_size: Optional[int], interpolation: Optional[str],
                 mean: Optional[Sequence[float]], std: Optional[Sequence[float]]) -> Dict[str, Any]:
    """timm's data config of ``model`` (input channels and size, interpolation, mean, std) with the overrides."""
    data_config = resolve_data_config({}, model=model)
    if img_size:
        data_config['input_size'] = (data_config['input_size'][0], img_size, img_size)
    if interpolation:
        data_config['interpolation'] = interpolation
    if mean:
        data_config['mean'] = tuple(mean)
    if std:
        data_config['std'] = tuple(std)
    return data_config


def _report(spec: ModelSpec, results: Dict[str, Any], dataset: Any, split: str, skipped: int,
            data_config: Dict[str, Any], run: Dict[str, Any]) -> Dict[str, Any]:
    """The JSON report: model, metrics, per-class AP and the ``protocol`` (AP definitions, dataset, preprocessing
    and the run's settings ``run``)."""
    protocol = dict(
        ap_definitions=AP_DEFINITIONS, units='percent', threshold=results['threshold'], top_k=results['top_k'],
        topk_requires_threshold=True, difficult_policy=dataset.info.get('difficult_policy', 'n/a'),
        ignored_entries=results['num_ignored_entries'], unknown_entries=dataset.info.get('unknown_entries'),
        dataset=dataset.info, split=split, num_images=len(dataset),
        num_images_evaluated=results['num_samples'] - skipped, num_images_unreadable_skipped=skipped,
        input_size=list(data_config['input_size']), resize='squash to input_size (no centre crop)',
        interpolation=data_config.get('interpolation'), mean=list(data_config['mean']),
        std=list(data_config['std']), **run,
        versions=dict(srdl_timm=srdl_timm.__version__, timm=timm.__version__, torch=torch.__version__))
    names = dataset.label_names
    return dict(
        model=spec.model, checkpoint=_checkpoint_record(spec.checkpoint),
        pretrained=not spec.checkpoint and not spec.random_init, random_init=bool(spec.random_init),
        model_kwargs=dict(spec.model_kwargs), metrics=_scalars(results), per_class_AP=_per_class(results, names),
        label_names=names, protocol=protocol)


def _title(spec: ModelSpec, data: str, split: str, dataset: Any, skipped: int) -> str:
    count = (f'{len(dataset) - skipped:,} images evaluated, {skipped:,} unreadable skipped' if skipped
             else f'{len(dataset):,} images')
    title = f'{spec.model or os.path.basename(spec.checkpoint or "")} {data}/{split} ({count})'
    if dataset.info.get('unknown_entries'):
        title += f' [{dataset.info["unknown_entries"]:,} entries not annotated]'
    return title


def _policy_rows(report: Dict[str, Any], title: str, results: Dict[str, Any], dataset: Any, logits: np.ndarray,
                 targets: np.ndarray, is_voc: bool) -> List[Tuple[str, Dict[str, Any]]]:
    """The rows to print; on VOC one per difficult policy, also written to ``report``."""
    if not is_voc:
        return [(title, results)]
    names = dataset.label_names
    by_policy = {'ignore': results,
                 'negative': voc_difficult_negative(logits, targets, dataset.difficult_only, names)}
    report['metrics_by_difficult_policy'] = {
        policy: dict(description=DIFFICULT_POLICY_NAMES[policy], metrics=_scalars(r), per_class_AP=_per_class(r, names))
        for policy, r in by_policy.items()}
    return [(f'{title} difficult={policy}: {DIFFICULT_POLICY_NAMES[policy]}', r) for policy, r in by_policy.items()]


def _at_thresholds(report: Dict[str, Any], title: str, given: LabelThresholds, thresholds: str,
                   class_index: Optional[List[int]], names: List[str], logits: np.ndarray,
                   targets: np.ndarray) -> Tuple[str, Dict[str, Any]]:
    """CP … OF1 at the per-class thresholds ``given``, written to ``report``; returns their row."""
    at = MultiLabelMetrics(label_names=names, num_classes=len(names),
                           threshold=_in_order(given.values, class_index)).compute_from(logits, targets)
    source = 'the weights\' own' if thresholds == THRESHOLDS_FROM_WEIGHTS else thresholds
    report['metrics_at_thresholds'] = {k: v for k, v in _scalars(at).items() if not k.startswith('mAP')}
    report['thresholds'] = dict(source=source, description=given.describe(), info=given.info,
                                per_class=dict(zip(names, at['threshold'])))
    return f'{title} at per-class thresholds ({source})', at


def _write_tuned(report: Dict[str, Any], tuned: LabelThresholds, path: str, class_index: Optional[List[int]],
                 label_names: List[str], weights: Optional[str], rank: int) -> None:
    """Write thresholds tuned on the evaluated split to ``path`` in the model's output order (rank 0)."""
    if class_index is not None:
        back = [0.0] * len(label_names)
        for column, i in enumerate(class_index):
            back[i] = tuned.values[column]
        tuned = LabelThresholds(tuple(back), tuned.info)
    if rank == 0:
        atomic_write_json(path, dict(tuned.to_json(), label_names=label_names, weights=weights))
    report['tuned_thresholds'] = dict(file=os.path.abspath(path), description=tuned.describe(), **tuned.to_json(),
                                      note='tuned on this split, so not evaluated on it: report them on another '
                                           'split with --thresholds FILE')
