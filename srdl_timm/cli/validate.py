"""``srdl-validate``: evaluate a multi-label timm model on COCO 2014, VOC 2007 or custom data (paper §4.1).

    srdl-validate --checkpoint run/model.safetensors --data coco --root /data/coco --output val.json

Prints Table 1/2-style rows and writes the JSON report of :func:`srdl_timm.validate.evaluate_dataset`; runs under
torchrun too (every image counted once).
"""
import argparse
import os
import sys
from typing import Optional, Sequence

import torch

from . import add_common_args, add_model_args, model_spec_from_args, progress_enabled, run_cli
from ..data import DATASETS
from ..data.images import ON_CORRUPT_CHOICES
from ..errors import InputError
from ..utils import atomic_write_json
from ..validate import evaluate_dataset, format_rows

__all__ = ['build_parser', 'run', 'main']


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
    g = p.add_argument_group('decision thresholds')
    g.add_argument('--thresholds', default=None, metavar='FILE|from-weights',
                   help='also report CP ... OF1 at per-class thresholds: the weights\' own (from-weights) or a FILE of '
                        '--tune-thresholds; refused when they were tuned on the split evaluated here')
    g.add_argument('--tune-thresholds', default=None, metavar='FILE',
                   help='tune per-class thresholds (best F1 per class) on this split and write them to FILE (not '
                        'evaluated here: report them on another split with --thresholds FILE)')
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


def run(args: argparse.Namespace) -> int:
    """``srdl-validate``: evaluate, print the rows and write the JSON report (rank 0); 0 on success."""
    if args.batch_size < 1:
        raise InputError(f'--batch-size must be >= 1, got {args.batch_size}')
    for flag, path in (('--output', args.output), ('--tune-thresholds', args.tune_thresholds)):
        if path and os.path.isdir(path):
            raise InputError(f'{flag} {path} is a folder; give the JSON file to write, e.g. '
                             f'{os.path.join(path, "val.json" if flag == "--output" else "thresholds.json")}')
    evaluation = evaluate_dataset(
        model_spec_from_args(args), args.data, args.root, args.split, ann_file=args.ann_file,
        image_dir=args.image_dir, keep_empty=args.keep_empty, on_corrupt=args.on_corrupt, img_size=args.img_size,
        interpolation=args.interpolation, mean=args.mean, std=args.std, batch_size=args.batch_size,
        workers=args.workers, device=args.device, amp_dtype=args.amp_dtype if args.amp else None,
        channels_last=args.channels_last, seed=args.seed, progress=progress_enabled(args),
        thresholds=args.thresholds, tune_thresholds_file=args.tune_thresholds)
    if evaluation.rank == 0:
        print(format_rows(evaluation.rows))
        report = evaluation.report
        if 'thresholds' in report:
            print(f'per-class thresholds ({report["thresholds"]["source"]}): {report["thresholds"]["description"]}')
        if 'tuned_thresholds' in report:
            tuned = report['tuned_thresholds']
            print(f'wrote {args.tune_thresholds}: thresholds {tuned["description"]} (not evaluated on this split: '
                  f'report them on another one with --thresholds {args.tune_thresholds})')
        if args.output:
            atomic_write_json(args.output, evaluation.report)
            print(f'wrote {args.output}')
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point of ``srdl-validate``."""
    return run_cli('srdl-validate', build_parser, run, argv)


if __name__ == '__main__':
    sys.exit(main())
