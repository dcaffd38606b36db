"""``srdl-validate``: evaluate a multi-label timm model on COCO 2014, VOC 2007 or custom data (paper §4.1).

Prints a Table 1/2-style row (mAP in both AP definitions, CP, CR, CF1, OP, OR, OF1 and their top-3 variants) and
writes a JSON report with per-class AP by label name and the exact protocol (AP definitions, tie handling,
threshold, difficult policy, split and image counts, input size, interpolation, mean/std, checkpoint and its
sha256, precision settings, world size, versions). On VOC two rows are printed and reported: difficult-only
entries ignored (standard) and counted negative (the authors' lab convention), from the same logits.

The model is loaded strictly (:func:`srdl_timm.loading.load_model`): a training run's checkpoint rebuilds its
architecture from the ``train_config.json`` beside it; weights that do not fit, or whose classes are not the
dataset's, are an error. A progress bar shows on a terminal (``--quiet`` hides it).

Examples::

    srdl-validate --checkpoint run/model.safetensors --data csv --root data/ --split val
    srdl-validate --model hf-hub:org/srdl_resnet101.coco --data coco --root /data/coco --split val --amp
    srdl-validate --checkpoint best.safetensors --data voc --root /data/VOCdevkit --output voc07_test.json
    torchrun --nproc_per_node 8 -m srdl_timm.cli.validate --checkpoint run/model.safetensors --data coco ...
"""
import argparse
import logging
import os
import sys
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch

from . import add_common_args, run_cli
from .predict import add_model_args, model_from_args, progress_enabled
from ..data import DATASETS
from ..data.images import ON_CORRUPT_CHOICES
from ..errors import InputError

__all__ = ['build_parser', 'run', 'main', 'evaluate']

_logger = logging.getLogger('srdl_timm.validate')


