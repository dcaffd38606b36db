"""``srdl-export``: ONNX and TorchScript files of an inference model, checked against PyTorch after export.

What is exported is the *inference* model: eval mode, object erasing off (OE only acts in training anyway),
and, for SRDL, the plain ``'reference'`` attention kernels (:meth:`srdl_timm.SRDL.set_attention_impl`) instead of
the memory-lean autograd functions, which neither TorchScript nor the ONNX tracer can export. Input
``input`` ``[batch, 3, H, W]`` (normalised as the model's data config says), output ``logits`` ``[batch, C]``
(apply a sigmoid for scores).

* ONNX: opset >= 17 (default 17), TorchScript-based exporter (``dynamo=False``: it needs no ``onnxscript``),
  dynamic batch axis (``--no-dynamic-batch`` to fix it), optionally dynamic height/width (``--dynamic-size``).
  ``onnx.checker`` validates the file, and onnxruntime (the ``export`` extra) is compared with PyTorch on
  random inputs at several batch sizes (default 1 and 3, the export trace uses 2, so a batch size baked into
  the graph is caught).
* TorchScript: ``torch.jit.script`` (default) or ``torch.jit.trace``, saved, reloaded with ``torch.jit.load``
  and compared the same way.

Both files carry the preprocessing config and label names: ONNX as ``metadata_props`` (read them with
``onnxruntime.InferenceSession(p).get_modelmeta().custom_metadata_map``), TorchScript as the extra file
``config.json`` (``torch.jit.load(p, _extra_files={'config.json': ''})``). Values are strings; lists are JSON.

A check passes when ``|exported - pytorch| <= atol + rtol * |pytorch|`` everywhere (defaults rtol=1e-3,
atol=1e-4, float32). Exit status: 0 = exported and every check passed, 1 = a check failed (the file is kept
for inspection), 2 = usage, model or export error.

Examples::

    srdl-export --model srdl_resnet101 --checkpoint coco.safetensors --onnx srdl_coco.onnx --torchscript srdl_coco.pt
    srdl-export --model hf-hub:org/srdl_resnet101.coco --onnx srdl.onnx --opset 18 --img-size 576 --dynamic-size
"""
import argparse
import json
import logging
import os
import sys
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

__all__ = [
    'ExportCheckError', 'prepare_for_export', 'export_metadata', 'export_onnx', 'export_torchscript',
    'check_onnx', 'check_torchscript', 'check_sizes', 'build_parser', 'main', 'MIN_OPSET',
]

_logger = logging.getLogger('srdl_timm.export')

#: lowest ONNX opset accepted
MIN_OPSET = 17
_INPUT, _OUTPUT = 'input', 'logits'


class ExportCheckError(RuntimeError):
    """An exported model's outputs differ from PyTorch's beyond the tolerance."""


def prepare_for_export(model: nn.Module) -> nn.Module:
    """Put ``model`` in its inference form, in place: eval, OE off, reference attention kernels (SRDL).

    Returns the same module.
    """
    model.eval()
    if hasattr(model, 'set_object_erasing'):
        model.set_object_erasing(False)
    if hasattr(model, 'set_attention_impl'):
        model.set_attention_impl('reference')
    return model


def _input_size(model: nn.Module, input_size: Optional[Sequence[int]]) -> Tuple[int, int, int]:
    if input_size is None:
        from timm.data import resolve_data_config
        input_size = resolve_data_config({}, model=model)['input_size']
    size = tuple(int(s) for s in input_size)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f'input_size must be (C, H, W) with positive entries, got {input_size}')
    return size  # type: ignore[return-value]


