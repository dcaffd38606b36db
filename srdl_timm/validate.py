"""``srdl-validate``: evaluate a multi-label timm model on COCO 2014, VOC 2007 or custom data (paper §4.1).

Prints a Table 1/2-style row (mAP in both AP definitions, CP, CR, CF1, OP, OR, OF1 and their top-3 variants) and
writes a JSON report with per-class AP by label name and the exact protocol (AP definitions, tie handling,
threshold, difficult policy, split and image counts, input size, interpolation, mean/std, checkpoint and its
sha256, precision settings, world size, versions).

Examples::

    srdl-validate --model srdl_resnet101 --pretrained --data coco --root /data/coco --split val
    srdl-validate --model resnet101 --checkpoint best.safetensors --data voc --root /data/VOCdevkit --split test \\
        --amp --channels-last --output voc07_test.json
    torchrun --nproc_per_node 8 -m srdl_timm.validate --model hf-hub:org/srdl_resnet101.coco --data coco ...

Under torchrun each rank evaluates a disjoint, unpadded slice of the dataset and the logits are gathered before
the metrics are computed, so every image counts exactly once. VOC is always evaluated with difficult-only entries
ignored. With ``--amp`` the backbone runs in the AMP dtype but, for models with ``forward_features`` /
``forward_head`` (every timm model), the head runs in float32 so AP is ranked on fp32 logits (checked against
``model(x)`` on the first batch; a model whose forward is not head∘features falls back to ``model(x)``).
"""
import argparse
import contextlib
import json
import logging
import math
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import timm
import torch
import torch.nn as nn
from timm.data import resolve_data_config
from tqdm import tqdm

import srdl_timm  # noqa: F401  (registers the srdl_* architectures with timm)
from srdl_timm.data import create_dataset, create_loader, create_transform
from srdl_timm.data.distributed import init_distributed_from_env, is_dist_initialized
from srdl_timm.data.images import ON_CORRUPT_CHOICES
from srdl_timm.metrics import MultiLabelMetrics
from .utils import parse_model_kwargs, sha256_file

__all__ = ['validate', 'main', 'build_parser', 'evaluate', 'AP_DEFINITIONS']

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

_DEFAULT_SPLIT = {'coco': 'val', 'voc': 'test', 'csv': 'val', 'coco-json': 'val'}


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
        raise TypeError(f'the model returned {type(out).__name__} in eval mode; srdl-validate needs logits [B, C]')
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
                raise ValueError(f'the model returned logits of shape {tuple(logits.shape)}, expected [B, C]')
            if index is not None:
                logits = logits[:, index.to(logits.device)]
            if logits.shape != targets.shape:
                raise ValueError(f'the model returned {logits.shape[1]} logits per image but the dataset has '
                                 f'{targets.shape[1]} classes (set --num-classes / use a matching checkpoint)')
            metrics.update(logits.float(), targets)
    result = metrics.compute()
    result['head_dtype'] = 'float32' if amp_dtype is None or split_head else str(amp_dtype).replace('torch.', '')
    return result




