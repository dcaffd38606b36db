#!/usr/bin/env python
"""Scale check of the CAR head in C (number of categories): peak memory of SRDL forward + backward on CPU.

For each C (default 80, 250, 500, 1000) a *fresh subprocess* builds ``srdl_resnet101`` with C categories, runs
one training forward (object erasing on, as in training) and backward at 448 x 448, batch 8, and reports its
peak resident set size. A ``resnet101`` row (bare timm, C = 80 linear head) gives the backbone's share. Since
the backbone dominates the whole-model peak, a second series (``srdl_resnet101:head``) runs only the CAR head
and classifier (``forward_head``, no OE) on a fixed ``[8, 2048, 14, 14]`` feature map, forward + backward: the
C-dependent memory alone.

Method -- why a fresh process and VmHWM: PyTorch's CPU allocator keeps no peak statistics, and freed memory is
kept by the C allocator, so peaks of successive runs in one process are not separable. Each run therefore
starts in a new interpreter; ``VmHWM`` (peak RSS, /proc/self/status) is reset by writing ``5`` to
/proc/self/clear_refs just before the model is built, and read after ``backward()``. Reported:

* ``peak_rss``: VmHWM, the whole process (Python, libraries, weights, activations, gradients);
* ``peak_run``: VmHWM minus the RSS just before the model was built (what the model and its step added).

Allocator: by default glibc raises its mmap threshold after large frees and then serves big blocks from its
heap, which it keeps; the peak RSS then also holds memory no tensor uses, and varies from run to run.
``--malloc-mmap-threshold 131072`` fixes the threshold, so every tensor above 128 KiB is mapped on allocation
and unmapped on free: RSS then follows the live tensors (page granular), which is the figure to compare
across C. Both settings are worth reporting: the default is what a user gets.

Linearity: ``peak_run`` of each series is fitted as ``a + b*C`` by least squares. A head that materialised the
``B x C x h*w x d`` product would need at least ``B*h*w*d*4`` bytes per category per stored copy (12.25 MiB at
448 px, batch 8, d = 2048 -- 12 GiB at C = 1000); compare the fitted slope ``b`` with it.

Any backbone, against itself (``--backbone NAME [NAME ...]``): for each backbone and each C, one fresh process
trains SRDL on it (``srdl_resnet101`` with ``backbone=NAME``, built for ``--img-size``: a ViT's position embedding
resampled to it) and another the *bare* timm backbone with its own linear classifier for C classes (the same
``img_size``), one step each with the same loss (SRDL: OE on); the table gives both peaks, both step times and
their ratios, per C -- e.g. C = 80 (COCO), 1,000 and 9,605 (OpenImages) for a CNN and a ViT. The head-only
series runs on the backbone's own feature grid (``feature_grid_size``): ``[B, d, h, w]`` of a ViT is its patch grid.

Example::

    python benchmarks/memory.py --threads 2 --json memory.json
    python benchmarks/memory.py --backbone resnet101 vit_base_patch16_224 --classes 80 1000 9605 --batch-size 8 \
        --threads 2 --malloc-mmap-threshold 131072 --markdown scale.md
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--classes', type=int, nargs='+', default=[80, 250, 500, 1000])
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--img-size', type=int, default=448)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--object-erasing', choices=('on', 'off'), default='on')
    p.add_argument('--attention-impl', default='auto')
    p.add_argument('--graph-kind', choices=('auto', 'dense', 'knn'), default='auto',
                   help="SRDL's label graph V (eq. 3): the paper's dense C x C, the C x k kNN one, or 'auto'")
    p.add_argument('--backbone', nargs='+', default=None, metavar='NAME',
                   help='SRDL on each of these timm backbones against the bare backbone with its own classifier, at '
                        'every C (instead of the srdl_resnet101 series)')
    p.add_argument('--no-baseline', action='store_true', help='skip the resnet101 row (the bare rows with --backbone)')
    p.add_argument('--no-head', action='store_true', help='skip the head-only series')
    p.add_argument('--limit-gb', type=float, default=6.0,
                   help='target for peak_rss at the largest C, in GB (10**9 bytes; 6 GB = 5.59 GiB)')
    p.add_argument('--steps', type=int, default=1,
                   help="training steps per process (the peak covers all; 'fwd+bwd s' is the last one's time: "
                        "with attention 'auto' the first step includes its one-time compile and measurement)")
    p.add_argument('--malloc-mmap-threshold', type=int, default=None,
                   help='set MALLOC_MMAP_THRESHOLD_ (bytes) in the child processes: glibc then maps every larger '
                        'block itself and returns it on free, so RSS follows the live tensors (see docstring)')
    p.add_argument('--json', default=None)
    p.add_argument('--markdown', default=None)
    p.add_argument('--child', default=None, help=argparse.SUPPRESS)  # internal: "model:C"
    return p.parse_args(argv)


def _status_kib(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise KeyError(field)


def run_child(args: argparse.Namespace, model_name: str, num_classes: int) -> Dict[str, Any]:
    """One forward + backward in this (fresh) process; peak memory from VmHWM."""
    import numpy as np
    import torch
    import timm
    import srdl_timm  # noqa: F401
    from srdl_timm.loss import SRDLLoss
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    target = (torch.rand(args.batch_size, num_classes) < 0.05).float()
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
    rss0 = _status_kib('VmRSS')
    head_only = model_name.endswith(':head')
    kind, _, backbone = model_name.split(':head')[0].partition(':')  # 'bare:NAME', 'srdl:NAME' (--backbone)
    if model_name == 'resnet101':
        model = timm.create_model('resnet101', num_classes=num_classes)
    elif kind == 'bare':
        model = _bare_backbone(backbone, num_classes, args.img_size)
    else:
        embeddings = np.random.default_rng(0).standard_normal((num_classes, 300)).astype('float32')
        extra = dict(backbone=backbone, img_size=args.img_size) if kind == 'srdl' else {}
        model = timm.create_model('srdl_resnet101' if kind == 'srdl' else kind, num_classes=num_classes,
                                  label_embeddings=embeddings, attention_impl=args.attention_impl,
                                  graph_kind=args.graph_kind, **extra)
        model.set_object_erasing(args.object_erasing == 'on' and not head_only)
    model.train()
    if head_only:  # the CAR head + classifier on a fixed feature map: the C-dependent part alone
        if kind == 'srdl':
            height, width = model.feature_grid_size(args.img_size)
        else:
            height = width = args.img_size // 32
        x = torch.randn(args.batch_size, model.num_features, height, width).relu_().requires_grad_()
    for _ in range(max(1, args.steps)):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        out = model.forward_head(x) if head_only else model(x)
        loss = SRDLLoss()(out, target)
        loss.backward()
        seconds = time.perf_counter() - t0
    hwm = _status_kib('VmHWM')
    sizes = _model_sizes(model)  # after the peak: writing the file takes memory too
    from srdl_timm.ops import dispatch
    picks = sorted(f'{op}:{choice}' for op, choice in dispatch.auto_decisions().items())
    return dict(model=model_name, classes=num_classes, peak_rss=hwm * 1024, peak_run=(hwm - rss0) * 1024,
                rss_before=rss0 * 1024, seconds=seconds, loss=float(loss), auto='/'.join(picks) or None, **sizes)


def _model_sizes(model) -> Dict[str, Any]:
    """Parameter counts (whole model, label graph) and the size of its safetensors file, written to a temp dir."""
    import tempfile
    from safetensors.torch import save_file
    graph = getattr(model, 'label_graph', None)
    with tempfile.TemporaryDirectory() as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(tmp, 'w.safetensors'))
        file_bytes = os.path.getsize(os.path.join(tmp, 'w.safetensors'))
    return dict(params=sum(p.numel() for p in model.parameters()), file_bytes=file_bytes,
                graph_params=sum(p.numel() for p in graph.parameters()) if graph is not None else 0,
                graph_kind=getattr(model, 'graph_kind', None))


def _bare_backbone(name: str, num_classes: int, img_size: int):
    """The timm backbone with its own classifier for ``num_classes``, built for ``img_size`` where it has one."""
    import timm
    try:
        return timm.create_model(name, num_classes=num_classes, img_size=img_size)
    except TypeError:  # a CNN: no img_size
        return timm.create_model(name, num_classes=num_classes)


def _child(args_argv: List[str], model: str, classes: int, threshold: Optional[int] = None) -> Dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), *args_argv, '--child', f'{model}:{classes}']
    env = dict(os.environ)
    if threshold is not None:
        env['MALLOC_MMAP_THRESHOLD_'] = str(threshold)
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f'{model} C={classes} failed:\n{result.stderr[-4000:]}')
    return json.loads(result.stdout.strip().splitlines()[-1])


def fit_line(xs: Sequence[float], ys: Sequence[float]):
    """Least-squares ``y = a + b x``; returns ``(a, b, max |residual|)``."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    a = my - b * mx
    return a, b, max(abs(y - (a + b * x)) for x, y in zip(xs, ys))


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run every C in its own process, print the table and the linear fit."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child:
        model, classes = args.child.rsplit(':', 1)
        print(json.dumps(run_child(args, model, int(classes))))
        return {}
    if args.backbone:
        return _backbone_main(args, argv)
    rows = []
    if not args.no_baseline:
        rows.append(_child(argv, 'resnet101', 80, args.malloc_mmap_threshold))
        print(f"resnet101 C=80: peak RSS {rows[-1]['peak_rss'] / 2**30:.2f} GiB", file=sys.stderr, flush=True)
    for c in args.classes:
        rows.append(_child(argv, 'srdl_resnet101', c, args.malloc_mmap_threshold))
        print(f"srdl C={c}: peak RSS {rows[-1]['peak_rss'] / 2**30:.2f} GiB", file=sys.stderr, flush=True)
    if not args.no_head:
        for c in args.classes:
            rows.append(_child(argv, 'srdl_resnet101:head', c, args.malloc_mmap_threshold))
            print(f"srdl head C={c}: peak of the run {rows[-1]['peak_run'] / 2**20:.0f} MiB", file=sys.stderr,
                  flush=True)
    srdl = [r for r in rows if r['model'] == 'srdl_resnet101']
    mib = 2 ** 20
    fits = {}
    for name in ('srdl_resnet101', 'srdl_resnet101:head'):
        series = [r for r in rows if r['model'] == name]
        if len(series) >= 2:
            a, b, resid = fit_line([r['classes'] for r in series], [r['peak_run'] / mib for r in series])
            fits[name] = dict(intercept_mib=a, slope_mib_per_class=b, max_residual_mib=resid)
    import torch
    feat_hw = (args.img_size // 32) ** 2
    product_mib = args.batch_size * feat_hw * 2048 * 4 / mib
    env = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
               python=platform.python_version(), torch=torch.__version__, cpu=_cpu_model(), threads=args.threads,
               attention_impl=args.attention_impl)
    lines = [f"{env['cpu']}; torch {env['torch']}; {env['date']}; CPU only",
             f"{args.img_size}x{args.img_size}, batch {args.batch_size}, forward + backward, "
             f"object erasing {args.object_erasing}, attention {env['attention_impl']}, threads {args.threads}, "
             f"MALLOC_MMAP_THRESHOLD_={args.malloc_mmap_threshold or 'default'}",
             f"steps {args.steps}; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}",
             '', '| model | C | peak RSS (GiB) | peak RSS (GB) | peak of the run (MiB) | fwd+bwd s | auto chose |',
             '|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['model']} | {r['classes']} | {r['peak_rss'] / 2**30:.2f} | {r['peak_rss'] / 1e9:.2f} | "
                     f"{r['peak_run'] / mib:.0f} | {r['seconds']:.1f} | {r.get('auto') or '-'} |")
    lines.append('')
    for name, fit in fits.items():
        lines.append(f"Fit over C, {name}: peak of the run = {fit['intercept_mib']:.0f} MiB + "
                     f"{fit['slope_mib_per_class']:.3f} MiB x C (max residual {fit['max_residual_mib']:.0f} MiB).")
    if fits:
        lines.append(f"A materialised B*C*h*w*d product would add {product_mib:.2f} MiB per category "
                     f"per stored copy.")
    largest = max(srdl, key=lambda r: r['classes']) if srdl else None
    if largest:
        ok = largest['peak_rss'] <= args.limit_gb * 1e9
        lines.append(f"C={largest['classes']}: peak RSS {largest['peak_rss'] / 1e9:.2f} GB "
                     f"({largest['peak_rss'] / 2**30:.2f} GiB) {'<=' if ok else '>'} {args.limit_gb} GB target.")
    table = '\n'.join(lines) + '\n'
    print(table)
    out = dict(env=env, args=vars(args), rows=rows, fits=fits, product_mib_per_class=product_mib)
    if args.markdown:
        from srdl_timm.utils import atomic_write_bytes
        atomic_write_bytes(args.markdown, table.encode('utf-8'))
    if args.json:
        from srdl_timm.utils import atomic_write_json
        atomic_write_json(args.json, out)
    return out


