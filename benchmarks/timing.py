#!/usr/bin/env python
"""SRDL vs bare timm ResNet-101: time, throughput and peak memory (the method of the paper's Table 3).

Table 3 measures every method at one input size (448 x 448) in ms per image. Here, for every row

    resnet101 (bare timm, its own linear head) | srdl (srdl_resnet101) | srdl_no_gcn | srdl_no_ca | srdl_no_sa

(and, with ``--rows``, the peer heads of ``benchmarks/peer_heads.py`` on the same backbone: ``ml_decoder``,
``csra``, ``ml_gcn``; and the transformer rows ``vit`` -- the bare timm ViT (``--vit-backbone``, default
ViT-B/16, built for ``--img-size``) with its own linear head -- and ``srdl_vit``, SRDL on that ViT, whose ratios
are to ``vit``) and every mode/batch cell (inference at each ``--batch-size``; a training step -- forward,
backward, optimizer step, with object erasing (OE) for SRDL rows that have SA -- at ``--train-batch-size``):

* ``--method alternate`` (default on CPU): every row's model is built in this one process, and the timed
  iterations alternate between the rows (one iteration of each in turn, the order rotated every iteration),
  so the rows share the machine's state -- load from other jobs, caches, allocator, OpenMP threads -- as a
  long-lived user process does. Each row's ratio to resnet101 is also given per alternation (the iteration
  of the row over the resnet101 iteration next to it): median and quartiles of these paired ratios. Peak
  memory is not attributable per row here (use ``--method fresh`` or benchmarks/memory.py);
* ``--method fresh``: each cell (row, mode, batch) in a fresh subprocess, rows in turn, round after round
  (``--rounds``); gives each row's peak memory on CPU. ``--method sequential`` (``--in-process``): cells one
  after the other in this process (the CUDA default; peak memory from the CUDA allocator);

* one input size for all rows, random inputs, ``--warmup`` untimed iterations, then ``--repeats`` timed ones;
* CUDA: ``torch.cuda.Event`` timing of each iteration (optionally replayed from a CUDA graph, inference only);
  CPU: ``time.perf_counter`` (or ``--clock thread`` = ``time.thread_time``, CPU time of the calling thread,
  which ignores time the process waits for a core on a shared machine -- only meaningful with ``--threads 1``;
  or ``--clock process`` = ``time.process_time``, CPU time of all threads: the total work, with
  ``OMP_WAIT_POLICY=PASSIVE`` so idle OpenMP threads do not spin);
* the median over repeats (and over ``--rounds``);
* peak memory: CUDA ``torch.cuda.max_memory_allocated`` over the timed iterations, less what was allocated
  before the model was built (so: weights, inputs, activations, optimizer state); CPU: each cell runs in a
  fresh subprocess, and the peak is the increase of the process's peak resident set (``VmHWM``,
  /proc/self/status, reset before the model is built) over the RSS at that point -- the same scope, plus
  allocator slack, and warm-up included;
* ratios to the bare backbone's row of the same mode and batch, measured in the same run (resnet101; ``vit``
  for ``srdl_vit``).

Output: a markdown table on stdout, ``--json`` and ``--markdown`` files if given.

Examples::

    python benchmarks/timing.py --device cpu --img-size 448 --batch-size 1 2 8 --train-batch-size 2 --threads 2
    python benchmarks/timing.py --device cpu --rows resnet101,srdl,ml_decoder,csra,ml_gcn --modes infer
    python benchmarks/timing.py --device cpu --batch-size 2 --threads 2 --head-breakdown
    python benchmarks/timing.py --device cpu --rows resnet101,srdl,vit,srdl_vit --batch-size 2 --threads 2
    python benchmarks/timing.py --device cuda --precision bf16 --channels-last --batch-size 1 32 64 \\
        --train-batch-size 16 --json timing.json --markdown timing.md
"""
import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

ROWS: Dict[str, Dict[str, Any]] = {
    'resnet101': dict(model='resnet101', kwargs={}),
    'srdl': dict(model='srdl_resnet101', kwargs={}),
    'srdl_no_gcn': dict(model='srdl_resnet101', kwargs=dict(use_gcn=False)),
    'srdl_no_ca': dict(model='srdl_resnet101', kwargs=dict(use_ca=False)),
    'srdl_no_sa': dict(model='srdl_resnet101', kwargs=dict(use_sa=False)),
}
#: Peer heads on the same backbone (benchmarks/peer_heads.py); opt-in through ``--rows``.
PEER_ROWS: Dict[str, Dict[str, Any]] = {name: dict(model='peer:' + name, kwargs={})
                                        for name in ('ml_decoder', 'csra', 'ml_gcn')}
