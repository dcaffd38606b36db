"""ONNX and TorchScript files of an inference model (``input`` ``[batch, C, H, W]`` -> ``logits`` ``[batch, C]``,
preprocessing and labels as metadata), checked against PyTorch after export (:class:`ExportCheckError`)."""
import importlib
import io
import json
import logging
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from .errors import InputError, OperationError
from .labels import model_label_names, model_label_thresholds
from .utils import atomic_write_bytes

__all__ = [
    'ExportCheckError', 'prepare_for_export', 'export_metadata', 'export_onnx', 'export_torchscript',
    'check_onnx', 'check_torchscript', 'check_sizes', 'resolve_input_size', 'MIN_OPSET',
]

_logger = logging.getLogger(__name__)

#: lowest ONNX opset accepted
MIN_OPSET = 17
_INPUT, _OUTPUT = 'input', 'logits'


class ExportCheckError(OperationError):
    """An exported model's outputs differ from PyTorch's beyond the tolerance (exit status 1 in ``srdl-export``)."""


def prepare_for_export(model: nn.Module) -> nn.Module:
    """Put ``model`` in its inference form, in place (eval, OE off, ``'reference'`` kernels); returns it."""
    model.eval()
    if hasattr(model, 'set_object_erasing'):
        model.set_object_erasing(False)
    if hasattr(model, 'set_attention_impl'):
        model.set_attention_impl('reference')
    return model


def resolve_input_size(model: nn.Module, input_size: Optional[Sequence[int]] = None) -> Tuple[int, int, int]:
    """The ``(C, H, W)`` an export uses: ``input_size`` if given, else the model's timm data config's."""
    if input_size is None:
        from timm.data import resolve_data_config
        input_size = resolve_data_config({}, model=model)['input_size']
    size = tuple(int(s) for s in input_size)
    if len(size) != 3 or min(size) < 1:
        raise InputError(f'input_size must be (C, H, W) with positive entries, got {input_size}')
    return size  # type: ignore[return-value]