def build_parser() -> argparse.ArgumentParser:
    """The ``srdl-validate`` argument parser."""
    p = argparse.ArgumentParser(prog='srdl-validate', description=__doc__.split('\n\n')[0].replace('``', ''),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group('model')
    g.add_argument('--model', required=True, help='timm model name, optionally hf-hub:org/repo or local-dir:PATH')
    g.add_argument('--checkpoint', default=None, help='local weights (.safetensors or .pth) for --model')
    g.add_argument('--pretrained', action='store_true', help='load the model\'s pretrained (hub) weights')
    g.add_argument('--num-classes', type=int, default=None, help='classifier size (default: the dataset\'s)')
    g.add_argument('--model-kwargs', nargs='*', default=None, metavar='K=V', help='extra create_model kwargs')
    g = p.add_argument_group('data')
    g.add_argument('--data', required=True, choices=sorted(_DEFAULT_SPLIT), help='dataset format')
    g.add_argument('--root', required=True, help='dataset root folder')
    g.add_argument('--split', default=None, help='split (default: val for coco/csv/coco-json, test for voc)')
    g.add_argument('--ann-file', default=None, help='annotation file overriding the default path')
    g.add_argument('--image-dir', default=None, help='image folder overriding the default path')
    g.add_argument('--keep-empty', action='store_true', help='keep images without any label')
    g.add_argument('--on-corrupt', default='error', choices=ON_CORRUPT_CHOICES, help='unreadable images')
    g.add_argument('--img-size', type=int, default=None, help='eval input size (default: the model\'s config)')
    g.add_argument('--interpolation', default=None, help='override the model config\'s interpolation')
    g.add_argument('--mean', type=float, nargs=3, default=None, help='override the model config\'s mean')
    g.add_argument('--std', type=float, nargs=3, default=None, help='override the model config\'s std')
    g.add_argument('--batch-size', type=int, default=32, help='per-process batch size')
    g.add_argument('--workers', type=int, default=4, help='data loader workers')
    g = p.add_argument_group('run')
    g.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    g.add_argument('--amp', action='store_true', help='autocast the backbone (head stays float32)')
    g.add_argument('--amp-dtype', default='bfloat16', choices=('bfloat16', 'float16'))
    g.add_argument('--channels-last', action='store_true')
    g.add_argument('--seed', type=int, default=0, help='seed for a randomly initialised model')
    g.add_argument('--output', default=None, help='write the JSON report here')
    g.add_argument('--no-progress', action='store_true', help='no progress bar')
    g.add_argument('--log-level', default='INFO')
    return p


def _create_model(args: argparse.Namespace, num_classes: int) -> nn.Module:
    kwargs = parse_model_kwargs(args.model_kwargs)
    if args.checkpoint:
        if not os.path.isfile(args.checkpoint):
            raise FileNotFoundError(f'--checkpoint file not found: {args.checkpoint}')
        nc = args.num_classes or num_classes
        # num_classes in the overlay too, so timm keeps (and strictly loads) the checkpoint's classifier
        return timm.create_model(args.model, pretrained=True, num_classes=nc,
                                 pretrained_cfg_overlay=dict(file=os.path.abspath(args.checkpoint), num_classes=nc),
                                 **kwargs)
    if args.pretrained:
        if args.num_classes is not None:
            kwargs['num_classes'] = args.num_classes
        model = timm.create_model(args.model, pretrained=True, **kwargs)
        cfg_classes = (getattr(model, 'pretrained_cfg', None) or {}).get('num_classes')
        if cfg_classes is not None and cfg_classes != model.num_classes:
            raise ValueError(f'--num-classes {model.num_classes} differs from the pretrained weights\' {cfg_classes} '
                             f'classes: timm would evaluate a randomly initialised classifier')
        return model
    torch.manual_seed(args.seed)
    _logger.warning('no --checkpoint or --pretrained: evaluating randomly initialised weights (seed %d)', args.seed)
    return timm.create_model(args.model, num_classes=args.num_classes or num_classes, **kwargs)


def _class_index(model: nn.Module, label_names: List[str], has_weights: bool) -> Optional[List[int]]:
    """Map dataset classes to model outputs by name when the weights carry label names."""
    model_names = (getattr(model, 'pretrained_cfg', None) or {}).get('label_names')
    if not has_weights or not model_names or len(model_names) != getattr(model, 'num_classes', -1):
        return None
    model_names = [str(n) for n in model_names]
    if model_names == label_names:
        return None
    if sorted(model_names) == sorted(label_names):
        _logger.warning('the model\'s classes are in another order than the dataset\'s; re-ordering logits by name')
        return [model_names.index(n) for n in label_names]
    missing = sorted(set(label_names) - set(model_names))[:5]
    raise ValueError(f'the model\'s label names do not match the dataset\'s (dataset classes missing from the model: '
                     f'{missing}); evaluate on the data the weights were trained for')


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return _json_safe(x.tolist())
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


_ROW_KEYS = ('mAP_interpolated', 'mAP_non_interpolated', 'CP', 'CR', 'CF1', 'OP', 'OR', 'OF1')


def format_row(results: Dict[str, Any], title: str, top_k: int = 3) -> str:
    """A Table 1/2-style header + row: both mAPs, CP … OF1 at threshold 0.5, and the top-k variants."""
    keys = list(_ROW_KEYS) + [f'{k}_top{top_k}' for k in ('CP', 'CR', 'CF1', 'OP', 'OR', 'OF1')]
    heads = ['mAP(interp)', 'mAP(non-interp)', 'CP', 'CR', 'CF1', 'OP', 'OR', 'OF1'] + \
            [f'{k}@top{top_k}' for k in ('CP', 'CR', 'CF1', 'OP', 'OR', 'OF1')]
    widths = [max(len(h), 6) for h in heads]
    header = f'{"":<{len(title)}} | ' + ' | '.join(f'{h:>{w}}' for h, w in zip(heads, widths))
    row = f'{title} | ' + ' | '.join(f'{results[k]:>{w}.2f}' for k, w in zip(keys, widths))
    return header + '\n' + row


def evaluate(args: argparse.Namespace) -> Dict[str, Any]:
    """Run the evaluation described by parsed ``args`` and return the JSON report (rank 0 prints and writes it)."""
    device, rank, world = init_distributed_from_env(args.device)
    split = args.split or _DEFAULT_SPLIT[args.data]
    options: Dict[str, Any] = dict(keep_empty=args.keep_empty, on_corrupt=args.on_corrupt)
    if args.ann_file:
        options['ann_file'] = args.ann_file
    if args.image_dir:
        options['image_dir'] = args.image_dir
    if args.data == 'voc':
        options['difficult'] = 'ignore'  # standard VOC evaluation
    dataset = create_dataset(args.data, args.root, split, **options)

    model = _create_model(args, dataset.num_classes)
    # only hub/pretrained configs describe the weights' classes; a local checkpoint keeps the default cfg's names
    class_index = _class_index(model, dataset.label_names, bool(args.pretrained and not args.checkpoint))
    data_config = resolve_data_config({}, model=model)
    if args.img_size:
        data_config['input_size'] = (3, args.img_size, args.img_size)
    if args.interpolation:
        data_config['interpolation'] = args.interpolation
    if args.mean:
        data_config['mean'] = tuple(args.mean)
    if args.std:
        data_config['std'] = tuple(args.std)
    dataset.transform = create_transform(data_config, is_training=False)
    loader = create_loader(dataset, args.batch_size, is_training=False, num_workers=args.workers,
                           distributed=world > 1, pin_memory=device.type == 'cuda')
    amp_dtype = getattr(torch, args.amp_dtype) if args.amp else None
    results = validate(model, loader, device, amp_dtype=amp_dtype, channels_last=args.channels_last,
                       progress=not args.no_progress, class_index=class_index, label_names=dataset.label_names)

    names = dataset.label_names
    scalars = {k: v for k, v in results.items() if not isinstance(v, np.ndarray)}
    report = dict(
        model=args.model,
        checkpoint=dict(path=os.path.abspath(args.checkpoint), sha256=sha256_file(args.checkpoint))
        if args.checkpoint else None,
        pretrained=bool(args.pretrained),
        model_kwargs=parse_model_kwargs(args.model_kwargs),
        metrics=scalars,
        per_class_AP=dict(
            interpolated=dict(zip(names, results['AP_interpolated'].tolist())),
            non_interpolated=dict(zip(names, results['AP_non_interpolated'].tolist())),
        ),
        label_names=names,
        protocol=dict(
            ap_definitions=AP_DEFINITIONS,
            units='percent',
            threshold=results['threshold'],
            top_k=results['top_k'],
            topk_requires_threshold=True,
            difficult_policy=dataset.info.get('difficult_policy', 'n/a'),
            ignored_entries=results['num_ignored_entries'],
            dataset=dataset.info,
            split=split,
            num_images=len(dataset),
            num_images_evaluated=results['num_samples'],
            num_images_unreadable_skipped=results['num_samples_all_ignored'],
            input_size=list(data_config['input_size']),
            resize='squash to input_size (no centre crop)',
            interpolation=data_config.get('interpolation'),
            mean=list(data_config['mean']),
            std=list(data_config['std']),
            amp_dtype=args.amp_dtype if args.amp else None,
            head_dtype=results['head_dtype'],
            logits_dtype='float32',
            channels_last=bool(args.channels_last),
            batch_size=args.batch_size,
            world_size=world,
            class_reorder=class_index,
            versions=dict(srdl_timm=srdl_timm.__version__, timm=timm.__version__, torch=torch.__version__),
        ),
    )
    if results['num_samples'] != len(dataset):
        raise RuntimeError(f'evaluated {results["num_samples"]} samples but the dataset has {len(dataset)}')
    if rank == 0:
        print(format_row(results, f'{args.model} {args.data}/{split} ({results["num_samples"]:,} images)'))
        if args.output:
            out_dir = os.path.dirname(os.path.abspath(args.output))
            os.makedirs(out_dir, exist_ok=True)
            with open(args.output, 'w', encoding='utf-8') as f:
                json.dump(_json_safe(report), f, indent=2, allow_nan=False)
            print(f'wrote {args.output}')
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point of ``srdl-validate``; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    try:
        evaluate(args)
    finally:
        if is_dist_initialized():
            with contextlib.suppress(Exception):
                torch.distributed.destroy_process_group()
    return 0


if __name__ == '__main__':
    sys.exit(main())