#: A transformer backbone: the bare ViT with its own classifier and SRDL on it (``--vit-backbone``); opt-in.
TRANSFORMER_ROWS: Dict[str, Dict[str, Any]] = {
    'vit': dict(model='vit', kwargs={}),
    'srdl_vit': dict(model='srdl_vit_base_patch16_448', kwargs={}, baseline='vit'),
}
BASELINE = 'resnet101'
ALL_ROWS = {**ROWS, **PEER_ROWS, **TRANSFORMER_ROWS}
METHODS = ('alternate', 'fresh', 'sequential')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command line of the benchmark (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default=None, help="'cuda' or 'cpu' (default: cuda if available)")
    p.add_argument('--img-size', type=int, default=448)
    p.add_argument('--batch-size', type=int, nargs='+', default=None,
                   help='inference batch sizes (default: 1 32 on CUDA, 1 2 on CPU)')
    p.add_argument('--train-batch-size', type=int, default=None,
                   help='training-step batch size (default: 16 on CUDA, the largest --batch-size on CPU); 0 = skip')
    p.add_argument('--modes', default='infer,train', help='comma list of infer, train')
    p.add_argument('--rows', default=','.join(ROWS), help=f'comma list of {", ".join(ALL_ROWS)}')
    p.add_argument('--vit-backbone', default='vit_base_patch16_224',
                   help='timm ViT of the vit / srdl_vit rows (built for --img-size, position embeddings resampled)')
    p.add_argument('--method', choices=METHODS, default=None,
                   help='alternate: all rows in this process, iterations alternating (CPU default); fresh: a '
                        'subprocess per cell (CPU peak memory); sequential: cells in turn here (CUDA default)')
    p.add_argument('--num-classes', type=int, default=80)
    p.add_argument('--precision', choices=('fp32', 'bf16', 'fp16'), default='fp32',
                   help='inference: model and input cast to this dtype; training: autocast to it, fp32 weights')
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--compile', choices=('off', 'on'), default='off', help='torch.compile every model')
    p.add_argument('--compile-mode', default=None, help='torch.compile mode (e.g. max-autotune-no-cudagraphs)')
    p.add_argument('--cuda-graphs', action='store_true', help='replay inference from a CUDA graph (CUDA only)')
    p.add_argument('--attention-impl', default='auto', help="SRDL eqs. 5-6 kernels: auto|reference|chunked|triton")
    p.add_argument('--warmup', type=int, default=None, help='untimed iterations (default: 10 CUDA, 2 CPU)')
    p.add_argument('--repeats', type=int, default=None, help='timed iterations (default: 30 CUDA, 5 CPU)')
    p.add_argument('--rounds', type=int, default=1, help='run all rows this many times in turn; pool samples')
    p.add_argument('--threads', type=int, default=None, help='torch intra-op threads (CPU)')
    p.add_argument('--clock', choices=('wall', 'thread', 'process'), default='wall',
                   help='CPU only: wall = perf_counter; thread = thread_time (use with --threads 1); process = '
                        'process_time, CPU time of all threads (use with OMP_WAIT_POLICY=PASSIVE)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--json', default=None, help='write results as JSON here')
    p.add_argument('--markdown', default=None, help='write the markdown table here')
    p.add_argument('--in-process', action='store_true', help='same as --method sequential')
    p.add_argument('--head-breakdown', action='store_true',
                   help="instead of the table: time each piece of SRDL's head (inference, first --batch-size) "
                        'and the floor of eqs. 5-6 at the peak measured on this machine (benchmarks/head_floor.py)')
    p.add_argument('--cell', default=None, help=argparse.SUPPRESS)  # internal: run one CPU cell, print JSON
    args = p.parse_args(argv)
    return args


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the options left unset by the device's defaults (CUDA: batch 1 and 32, 30 repeats; CPU: 1 and 2, 5)."""
    import torch
    if args.device is None:
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    cuda = args.device.startswith('cuda')
    if args.batch_size is None:
        args.batch_size = [1, 32] if cuda else [1, 2]
    if args.train_batch_size is None:
        args.train_batch_size = 16 if cuda else max(args.batch_size)
    if args.warmup is None:
        args.warmup = 10 if cuda else 2
    if args.repeats is None:
        args.repeats = 30 if cuda else 5
    if args.cuda_graphs and not cuda:
        raise SystemExit('--cuda-graphs needs --device cuda')
    if args.clock != 'wall' and cuda:
        raise SystemExit(f'--clock {args.clock} is for CPU timing')
    unknown = [r for r in args.rows.split(',') if r not in ALL_ROWS]
    if unknown:
        raise SystemExit(f'unknown rows {unknown}; choose from {list(ALL_ROWS)}')
    if args.method is None:
        args.method = 'sequential' if (cuda or args.in_process) else 'alternate'
    elif args.in_process and args.method != 'sequential':
        raise SystemExit('--in-process is --method sequential; drop one of them')
    return args