def build_parser() -> argparse.ArgumentParser:
    """The ``srdl-validate`` argument parser."""
    p = argparse.ArgumentParser(prog='srdl-validate', description=__doc__.split('\n\n')[0].replace('``', ''),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = add_model_args(p)
    g.add_argument('--pretrained', action='store_true',
                   help='(default without --checkpoint) load --model\'s pretrained weights')
    g = p.add_argument_group('data')
    g.add_argument('--data', required=True, choices=sorted(DATASETS), help='dataset format')
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
    g.add_argument('--workers', type=int, default=min(4, os.cpu_count() or 1),
                   help='data loader workers (default: min(4, CPUs))')
    g = p.add_argument_group('run')
    g.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    g.add_argument('--amp', action='store_true', help='autocast the backbone (head stays float32)')
    g.add_argument('--amp-dtype', default='bfloat16', choices=('bfloat16', 'float16'))
    g.add_argument('--channels-last', action='store_true')
    g.add_argument('--seed', type=int, default=0, help='seed for --random-init')
    g.add_argument('--output', default=None, help='write the JSON report here')
    g.add_argument('--progress', action='store_true', help='progress bar even when stderr is not a terminal')
    g.add_argument('--quiet', '-q', '--no-progress', dest='quiet', action='store_true', help='no progress bar')
    add_common_args(p)
    return p


def _checkpoint_record(path: Optional[str]) -> Optional[Dict[str, Any]]:
    from ..utils import sha256_file
    if not path:
        return None
    record: Dict[str, Any] = dict(path=os.path.abspath(path))
    if os.path.isfile(path):
        record['sha256'] = sha256_file(path)
    return record


def evaluate(args: argparse.Namespace) -> Dict[str, Any]:
    """Run the evaluation described by parsed ``args`` and return the JSON report (rank 0 prints and writes it)."""
    import timm
    from timm.data import resolve_data_config

    import srdl_timm
    from ..data import DEFAULT_SPLITS, LABELS_FROM_FILE, create_dataset, create_loader, create_transform
    from ..data.samplers import init_distributed_from_env
    from ..labels import model_label_names
    from ..loading import read_model_config
    from ..utils import atomic_write_json, parse_model_kwargs
    from ..validate import (
        AP_DEFINITIONS, DIFFICULT_POLICY_NAMES, class_index_by_name, format_rows, validate, voc_difficult_negative)

    if args.batch_size < 1:
        raise InputError(f'--batch-size must be >= 1, got {args.batch_size}')
    if args.output and os.path.isdir(args.output):
        raise InputError(f'--output {args.output} is a folder; give the JSON file to write, e.g. '
                         f'{os.path.join(args.output, "val.json")}')
    device, rank, world = init_distributed_from_env(args.device)
    split = args.split or DEFAULT_SPLITS[args.data][1]
    options: Dict[str, Any] = dict(keep_empty=args.keep_empty, on_corrupt=args.on_corrupt)
    if args.ann_file:
        options['ann_file'] = args.ann_file
    if args.image_dir:
        options['image_dir'] = args.image_dir
    if args.data == 'voc':
        options['difficult'] = 'ignore'  # standard VOC evaluation; 'negative' is computed from the same logits
    dataset = create_dataset(args.data, args.root, split, **options)

    if args.random_init:
        torch.manual_seed(args.seed)
    # a CSV without classes.txt names its classes by the labels it happens to hold: take the weights' label set
    # instead (a label the weights do not know is then an error naming the CSV line; an absent one has no AP)
    names_from_file = dataset.info.get('label_names_from') == LABELS_FROM_FILE
    bare_checkpoint = bool(args.checkpoint) and not read_model_config(args.checkpoint)
    model = model_from_args(args, num_classes=None if names_from_file and not (args.random_init or bare_checkpoint)
                            else dataset.num_classes)
    weights_names = None if args.random_init else model_label_names(model)
    if names_from_file and weights_names and weights_names != dataset.label_names:
        _logger.info('%s: classes taken from the weights (%d label names), not from the labels in the file',
                     dataset.info.get('name', args.data), len(weights_names))
        dataset = create_dataset(args.data, args.root, split, label_names=weights_names,  # (files checked above)
                                 label_names_from=f'the weights ({args.checkpoint or args.model})',
                                 check_files=False, **options)
    if getattr(model, 'num_classes', None) != dataset.num_classes:
        raise InputError(f'the weights ({args.checkpoint or args.model}) have {getattr(model, "num_classes", 0)} '
                         f'classes but {dataset.info.get("name", args.data)} has {dataset.num_classes}: evaluate on '
                         f'the label set the weights were trained on')
    class_index = None if args.random_init else class_index_by_name(model, dataset.label_names)
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
    is_voc = args.data == 'voc'
    results = validate(model, loader, device, amp_dtype=amp_dtype, channels_last=args.channels_last,
                       progress=progress_enabled(args), class_index=class_index, label_names=dataset.label_names,
                       return_outputs=is_voc)
    if results['num_samples'] != len(dataset):
        raise RuntimeError(f'evaluated {results["num_samples"]} samples but the dataset has {len(dataset)}')

    # an unreadable image skipped by --on-corrupt skip comes back as an all-ignore row the dataset did not have
    skipped = results['num_samples_all_ignored'] - int((dataset.targets == -1).all(axis=1).sum())
    evaluated = results['num_samples'] - skipped
    names = dataset.label_names
    by_policy = {'ignore': results}
    if is_voc:
        by_policy['negative'] = voc_difficult_negative(results.pop('logits'), results.pop('targets'),
                                                       dataset.difficult_only, names)

    def scalars(r: Dict[str, Any]) -> Dict[str, Any]:
        return {k: v for k, v in r.items() if not isinstance(v, np.ndarray)}

    def per_class(r: Dict[str, Any]) -> Dict[str, Any]:
        return dict(interpolated=dict(zip(names, r['AP_interpolated'].tolist())),
                    non_interpolated=dict(zip(names, r['AP_non_interpolated'].tolist())))

    report: Dict[str, Any] = dict(
        model=args.model,
        checkpoint=_checkpoint_record(args.checkpoint),
        pretrained=not args.checkpoint and not args.random_init,
        random_init=bool(args.random_init),
        model_kwargs=parse_model_kwargs(args.model_kwargs),
        metrics=scalars(results),
        per_class_AP=per_class(results),
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
            num_images_evaluated=evaluated,
            num_images_unreadable_skipped=skipped,
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
    count = f'{evaluated:,} images evaluated, {skipped:,} unreadable skipped' if skipped else f'{evaluated:,} images'
    title = f'{args.model or os.path.basename(args.checkpoint or "")} {args.data}/{split} ({count})'
    rows = [(title, results)]
    if is_voc:
        report['metrics_by_difficult_policy'] = {
            policy: dict(description=DIFFICULT_POLICY_NAMES[policy], metrics=scalars(r), per_class_AP=per_class(r))
            for policy, r in by_policy.items()}
        rows = [(f'{title} difficult={policy}: {DIFFICULT_POLICY_NAMES[policy]}', r) for policy, r in by_policy.items()]
    if rank == 0:
        print(format_rows(rows))
        if args.output:
            atomic_write_json(args.output, report)
            print(f'wrote {args.output}')
    return report


def run(args: argparse.Namespace) -> int:
    """``srdl-validate``: evaluate and report; 0 on success."""
    evaluate(args)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point of ``srdl-validate``."""
    return run_cli('srdl-validate', build_parser, run, argv)


if __name__ == '__main__':
    sys.exit(main())
