"""``srdl-export``: export an inference model to ONNX and TorchScript and check both against PyTorch.

    srdl-export --checkpoint run/model.safetensors --onnx srdl.onnx --torchscript srdl.pt

Exit status: 0 exported and checked, 1 an export or check failed (the file is kept), 2 usage, model or weights
error.
"""
import argparse
import os
import sys
import warnings
from typing import List, Optional, Sequence, Tuple

from . import add_common_args, add_model_args, model_spec_from_args, run_cli
from ..errors import InputError, OperationError
from ..export import (
    MIN_OPSET, ExportCheckError, check_onnx, check_torchscript, export_metadata, export_onnx, export_torchscript,
    resolve_input_size)
from ..labels import resolve_label_names
from ..loading import load_model_from_spec

__all__ = ['build_parser', 'run', 'main']


def build_parser() -> argparse.ArgumentParser:
    """The ``srdl-export`` argument parser."""
    p = argparse.ArgumentParser(
        prog='srdl-export',
        description='Export an inference model to ONNX and TorchScript and check both against PyTorch.',
        epilog='Exit status: 0 = exported and checked, 1 = an export or check failed, 2 = usage or model error.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = add_model_args(p)
    g.add_argument('--label-names', default=None, metavar='FILE', help='label names stored in the metadata')
    g.add_argument('--img-size', type=int, default=None, help='input H = W (None: the model\'s config)')
    g = p.add_argument_group('outputs')
    g.add_argument('--onnx', default=None, metavar='FILE', help='write an ONNX model here')
    g.add_argument('--torchscript', default=None, metavar='FILE', help='write a TorchScript model here')
    g.add_argument('--opset', type=int, default=MIN_OPSET, help=f'ONNX opset (>= {MIN_OPSET})')
    g.add_argument('--no-dynamic-batch', action='store_true', help='fix the ONNX batch size to the export batch')
    g.add_argument('--dynamic-size', action='store_true', help='make the ONNX input height and width dynamic')
    g.add_argument('--torchscript-method', default='script', choices=('script', 'trace'))
    g = p.add_argument_group('check')
    g.add_argument('--no-check', action='store_true', help='skip the comparison with PyTorch')
    g.add_argument('--check-batch-sizes', type=int, nargs='+', default=[1, 3], help='batch sizes compared')
    g.add_argument('--rtol', type=float, default=1e-3)
    g.add_argument('--atol', type=float, default=1e-4)
    add_common_args(p)
    p.set_defaults(log_level='WARNING')
    return p


def run(args: argparse.Namespace) -> int:
    """Export and check; 0 when every file was written and matched PyTorch, 1 when a check failed."""
    if not args.onnx and not args.torchscript:
        raise InputError('nothing to do: give --onnx FILE and/or --torchscript FILE')
    if args.opset < MIN_OPSET:
        raise InputError(f'--opset must be >= {MIN_OPSET}, got {args.opset}')
    if min(args.check_batch_sizes) < 1:
        raise InputError(f'--check-batch-sizes must be >= 1, got {args.check_batch_sizes}')
    for flag, path in (('--onnx', args.onnx), ('--torchscript', args.torchscript)):
        if path and os.path.isdir(path):
            raise InputError(f'{flag} {path} is a folder; give the file to write, e.g. {os.path.join(path, "srdl")}'
                             + ('.onnx' if flag == '--onnx' else '.pt'))
    batch_sizes = [2] if args.no_dynamic_batch else args.check_batch_sizes  # a fixed batch is the export batch
    model = load_model_from_spec(model_spec_from_args(args))
    input_size = resolve_input_size(model, None if args.img_size is None else (3, args.img_size, args.img_size))
    num_classes = getattr(model, 'num_classes', 0)
    names = resolve_label_names(model, num_classes, args.label_names) if num_classes else None
    metadata = export_metadata(model, input_size, names)

    status = 0
    jobs: List[Tuple[str, str]] = []
    if args.onnx:
        jobs.append(('onnx', args.onnx))
    if args.torchscript:
        jobs.append(('torchscript', args.torchscript))
    for kind, path in jobs:
        try:
            if kind == 'onnx':
                export_onnx(model, path, input_size, args.opset, not args.no_dynamic_batch, args.dynamic_size,
                            metadata)
                what = f'ONNX opset {args.opset}, ' + ('fixed batch' if args.no_dynamic_batch else 'dynamic batch') \
                    + (', dynamic H/W' if args.dynamic_size else '')
            else:
                export_torchscript(model, path, input_size, args.torchscript_method, metadata)
                what = f'TorchScript ({args.torchscript_method})'
        except (OSError, InputError):
            raise
        except Exception as e:  # noqa: BLE001 - the exporters raise many types for an unsupported model
            raise OperationError(f'{kind} export to {path} failed: {type(e).__name__}: {e} (--debug shows the '
                                 f'traceback)') from e
        line = f'wrote {path} ({what}, input {"x".join(map(str, input_size))})'
        if not args.no_check:
            check = check_onnx if kind == 'onnx' else check_torchscript
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter('ignore', FutureWarning)
                    report = check(path, model, input_size, batch_sizes, args.dynamic_size, args.rtol, args.atol)
            except ExportCheckError as e:
                print(line)
                print(f'srdl-export: check FAILED: {e}', file=sys.stderr)
                status = 1
                continue
            diffs = ', '.join(f'{shape}: {diff:.2e}' for shape, diff in report.items())
            line += f'; matches PyTorch (max |diff| {diffs})'
        print(line)
    if jobs:
        print(f'post-processing (in the metadata): {metadata["postprocess"]}')
    return status


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point of ``srdl-export``."""
    return run_cli('srdl-export', build_parser, run, argv)


if __name__ == '__main__':
    sys.exit(main())