def environment(device: str) -> Dict[str, Any]:
    """Versions, hardware and date for the record."""
    import torch
    import timm
    env: Dict[str, Any] = {
        'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
        'python': platform.python_version(), 'torch': torch.__version__, 'timm': timm.__version__,
        'cpu': _cpu_model(), 'threads': torch.get_num_threads(),
    }
    try:
        import triton
        env['triton'] = triton.__version__
    except ImportError:
        env['triton'] = None
    if device.startswith('cuda'):
        env['gpu'] = torch.cuda.get_device_name(torch.device(device))
        env['cuda'] = torch.version.cuda
    try:
        env['loadavg'] = os.getloadavg()
    except OSError:
        pass
    return env


def _cpu_model() -> str:
    try:
        out = subprocess.run(['lscpu'], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith('Model name'):
                return line.split(':', 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or 'unknown'


def _proc_status_kib(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise KeyError(field)


def build_model(row: str, num_classes: int, attention_impl: str, img_size: int = 448,
                vit_backbone: str = 'vit_base_patch16_224'):
    """The model of ``row`` (random weights; SRDL label nodes from a seeded random normal, no warning)."""
    import numpy as np
    import timm
    import srdl_timm  # noqa: F401  (registers the srdl_* models)
    spec = ALL_ROWS[row]
    if spec['model'].startswith('peer:'):
        return _peer_heads().create_peer_model(spec['model'][5:], backbone='resnet101', num_classes=num_classes)
    if spec['model'] == 'resnet101':
        return timm.create_model('resnet101', num_classes=num_classes)
    if spec['model'] == 'vit':
        return timm.create_model(vit_backbone, num_classes=num_classes, img_size=img_size)
    kwargs = dict(spec['kwargs'])
    if row in TRANSFORMER_ROWS:
        kwargs.update(backbone=vit_backbone, img_size=img_size)
    embeddings = np.random.default_rng(0).standard_normal((num_classes, 300)).astype('float32')
    return timm.create_model(spec['model'], num_classes=num_classes, label_embeddings=embeddings,
                             attention_impl=attention_impl, **kwargs)


def _dtype(precision: str):
    import torch
    return {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}[precision]


def _peer_heads():
    """benchmarks/peer_heads.py (H5's peer heads), whether this file runs as a script or as benchmarks.timing."""
    try:
        from benchmarks import peer_heads
    except ImportError:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import peer_heads
    return peer_heads


def prepare_cell(args: argparse.Namespace, row: str, mode: str, batch: int) -> Tuple[Callable[[], None], Dict]:
    """Build ``row``'s model and inputs for ``mode`` at ``batch``; returns ``(step, info)`` where ``step()`` runs
    one iteration (inference, or a training step: forward, loss, backward, SGD step)."""
    import torch
    from srdl_timm.ops import select_impl
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = build_model(row, args.num_classes, args.attention_impl, args.img_size, args.vit_backbone)
    dtype = _dtype(args.precision)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.randn(batch, 3, args.img_size, args.img_size, device=device)
    info: Dict[str, Any] = {}
    if hasattr(model, 'set_attention_impl'):
        info['attention_impl'] = select_impl(args.attention_impl, device) if args.compile == 'off' else 'compiled'
        if info['attention_impl'] == 'chunked' and args.attention_impl == 'auto' and device.type == 'cpu':
            info['attention_impl'] = 'auto-cpu'  # compiled from AUTO_MIN_ELEMENTS on; see _auto_note
    if mode == 'infer':
        model = model.to(device=device, memory_format=memory_format).eval()
        if dtype != torch.float32:
            model = model.to(dtype)
            x = x.to(dtype)
        x = x.contiguous(memory_format=memory_format)
        if args.compile == 'on':
            model = torch.compile(model, mode=args.compile_mode)

        def step() -> None:
            with torch.inference_mode():
                model(x)

        if args.cuda_graphs:
            step = _graphed_inference(model, x, args.warmup)
    else:
        from srdl_timm.loss import SRDLLoss
        model = model.to(device=device, memory_format=memory_format).train()
        oe = hasattr(model, 'set_object_erasing') and getattr(model, 'use_sa', False)
        if oe:
            model.set_object_erasing(True)
        if hasattr(model, 'set_attention_impl'):
            info['object_erasing'] = bool(oe)
        if args.compile == 'on':
            model = torch.compile(model, mode=args.compile_mode)
        x = x.contiguous(memory_format=memory_format)
        target = (torch.rand(batch, args.num_classes, device=device) < 0.1).float()
        loss_fn = SRDLLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)
        autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = loss_fn(model(x), target)
            loss.backward()
            optimizer.step()

    return step, info


def _auto_note() -> str:
    """What 'auto' ran on CPU in this process (compiled or chunked per op), for the notes column."""
    from srdl_timm.ops import compiled, dispatch
    picks = sorted(f'{op}:{choice}' for op, choice in dispatch.auto_decisions().items())
    if not picks:
        return 'chunked' if compiled.available() else f'chunked (compiled off: {compiled.unavailable_reason()})'
    return '/'.join(picks)


def run_cell(args: argparse.Namespace, row: str, mode: str, batch: int, label: Optional[str] = None
             ) -> Dict[str, Any]:
    """Build ``row``'s model, run ``mode`` at ``batch``: warm-up, timed repeats, peak memory.

    ``label`` names the result row (default ``row``), e.g. for a variant run with other settings.
    """
    import torch
    device = torch.device(args.device)
    cuda = device.type == 'cuda'
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base_alloc = torch.cuda.memory_allocated(device)
    else:
        rss0 = _proc_status_kib('VmRSS')
        _reset_peak_rss()
    step, info = prepare_cell(args, row, mode, batch)
    for _ in range(args.warmup):
        step()
    if cuda:  # steady-state peak: the timed iterations (compilation and autotuning excluded)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = time_it(step, device, 0, args.repeats, args.clock)
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) - base_alloc
    else:
        peak = (_proc_status_kib('VmHWM') - rss0) * 1024
    if info.get('attention_impl') == 'auto-cpu':
        info['attention_impl'] = _auto_note()
    label = row if label is None else label
    return dict(row=label, mode=mode, batch=batch, times_ms=times, peak_bytes=peak, **info)


def run_alternating(args: argparse.Namespace, rows: Sequence[str], mode: str, batch: int) -> List[Dict[str, Any]]:
    """All ``rows`` built in this process; ``--warmup`` iterations of each, then ``--rounds * --repeats`` timed
    iterations in which every row runs once, in an order rotated each time. ``times_ms[i]`` of every row
    belong to the same alternation ``i`` (see :func:`summarize`'s paired ratios)."""
    import torch
    device = torch.device(args.device)
    prepared = {row: prepare_cell(args, row, mode, batch) for row in rows}
    for _ in range(args.warmup):
        for row in rows:
            prepared[row][0]()
    times: Dict[str, List[float]] = {row: [] for row in rows}
    for i in range(args.rounds * args.repeats):
        order = list(rows[i % len(rows):]) + list(rows[:i % len(rows)])
        for row in order:
            times[row] += time_it(prepared[row][0], device, 0, 1, args.clock)
        print(f'  [{i}] ' + ' '.join(f'{row} {times[row][-1]:.1f}' for row in rows), file=sys.stderr, flush=True)
    cells = []
    for row in rows:
        info = dict(prepared[row][1])
        if info.get('attention_impl') == 'auto-cpu':
            info['attention_impl'] = _auto_note()
        cells.append(dict(row=row, mode=mode, batch=batch, times_ms=times[row], peak_bytes=None, paired=True,
                          **info))
    return cells


def _reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')


def _graphed_inference(model, x, warmup: int) -> Callable[[], None]:
    import torch
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(max(3, warmup)):
            model(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        model(x)
    return graph.replay


def time_it(step: Callable[[], None], device, warmup: int, repeats: int, clock: str = 'wall') -> List[float]:
    """Milliseconds of each of ``repeats`` calls of ``step`` after ``warmup`` untimed ones."""
    import torch
    cuda = device.type == 'cuda'
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    times: List[float] = []
    timer = {'thread': time.thread_time, 'process': time.process_time}.get(clock, time.perf_counter)
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = timer()
            step()
            times.append((timer() - t0) * 1e3)
    return times


def _cell_in_subprocess(args: argparse.Namespace, argv: Sequence[str], row: str, mode: str, batch: int
                        ) -> Dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), *argv, '--cell', json.dumps([row, mode, batch])]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f'cell {row}/{mode}/{batch} failed:\n{result.stderr[-4000:]}')
    return json.loads(result.stdout.strip().splitlines()[-1])