def export_metadata(
        model: nn.Module, input_size: Optional[Sequence[int]] = None, label_names: Optional[Sequence[str]] = None,
) -> Dict[str, str]:
    """String metadata stored with an export: architecture, input size, mean/std, interpolation, labels, versions."""
    import timm
    from timm.data import resolve_data_config

    import srdl_timm
    from .explain import model_label_names
    config = resolve_data_config({}, model=model)
    names = list(label_names) if label_names is not None else model_label_names(model)
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    meta = dict(
        architecture=str(cfg.get('architecture', type(model).__name__)),
        input_name=_INPUT,
        output_name=_OUTPUT,
        output='logits [batch, num_classes]; scores = sigmoid(logits)',
        input_size=json.dumps(list(_input_size(model, input_size))),
        resize='squash to input_size (no centre crop)',
        interpolation=str(config.get('interpolation', 'bilinear')),
        mean=json.dumps([float(v) for v in config['mean']]),
        std=json.dumps([float(v) for v in config['std']]),
        num_classes=str(getattr(model, 'num_classes', '')),
        label_names=json.dumps(names) if names else '',
        srdl_timm_version=srdl_timm.__version__,
        timm_version=timm.__version__,
        torch_version=torch.__version__,
    )
    return {k: v for k, v in meta.items() if v != ''}


def _random_input(batch: int, size: Tuple[int, int, int], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *size, generator=generator)


def check_sizes(
        input_size: Tuple[int, int, int], batch_sizes: Sequence[int], dynamic_size: bool,
) -> List[Tuple[int, int, int, int]]:
    """Input shapes a check runs on: each batch size at ``input_size``; with ``dynamic_size`` also one other H, W.

    The other size is 3/4 of the input size rounded to a multiple of 32 (at least 32).
    """
    c, h, w = input_size
    shapes = [(b, c, h, w) for b in batch_sizes]
    if dynamic_size:
        other = (max(32, int(round(h * 0.75 / 32)) * 32), max(32, int(round(w * 0.75 / 32)) * 32))
        if other == (h, w):
            other = (h + 32, w + 32)
        shapes.append((batch_sizes[-1], c, *other))
    return shapes


def _compare(name: str, got: np.ndarray, want: np.ndarray, shape: Tuple[int, ...], rtol: float, atol: float) -> float:
    if got.shape != want.shape:
        raise ExportCheckError(f'{name}: output shape {got.shape} for input {shape}, PyTorch gives {want.shape}')
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    max_diff = float(diff.max()) if diff.size else 0.0
    if not np.all(diff <= atol + rtol * np.abs(want.astype(np.float64))):
        raise ExportCheckError(f'{name}: outputs differ from PyTorch for input {shape}: max |diff| = {max_diff:.3g} '
                               f'(rtol={rtol}, atol={atol})')
    return max_diff


@torch.no_grad()
def _reference_outputs(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    out = model(x)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f'the model returned {type(out).__name__} in eval mode; export needs logits [B, C]')
    return out.float().cpu().numpy()


def export_onnx(
        model: nn.Module,
        path: str,
        input_size: Optional[Sequence[int]] = None,
        opset: int = MIN_OPSET,
        dynamic_batch: bool = True,
        dynamic_size: bool = False,
        metadata: Optional[Dict[str, str]] = None,
        example_batch: int = 2,
) -> str:
    """Export the inference form of ``model`` (on CPU) to ONNX and validate the file with ``onnx.checker``.

    Args:
        model: a timm model; :func:`prepare_for_export` is applied to it (in place).
        path: output ``.onnx`` file.
        input_size: ``(C, H, W)`` (default: the model's data config).
        opset: ONNX opset, >= :data:`MIN_OPSET`.
        dynamic_batch: make the batch axis of ``input`` and ``logits`` dynamic.
        dynamic_size: make H and W dynamic too.
        metadata: string key/values stored as the model's ``metadata_props`` (default: :func:`export_metadata`).
        example_batch: batch size of the tracing input.

    Returns:
        ``path``.
    """
    import onnx
    if opset < MIN_OPSET:
        raise ValueError(f'opset must be >= {MIN_OPSET}, got {opset}')
    size = _input_size(model, input_size)
    prepare_for_export(model)
    model.cpu()
    if metadata is None:
        metadata = export_metadata(model, size)
    axes: Dict[str, Dict[int, str]] = {}
    if dynamic_batch:
        axes = {_INPUT: {0: 'batch'}, _OUTPUT: {0: 'batch'}}
    if dynamic_size:
        axes.setdefault(_INPUT, {}).update({2: 'height', 3: 'width'})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    example = _random_input(example_batch, size, seed=0)
    with warnings.catch_warnings():
        # the legacy exporter is deprecated but needs no onnxscript; tracer warnings about shape checks turned
        # into constants are covered by the numerical check at other batch sizes
        warnings.filterwarnings('ignore', category=DeprecationWarning)
        warnings.filterwarnings('ignore', category=FutureWarning)
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
        with torch.no_grad():
            torch.onnx.export(model, (example,), path, dynamo=False, opset_version=opset, input_names=[_INPUT],
                              output_names=[_OUTPUT], dynamic_axes=axes or None, do_constant_folding=True)
    proto = onnx.load(path)
    onnx.helper.set_model_props(proto, dict(metadata))
    onnx.save(proto, path)
    onnx.checker.check_model(path)
    _logger.info('exported ONNX (opset %d, dynamic axes %s) to %s', opset, axes or 'none', path)
    return path