def _cell(value: Optional[float], fmt: str) -> str:
    return '-' if value is None else format(value, fmt)


def _backbone_main(args: argparse.Namespace, argv: List[str]) -> Dict[str, Any]:
    """``--backbone``: SRDL vs the bare backbone at every C, each in its own process; table with ratios."""
    rows = []
    for backbone in args.backbone:
        for c in args.classes:
            for kind in ('bare', 'srdl') if not args.no_baseline else ('srdl',):
                rows.append(_child(argv, f'{kind}:{backbone}', c, args.malloc_mmap_threshold))
                print(f"{kind} {backbone} C={c}: peak RSS {rows[-1]['peak_rss'] / 2**30:.2f} GiB, step "
                      f"{rows[-1]['seconds']:.2f} s", file=sys.stderr, flush=True)
            if not args.no_head:
                rows.append(_child(argv, f'srdl:{backbone}:head', c, args.malloc_mmap_threshold))
    mib = 2 ** 20
    import torch
    env = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
               python=platform.python_version(), torch=torch.__version__, cpu=_cpu_model(), threads=args.threads,
               attention_impl=args.attention_impl)
    by_key = {(r['model'], r['classes']): r for r in rows}
    lines = [f"{env['cpu']}; torch {env['torch']}; {env['date']}; CPU only",
             f"{args.img_size}x{args.img_size}, batch {args.batch_size}, one training step (forward + loss + backward; "
             f"SRDL: object erasing {args.object_erasing}), attention {env['attention_impl']}, threads {args.threads}, "
             f"MALLOC_MMAP_THRESHOLD_={args.malloc_mmap_threshold or 'default'}, steps {args.steps}, "
             f"graph_kind {args.graph_kind}; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}",
             '', '| backbone | C | bare: peak of the run (MiB) | SRDL: peak of the run (MiB) | memory ratio | '
                 'bare: step s | SRDL: step s | time ratio | SRDL head only: peak of the run (MiB) | auto chose | '
                 'graph | SRDL params (M) | graph params (M) | SRDL file (MB) | bare params (M) |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for backbone in args.backbone:
        for c in args.classes:
            bare, srdl = by_key.get((f'bare:{backbone}', c)), by_key[(f'srdl:{backbone}', c)]
            head = by_key.get((f'srdl:{backbone}:head', c))
            cell = _cell
            lines.append(' | '.join([
                f'| {backbone}', str(c), cell(bare and bare['peak_run'] / mib, '.0f'), cell(srdl['peak_run'] / mib, '.0f'),
                cell(bare and srdl['peak_run'] / bare['peak_run'], '.2f'), cell(bare and bare['seconds'], '.2f'),
                cell(srdl['seconds'], '.2f'), cell(bare and srdl['seconds'] / bare['seconds'], '.2f'),
                cell(head and head['peak_run'] / mib, '.0f'), srdl.get('auto') or '-', str(srdl['graph_kind']),
                f"{srdl['params'] / 1e6:.2f}", f"{srdl['graph_params'] / 1e6:.3f}", f"{srdl['file_bytes'] / 1e6:.1f}",
                cell(bare and bare['params'] / 1e6, '.2f') + ' |']))
    table = '\n'.join(lines) + '\n'
    print(table)
    out = dict(env=env, args=vars(args), rows=rows)
    if args.markdown:
        from srdl_timm.utils import atomic_write_bytes
        atomic_write_bytes(args.markdown, table.encode('utf-8'))
    if args.json:
        from srdl_timm.utils import atomic_write_json
        atomic_write_json(args.json, out)
    return out


def _cpu_model() -> str:
    try:
        out = subprocess.run(['lscpu'], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith('Model name'):
                return line.split(':', 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or 'unknown'


if __name__ == '__main__':
    main()