def export_metadata(
        model: nn.Module, input_size: Optional[Sequence[int]] = None, label_names: Optional[Sequence[str]] = None,
) -> Dict[str, str]:
    """String metadata stored with an export (preprocessing, labels, thresholds, versions); lists as JSON."""
    import timm
    from timm.data import resolve_data_config

    import srdl_timm
    config = resolve_data_config({}, model=model)
    names = list(label_names) if label_names is not None else model_label_names(model)
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    thresholds = model_label_thresholds(model)
    if thresholds is not None:
        postprocess = (f'class c is present when sigmoid(logits[c]) >= label_thresholds[c] (per-class thresholds '
                       f'{thresholds.describe()}; not from the SRDL paper, which uses 0.5)')
    else:
        postprocess = 'class c is present when sigmoid(logits[c]) >= 0.5 (no per-class thresholds recorded)'
    meta = dict(
        architecture=str(cfg.get('architecture', type(model).__name__)),
        input_name=_INPUT,
        output_name=_OUTPUT,
        output='logits [batch, num_classes]; scores = sigmoid(logits)',
        input_size=json.dumps(list(resolve_input_size(model, input_size))),
        resize='squash to input_size (no centre crop)',
        interpolation=str(config.get('interpolation', 'bilinear')),
        mean=json.dumps([float(v) for v in config['mean']]),
        std=json.dumps([float(v) for v in config['std']]),
        num_classes=str(getattr(model, 'num_classes', '')),
        label_names=json.dumps(names) if names else '',
        postprocess=postprocess,
        label_thresholds=json.dumps(list(thresholds.values)) if thresholds is not None else '',
        label_thresholds_info=json.dumps(thresholds.info) if thresholds is not None else '',
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
    """Input shapes a check runs on: each batch size at ``input_size``; with ``dynamic_size`` also 3/4 of it."""
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
        raise InputError(f'the model returned {type(out).__name__} in eval mode; export needs logits [B, C]')
    return out.float().cpu().numpy()


def _export_dependency(name: str, purpose: str):
    """Import ``onnx`` / ``onnxruntime`` (the ``export`` extra), or raise an InputError saying how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise InputError(f'{purpose} needs {name}: pip install "srdl-timm[export]"') from e


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
    """Export the inference form of ``model`` (on CPU) to ONNX and validate it with ``onnx.checker``.

    Args:
        model: a timm model (:func:`prepare_for_export` is applied in place).
        input_size: ``(C, H, W)`` (default: the model's data config).
        opset: ONNX opset, >= :data:`MIN_OPSET`.
        dynamic_batch, dynamic_size: dynamic batch axis, and H and W.
        metadata: stored as ``metadata_props`` (default: :func:`export_metadata`).
    """
    onnx = _export_dependency('onnx', 'ONNX export')
    if opset < MIN_OPSET:
        raise InputError(f'opset must be >= {MIN_OPSET}, got {opset}')
    size = resolve_input_size(model, input_size)
    prepare_for_export(model)
    model.cpu()
    if metadata is None:
        metadata = export_metadata(model, size)
    axes: Dict[str, Dict[int, str]] = {}
    if dynamic_batch:
        axes = {_INPUT: {0: 'batch'}, _OUTPUT: {0: 'batch'}}
    if dynamic_size:
        axes.setdefault(_INPUT, {}).update({2: 'height', 3: 'width'})
    example = _random_input(example_batch, size, seed=0)
    with warnings.catch_warnings():
        # the legacy exporter needs no onnxscript; tracer warnings are covered by the numerical check
        warnings.filterwarnings('ignore', category=DeprecationWarning)
        warnings.filterwarnings('ignore', category=FutureWarning)
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
        with torch.no_grad():
            buf = io.BytesIO()  # in memory, then one atomic write: a full disk names the file, leaves no half file
            torch.onnx.export(model, (example,), buf, dynamo=False, opset_version=opset, input_names=[_INPUT],
                              output_names=[_OUTPUT], dynamic_axes=axes or None, do_constant_folding=True)
    proto = onnx.load_from_string(buf.getvalue())
    onnx.helper.set_model_props(proto, dict(metadata))
    atomic_write_bytes(path, proto.SerializeToString())
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
    """Compare the ONNX file (onnxruntime, CPU) with ``model`` on random inputs; returns ``{'BxCxHxW': max |diff|}``."""
    onnx = _export_dependency('onnx', 'checking an ONNX export')
    ort = _export_dependency('onnxruntime', 'checking an ONNX export (or pass --no-check)')
    proto = onnx.load(path, load_external_data=False)
    opsets = [o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx')]
    if not opsets or max(opsets) < MIN_OPSET:
        raise ExportCheckError(f'{path}: opset {opsets} is below {MIN_OPSET}')
    size = resolve_input_size(model, input_size)
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
    """Save the inference form of ``model`` as TorchScript (``metadata`` as extra file ``config.json``)."""
    if method not in ('script', 'trace'):
        raise InputError(f"method must be 'script' or 'trace', got {method!r}")
    size = resolve_input_size(model, input_size)
    prepare_for_export(model)
    model.cpu()
    if metadata is None:
        metadata = export_metadata(model, size)
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', category=FutureWarning)  # torch.jit is deprecated in favour of export
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
        with torch.no_grad():
            if method == 'script':
                scripted = torch.jit.script(model)
            else:
                scripted = torch.jit.trace(model, _random_input(example_batch, size, seed=0))
        buf = io.BytesIO()
        torch.jit.save(scripted, buf, _extra_files={'config.json': json.dumps(metadata)})
    atomic_write_bytes(path, buf.getbuffer())
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
    """Reload the TorchScript file and compare with ``model`` on random inputs; returns ``{'BxCxHxW': max |diff|}``."""
    size = resolve_input_size(model, input_size)
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
