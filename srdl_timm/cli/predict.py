"""``srdl-predict``: multi-label predictions (and Figure-5 attention overlays) for image files, folders and globs.

    srdl-predict photos/ --recursive --model hf-hub:org/srdl_resnet101.coco --topk 3

Bad inputs are reported per input while the rest are predicted; exit status 0 every input predicted, 1 some
input failed, 2 usage, model or weights error.
"""
import argparse
import logging
import os
import sys
from typing import Optional, Sequence

import torch

from . import add_common_args, add_model_args, model_spec_from_args, progress_enabled, run_cli
from ..errors import InputError
from ..explain import check_explainable, default_eval_transform
from ..labels import resolve_label_names
from ..loading import load_model_from_spec
from ..predict import (
    collect_inputs, decision_thresholds, format_csv, format_json, format_table, predict_files, summary_lines,
    weights_summary)
from ..utils import atomic_write_bytes

__all__ = ['build_parser', 'run', 'main']

_logger = logging.getLogger(__name__)


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f'must be in [0, 1], got {text}')
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be >= 1, got {text}')
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f'must be >= 0, got {text}')
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``srdl-predict`` argument parser."""
    p = argparse.ArgumentParser(
        prog='srdl-predict',
        description='Multi-label predictions (and Figure-5 attention overlays) for image files, folders and globs.',
        epilog='Exit status: 0 = every input predicted, 1 = some inputs failed, 2 = usage or model error.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('inputs', nargs='+', help='image files, folders and glob patterns')
    p.add_argument('--recursive', '-r', action='store_true', help='descend into sub-folders; ** in globs')
    g = add_model_args(p)
    g.add_argument('--label-names', default=None, metavar='FILE',
                   help='label names, one a line (or a JSON list), overriding the model\'s')
    g.add_argument('--img-size', type=_positive_int, default=None, help='input size (None: the model\'s config)')
    g = p.add_argument_group('labels')
    g.add_argument('--threshold', type=_probability, default=None,
                   help='keep labels with score >= this, one value for every class (None: the weights\' per-class '
                        'thresholds when they carry them, else 0.5; none with --topk alone)')
    g.add_argument('--topk', type=_positive_int, default=None, help='keep the k best labels (>= --threshold if set)')
    g = p.add_argument_group('output')
    g.add_argument('--format', default='table', choices=('table', 'json', 'csv'))
    g.add_argument('--output', '-o', default=None, metavar='FILE', help='write here instead of stdout')
    g.add_argument('--explain', default=None, metavar='DIR',
                   help='write attention overlays (Figure 5) of the top categories per image here (SRDL models)')
    g.add_argument('--explain-topk', type=_positive_int, default=3, help='categories per image in the overlays')
    g.add_argument('--explain-erase', action='store_true', help='outline the rectangle OE would erase')
    g.add_argument('--erase-alpha', type=float, default=None, help='OE threshold alpha (None: the model\'s)')
    g = p.add_argument_group('run')
    g.add_argument('--batch-size', type=_positive_int, default=16)
    g.add_argument('--workers', type=_non_negative_int, default=2, help='image-decoding processes (0 = main process)')
    g.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    g.add_argument('--amp', action='store_true', help='autocast the backbone (head stays float32)')
    g.add_argument('--amp-dtype', default='bfloat16', choices=('bfloat16', 'float16'))
    g.add_argument('--channels-last', action='store_true')
    g.add_argument('--progress', action='store_true', help='progress bar even when stderr is not a terminal')
    g.add_argument('--quiet', '-q', action='store_true', help='no progress bar, no header')
    add_common_args(p)
    p.set_defaults(log_level='WARNING')
    return p


def run(args: argparse.Namespace) -> int:
    """Predict every input; 0 when all were predicted, 1 when any failed."""
    if args.erase_alpha is not None and not 0.0 < args.erase_alpha < 1.0:
        raise InputError(f'--erase-alpha must be in (0, 1), got {args.erase_alpha}')
    if args.explain_erase and not args.explain:
        raise InputError('--explain-erase needs --explain DIR')
    if args.output and os.path.isdir(args.output):
        raise InputError(f'--output {args.output} is a folder; give the file to write, e.g. '
                         f'{os.path.join(args.output, "predictions." + ("txt" if args.format == "table" else args.format))}')
    spec = model_spec_from_args(args)
    model = load_model_from_spec(spec)
    num_classes = getattr(model, 'num_classes', 0)
    if not num_classes:
        raise InputError(f'{spec.name} has no classifier (num_classes=0)')
    label_names = resolve_label_names(model, num_classes, args.label_names)
    if args.explain:
        check_explainable(model)
    transform = default_eval_transform(model, args.img_size)
    device = torch.device(args.device)
    amp_dtype = getattr(torch, args.amp_dtype) if args.amp else None
    summary = weights_summary(model, label_names, spec.name, trained_on=spec.config().get('trained_on'))
    decision = decision_thresholds(model, args.threshold, args.topk)
    description = decision['description'].replace('(given)', '(--threshold)')
    header = [] if args.quiet else summary_lines(summary) + [f'# thresholds: {description}']
    if header and args.format != 'table':
        print('\n'.join(header), file=sys.stderr)

    items = collect_inputs(args.inputs, recursive=args.recursive)
    for item in items:
        if item.error is not None:
            _logger.warning('%s: %s', item.path, item.error)
    predictions = predict_files(
        model, items, label_names, transform, threshold=decision['threshold'], topk=args.topk,
        batch_size=args.batch_size, device=device, amp_dtype=amp_dtype, channels_last=args.channels_last,
        workers=args.workers, explain_dir=args.explain, explain_topk=args.explain_topk,
        explain_erase=args.explain_erase, erase_alpha=args.erase_alpha, progress=progress_enabled(args))

    if args.format == 'json':
        meta = dict(model=args.model, checkpoint=args.checkpoint, threshold=decision['threshold'],
                    threshold_source=decision['source'], thresholds=description, topk=args.topk,
                    input_size=list(transform.transforms[0].size) if hasattr(transform, 'transforms') else None,
                    amp_dtype=args.amp_dtype if args.amp else None, explain_dir=args.explain, weights=summary)
        text = format_json(predictions, meta)
    elif args.format == 'csv':
        text = format_csv(predictions)
    else:
        text = format_table(predictions, header=header)
    failed = sum(not p.ok for p in predictions)
    if args.output:
        atomic_write_bytes(args.output, text.encode('utf-8'))
        print(f'wrote {len(predictions)} results ({failed} failed) to {args.output}')
    else:
        sys.stdout.write(text)
    return 1 if failed else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point of ``srdl-predict``."""
    return run_cli('srdl-predict', build_parser, run, argv)


if __name__ == '__main__':
    sys.exit(main())