def summarize(cells: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Pool the rounds of each (row, mode, batch) and add medians, img/s and ratios to the row's bare backbone
    (``resnet101``; ``vit`` for ``srdl_vit``; ``<baseline>[v]`` for a variant row ``name[v]`` when present)."""
    pooled: Dict[tuple, Dict[str, Any]] = {}
    for cell in cells:
        key = (cell['row'], cell['mode'], cell['batch'])
        entry = pooled.setdefault(key, dict(cell, times_ms=[], peak_bytes=None))
        entry['times_ms'] = entry['times_ms'] + list(cell['times_ms'])
        if cell.get('peak_bytes') is not None:
            entry['peak_bytes'] = max(entry['peak_bytes'] or 0, cell['peak_bytes'])
    results = []
    for (row, mode, batch), entry in pooled.items():
        ms = statistics.median(entry['times_ms'])
        entry.update(ms=ms, ms_min=min(entry['times_ms']), img_per_s=batch * 1000.0 / ms,
                     peak_mib=None if entry['peak_bytes'] is None else entry['peak_bytes'] / 2 ** 20)
        results.append(entry)
    for entry in results:
        # a variant row 'name[variant]' is compared with 'resnet101[variant]' when that was run
        row = entry['row']
        variant = row[row.index('['):] if '[' in row else ''
        baseline = ALL_ROWS.get(row.split('[')[0], {}).get('baseline', BASELINE)
        entry['baseline'] = baseline
        base = pooled.get((baseline + variant, entry['mode'], entry['batch'])) \
            or pooled.get((baseline, entry['mode'], entry['batch']))
        entry['time_ratio'] = entry['ms'] / base['ms'] if base else None
        entry['paired_ratio'] = None
        if base and entry.get('paired') and base.get('paired') and len(base['times_ms']) == len(entry['times_ms']):
            ratios = sorted(t / b for t, b in zip(entry['times_ms'], base['times_ms']))
            q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
            entry['paired_ratio'] = dict(median=statistics.median(ratios), p25=q[0], p75=q[2], n=len(ratios))
        entry['mem_ratio'] = (entry['peak_mib'] / base['peak_mib']
                              if base and entry['peak_mib'] and base['peak_mib'] else None)
    return results


def markdown(results: List[Dict[str, Any]], env: Dict[str, Any], args: argparse.Namespace) -> str:
    """The results as a markdown table (one line per row/mode/batch) with a header of settings."""
    hw = env.get('gpu') or env.get('cpu')
    lines = [
        f"{hw}; torch {env['torch']}, timm {env['timm']}, triton {env.get('triton')}; {env['date']}",
        f"{args.img_size}x{args.img_size}, {args.precision}, channels_last={args.channels_last}, "
        f"compile={args.compile}, cuda_graphs={args.cuda_graphs}, threads={env['threads']}, clock={args.clock}, "
        f"warmup={args.warmup}, repeats={args.repeats} x rounds={args.rounds} (median), method={args.method}, "
        f"load average {' '.join(f'{x:.1f}' for x in env.get('loadavg', ()))}",
        '',
        '| model | mode | batch | ms (median) | ms (min) | img/s | peak MiB | time / bare backbone '
        '| paired ratio median [p25, p75] | memory / bare backbone | notes |',
        '|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    order = {r: i for i, r in enumerate(ALL_ROWS)}
    for e in sorted(results, key=lambda e: (e['mode'] != 'infer', e['batch'], order.get(e['row'], len(order)),
                                            e['row'])):
        notes = [] if e.get('baseline', BASELINE) == BASELINE or e['row'] == e.get('baseline') else [
            f"vs {e['baseline']}"]
        if e['row'] in ('vit', 'srdl_vit'):
            notes.append(args.vit_backbone)
        if 'attention_impl' in e:
            notes.append(f"attn={e['attention_impl']}")
        if e['mode'] == 'train' and 'object_erasing' in e:
            notes.append('OE' if e.get('object_erasing') else 'no OE')
        peak = '-' if e['peak_mib'] is None else f"{e['peak_mib']:.0f}"
        ratio = '-' if e['time_ratio'] is None else f"{e['time_ratio']:.3f}"
        mem = '-' if e['mem_ratio'] is None else f"{e['mem_ratio']:.2f}"
        pr = e.get('paired_ratio')
        paired = '-' if not pr else f"{pr['median']:.3f} [{pr['p25']:.3f}, {pr['p75']:.3f}]"
        lines.append(f"| {e['row']} | {e['mode']} | {e['batch']} | {e['ms']:.1f} | {e['ms_min']:.1f} | "
                     f"{e['img_per_s']:.1f} | {peak} | {ratio} | {paired} | {mem} | {', '.join(notes)} |")
    return '\n'.join(lines) + '\n'


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """Run the benchmark; returns the summarized rows."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = resolve_defaults(parse_args(argv))
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cell is not None:  # child process: one CPU cell
        row, mode, batch = json.loads(args.cell)
        print(json.dumps(run_cell(args, row, mode, batch)))
        return []
    if args.head_breakdown:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from head_floor import head_breakdown_main  # benchmarks/head_floor.py (beside this file)
        return head_breakdown_main(args)
    rows = args.rows.split(',')
    modes = [m for m in args.modes.split(',') if m]
    cells_spec = []
    for mode in modes:
        if mode == 'infer':
            cells_spec += [(r, 'infer', b) for b in args.batch_size for r in rows]
        elif mode == 'train' and args.train_batch_size > 0:
            cells_spec += [(r, 'train', args.train_batch_size) for r in rows]
        elif mode not in ('infer', 'train'):
            raise SystemExit(f'unknown mode {mode!r}')
    cells: List[Dict[str, Any]] = []
    if args.method == 'alternate':
        groups: Dict[tuple, List[str]] = {}
        for row, mode, batch in cells_spec:
            groups.setdefault((mode, batch), []).append(row)
        for (mode, batch), group in groups.items():
            print(f'{mode} b{batch}: {", ".join(group)} alternating', file=sys.stderr, flush=True)
            cells += run_alternating(args, group, mode, batch)
            gc.collect()
    subprocess_cells = args.device == 'cpu' and args.method == 'fresh'
    child_argv = [a for a in argv]
    for rnd in range(args.rounds if args.method != 'alternate' else 0):
        for row, mode, batch in cells_spec:
            if subprocess_cells:
                cell = _cell_in_subprocess(args, child_argv, row, mode, batch)
            else:
                cell = run_cell(args, row, mode, batch)
                if args.device == 'cpu':
                    cell['peak_bytes'] = None  # in-process RSS peaks are not attributable to one cell
            cell['round'] = rnd
            cells.append(cell)
            print(f"[{rnd}] {row:12s} {mode:5s} b{batch:<3d} median {statistics.median(cell['times_ms']):9.2f} ms",
                  file=sys.stderr, flush=True)
    results = summarize(cells)
    env = environment(args.device)
    table = markdown(results, env, args)
    print(table)
    if args.markdown:
        from srdl_timm.utils import atomic_write_bytes
        atomic_write_bytes(args.markdown, table.encode('utf-8'))
    if args.json:
        from srdl_timm.utils import atomic_write_json
        atomic_write_json(args.json, dict(env=env, args=vars(args), results=results))
    return results


if __name__ == '__main__':
    main()
