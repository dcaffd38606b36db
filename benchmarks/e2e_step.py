#!/usr/bin/env python
"""One training step of the end-to-end benchmark protocol under each CPU training path, side by side.

The protocol of ``run_offline.py --end-to-end`` (EfficientNet-Lite0 at output stride 16, 192 px, a 12 x 12 grid,
batch 32, AdamW, 10 labels, one thread): a step is the forward (with object erasing for rows that have it), the
loss, backward and the optimizer step, on fixed random images. Every (model, path) cell is built in this one process
and the timed iterations alternate between cells (order rotated every iteration), so all cells share the machine's
state. Paths:

* ``pytorch-fp32``: channels-last, PyTorch's layers, float32 (``srdl-train --channels-last --fast-depthwise off``);
* ``fast-fp32``: the depthwise convolutions of :mod:`srdl_timm.layers.depthwise` (``--fast-depthwise on``);
* ``fast-bf16``: the same under bfloat16 autocast (``--amp``), the head's kernels in float32 as in training;
* ``pytorch-bf16``: bfloat16 autocast with PyTorch's layers.

Printed: median ms per step of each cell, its ratio to the ``pytorch-fp32`` cell of the same model, and the SRDL
row's ratio to the bare backbone (timm's ``tf_efficientnet_lite0`` with its linear classifier) on the same path.
``--clock thread`` (CPU time of the one thread) is less sensitive to other processes than wall time; quote only
numbers measured with nothing else running.

    python benchmarks/e2e_step.py --rows baseline,car_oe --paths pytorch-fp32,fast-fp32,fast-bf16 --repeats 5
"""
import argparse
import contextlib
import copy
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import timm
import torch
import torch.nn.functional as F

import srdl_timm  # noqa: F401  (registers the srdl_* models)
from srdl_timm.layers.depthwise import convert_depthwise
from srdl_timm.training.task import SRDLTask

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: `benchmarks` is a package
from benchmarks.offline.config import ROWS  # noqa: E402

PATHS = ('pytorch-fp32', 'fast-fp32', 'fast-bf16', 'pytorch-bf16')


def _cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        return platform.processor() or 'unknown CPU'


def _model(row: str, num_classes: int) -> torch.nn.Module:
    """The benchmark row's model (``bare``: the backbone with its own linear classifier), random weights."""
    if row == 'bare':
        return timm.create_model('tf_efficientnet_lite0', num_classes=num_classes, output_stride=16)
    spec = ROWS[row]
    if spec.peer:
        raise SystemExit(f'--rows: {row} is a peer head; this benchmark times the SRDL rows and the bare backbone')
    kwargs = dict(num_classes=num_classes, pretrained_backbone=False, backbone_kwargs={'output_stride': 16},
                  **spec.model_kwargs())
    if spec.use_ca or spec.use_sa:
        kwargs['label_embeddings'] = torch.randn(num_classes, 50, generator=torch.Generator().manual_seed(0))
    model = timm.create_model('srdl_efficientnet_lite0', **kwargs)
    model.set_object_erasing(spec.oe)
    return model


def _step_fn(model: torch.nn.Module, path: str, images: torch.Tensor, targets: torch.Tensor) -> Callable[[], None]:
    """A closure running one training step of ``model`` on ``path`` (the model is prepared for the path here)."""
    model = model.to(memory_format=torch.channels_last).train()
    if path.startswith('fast'):
        convert_depthwise(model)
    srdl = hasattr(model, 'set_object_erasing')
    task = SRDLTask(model, object_erasing=bool(getattr(model, 'object_erasing', False)), verbose=False) if srdl \
        else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    autocast = torch.autocast('cpu', dtype=torch.bfloat16) if path.endswith('bf16') else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            loss = task(images, targets)['loss'] if srdl else F.binary_cross_entropy_with_logits(
                model(images).float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def measure(rows: List[str], paths: List[str], batch_size: int, img_size: int, warmup: int, repeats: int,
            clock: Callable[[], float]) -> Dict[Tuple[str, str], List[float]]:
    """Seconds per step of every (row, path) cell, iterations alternating between cells."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, img_size, img_size, generator=gen).contiguous(
        memory_format=torch.channels_last)
    targets = (torch.rand(batch_size, 10, generator=gen) < 0.3).float()
    cells = {}
    for row in rows:
        torch.manual_seed(0)
        base = _model(row, 10)
        for path in paths:
            cells[(row, path)] = _step_fn(copy.deepcopy(base), path, images, targets)
    for step in cells.values():
        for _ in range(warmup):
            step()
    times: Dict[Tuple[str, str], List[float]] = {key: [] for key in cells}
    keys = list(cells)
    for i in range(repeats):
        for key in keys[i % len(keys):] + keys[:i % len(keys)]:
            t0 = clock()
            cells[key]()
            times[key].append(clock() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--rows', default='bare,car_oe', help="comma list: 'bare' and benchmark rows (run_offline.py)")
    p.add_argument('--paths', default='pytorch-fp32,fast-fp32,fast-bf16', help=f'comma list of {", ".join(PATHS)}')
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--img-size', type=int, default=192)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--clock', choices=('wall', 'thread'), default='wall')
    args = p.parse_args()
    paths = args.paths.split(',')
    unknown = sorted(set(paths) - set(PATHS))
    if unknown:
        p.error(f'--paths: unknown {unknown}; choose from {", ".join(PATHS)}')
    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == 'wall' else time.thread_time
    rows = args.rows.split(',')
    times = measure(rows, paths, args.batch_size, args.img_size, args.warmup, args.repeats, clock)
    print(f'# {_cpu_name()}; torch {torch.__version__}; {args.threads} thread(s); batch {args.batch_size}, '
          f'{args.img_size} px; {args.clock} clock; median of {args.repeats}')
    print(f'| row | path | ms / step | vs {paths[0]} | vs bare (same path) |\n|---|---|---|---|---|')
    median = {key: statistics.median(values) for key, values in times.items()}
    for (row, path), value in median.items():
        first = value / median[(row, paths[0])]
        bare = f'{value / median[("bare", path)]:.3f}' if ('bare', path) in median and row != 'bare' else '-'
        print(f'| {row} | {path} | {value * 1000:.0f} | {first:.3f} | {bare} |')


if __name__ == '__main__':
    main()