def check_onnx(
        path: str,
        model: nn.Module,
        input_size: Optional[Sequence[int]] = None,
        batch_sizes: Sequence[int] = (1, 3),
        dynamic_size: bool = False,
        rtol: float = 1e-3,
        atol: float = 1e-4,
        seed: int = 1,
) -> Dict[str, float]:
    """Run the ONNX file with onnxruntime (CPU) and compare with ``model`` on random inputs.

    Also checks that the file's default-domain opset is >= :data:`MIN_OPSET`.

    Returns:
        ``{'BxCxHxW': max |diff|}`` per checked input shape.

    Raises:
        ExportCheckError: a shape or value differs beyond the tolerance, or the opset is too low.
        ImportError: onnxruntime is not installed (``pip install srdl-timm[export]``).
    """
    import onnx
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError('checking an ONNX export needs onnxruntime: pip install "srdl-timm[export]"') from e
    proto = onnx.load(path, load_external_data=False)
    opsets = [o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx')]
    if not opsets or max(opsets) < MIN_OPSET:
        raise ExportCheckError(f'{path}: opset {opsets} is below {MIN_OPSET}')
    size = _input_size(model, input_size)
    prepare_for_export(model)
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    report = {}
    for i, shape in enumerate(check_sizes(size, batch_sizes, dynamic_size)):
        x = _random_input(shape[0], shape[1:], seed=seed + i)
        want = _reference_outputs(model.cpu(), x)
        got = session.run([_OUTPUT], {_INPUT: x.numpy()})[0]
        report['x'.join(map(str, shape))] = _compare(f'ONNX {path}', got, want, shape, rtol, atol)
    return report


def export_torchscript(
        model: nn.Module,
        path: str,
        input_size: Optional[Sequence[int]] = None,
        method: str = 'script',
        metadata: Optional[Dict[str, str]] = None,
        example_batch: int = 2,
) -> str:
    """Save the inference form of ``model`` (on CPU) as TorchScript with ``torch.jit.script`` or ``trace``.

    ``metadata`` (default: :func:`export_metadata`) is stored as the extra file ``config.json``. Returns ``path``.
    """
    if method not in ('script', 'trace'):
        raise ValueError(f"method must be 'script' or 'trace', got {method!r}")
    size = _input_size(model, input_size)
    prepare_for_export(model)
    model.cpu()
    if metadata is None:
        metadata = export_metadata(model, size)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', category=FutureWarning)  # torch.jit is deprecated in favour of export
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
        with torch.no_grad():
            if method == 'script':
                scripted = torch.jit.script(model)
            else:
                scripted = torch.jit.trace(model, _random_input(example_batch, size, seed=0))
        torch.jit.save(scripted, path, _extra_files={'config.json': json.dumps(metadata)})
    _logger.info('exported TorchScript (%s) to %s', method, path)
    return path


def check_torchscript(
        path: str,
        model: nn.Module,
        input_size: Optional[Sequence[int]] = None,
        batch_sizes: Sequence[int] = (1, 3),
        dynamic_size: bool = False,
        rtol: float = 1e-3,
        atol: float = 1e-4,
        seed: int = 1,
) -> Dict[str, float]:
    """Reload the TorchScript file with ``torch.jit.load`` and compare with ``model`` on random inputs.

    ``dynamic_size`` adds one other H, W (TorchScript graphs are not tied to one size unless traced so).

    Returns:
        ``{'BxCxHxW': max |diff|}`` per checked input shape.
    """
    size = _input_size(model, input_size)
    prepare_for_export(model)
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', category=FutureWarning)
        loaded = torch.jit.load(path, map_location='cpu')
    loaded.eval()
    report = {}
    for i, shape in enumerate(check_sizes(size, batch_sizes, dynamic_size)):
        x = _random_input(shape[0], shape[1:], seed=seed + i)
        want = _reference_outputs(model.cpu(), x)
        with torch.no_grad():
            got = loaded(x)
        report['x'.join(map(str, shape))] = _compare(
            f'TorchScript {path}', got.float().numpy(), want, shape, rtol, atol)
    return report


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The ``srdl-export`` argument parser."""
    p = argparse.ArgumentParser(
        prog='srdl-export',
        description='Export an inference model to ONNX and TorchScript and check both against PyTorch.',
        epilog='Exit status: 0 = exported and checked, 1 = a check failed, 2 = usage, model or export error.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group('model')
    g.add_argument('--model', required=True, help='timm model name, hf-hub:org/repo or local-dir:PATH')
    g.add_argument('--checkpoint', default=None, help='local .safetensors weights for --model')
    g.add_argument('--num-classes', type=int, default=None, help='classifier size (None: from the weights)')
    g.add_argument('--model-kwargs', nargs='*', default=None, metavar='K=V', help='extra create_model kwargs')
    g.add_argument('--label-names', default=None, metavar='FILE', help='label names stored in the metadata')
    g.add_argument('--random-init', action='store_true', help='no weights (smoke tests only)')
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
    p.add_argument('--log-level', default='WARNING')
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point of ``srdl-export``; returns the exit status (0 ok, 1 check failed, 2 error)."""
    from .predict import load_model, resolve_label_names
    from .utils import parse_model_kwargs
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format='%(levelname)s %(name)s: %(message)s')
    if not args.onnx and not args.torchscript:
        parser.error('nothing to do: give --onnx FILE and/or --torchscript FILE')
    if args.opset < MIN_OPSET:
        parser.error(f'--opset must be >= {MIN_OPSET}')
    if min(args.check_batch_sizes) < 1:
        parser.error('--check-batch-sizes must be >= 1')
    batch_sizes = args.check_batch_sizes
    if args.no_dynamic_batch:
        batch_sizes = [2]  # the fixed export batch
    try:
        model = load_model(args.model, args.checkpoint, args.num_classes, args.random_init,
                           **parse_model_kwargs(args.model_kwargs))
        input_size = _input_size(model, None if args.img_size is None else (3, args.img_size, args.img_size))
        num_classes = getattr(model, 'num_classes', 0)
        names = resolve_label_names(model, num_classes, args.label_names, args.checkpoint) if num_classes else None
        metadata = export_metadata(model, input_size, names)
    except (OSError, ValueError, TypeError, RuntimeError) as e:
        print(f'srdl-export: error: {e}', file=sys.stderr)
        return 2

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
        except Exception as e:
            print(f'srdl-export: error: {kind} export failed: {type(e).__name__}: {e}', file=sys.stderr)
            return 2
        line = f'wrote {path} ({what}, input {"x".join(map(str, input_size))})'
        if not args.no_check:
            check = check_onnx if kind == 'onnx' else check_torchscript
            try:
                report = check(path, model, input_size, batch_sizes, args.dynamic_size, args.rtol, args.atol)
            except ExportCheckError as e:
                print(line)
                print(f'srdl-export: check FAILED: {e}', file=sys.stderr)
                status = 1
                continue
            except ImportError as e:
                print(f'srdl-export: error: {e} (or pass --no-check)', file=sys.stderr)
                return 2
            diffs = ', '.join(f'{shape}: {diff:.2e}' for shape, diff in report.items())
            line += f'; matches PyTorch (max |diff| {diffs})'
        print(line)
    return status


if __name__ == '__main__':
    sys.exit(main())
