"""SRDL head breakdown and the floor of eqs. 5-6 on this machine (``benchmarks/timing.py --head-breakdown``).

The two per-category computations of the CAR head each do ``N = B*C*P*d`` elementary steps:

* eq. 5's inner sum: ``N`` multiply-tanh-accumulate steps (``w_k tanh(s_pk e_ck)`` summed over ``k``);
* eq. 6 + GMP: ``N`` multiply-max steps (``max_p F_pk (a SA_cp + b CA_ck)``).

Their floor is ``N`` times the time of one step at this machine's peak, divided by the threads. The peak is
measured here, on cache-resident data with one thread (so neither memory traffic nor parallel overhead
counts), as the fastest of:

* the compiled kernels themselves (:mod:`srdl_timm.ops.compiled`) on a problem whose inputs
  fit in L2 (1M steps per call);
* for eq. 5, ATen's vectorised ``tanh`` alone (MKL/SLEEF) on an L2-resident vector: a lower bound for any
  path built from library calls (it leaves out the multiply and the accumulation); for eq. 6 ATen's
  ``maximum`` alone on L2-resident vectors (one of the two operations of a step).

Times are CPU time of the one thread (``time.thread_time``), so on a shared machine the time other jobs take
from the core does not count.

Every head piece is then timed on a random ``[B, d, h, w]`` feature map (inference), alternating the pieces
round by round like ``--method alternate`` does for whole models, with eqs. 5 and 6 under each CPU
implementation (chunked, compiled, and what ``--attention-impl`` picks), and each is set against its floor.

``python benchmarks/head_floor.py`` prints :func:`ops_under_threads`: eqs. 5-6 per CPU path at 1 and 2
threads, with the number of ATen ops per call (why the chunked path is so sensitive to a busy machine).
"""
import statistics
import time
from typing import Any, Callable, Dict, List

__all__ = ['measure_peak', 'head_breakdown', 'head_breakdown_main', 'ops_under_threads']


def _per_call_s(fn: Callable[[], object], calls: int, repeats: int = 5) -> float:
    """Smallest mean CPU time of the calling thread over ``calls`` back-to-back calls of ``fn``, over ``repeats``
    tries (seconds). Thread time, with one thread: time other jobs take from this core does not count."""
    fn()
    best = float('inf')
    for _ in range(repeats):
        t0 = time.thread_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.thread_time() - t0) / calls)
    return best


def measure_peak() -> Dict[str, float]:
    """Nanoseconds per step (one thread, cache-resident) of eq. 5 and eq. 6, by each candidate (see module
    docstring); keys ``eq5_compiled``, ``eq5_tanh_only``, ``eq6_compiled``, ``eq6_max_only`` and the minima
    ``eq5``, ``eq6``. A compiled entry is missing when no compiler works here."""
    import torch
    from srdl_timm.ops import compiled
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out: Dict[str, float] = {}
        g = torch.Generator().manual_seed(0)
        vec = torch.randn(1 << 16, generator=g)  # 256 KiB each: L2
        other = torch.randn(1 << 16, generator=g)
        res = torch.empty_like(vec)
        out['eq5_tanh_only'] = 1e9 * _per_call_s(lambda: torch.tanh(vec, out=res), 200) / vec.numel()
        out['eq6_max_only'] = 1e9 * _per_call_s(lambda: torch.maximum(vec, other, out=res), 200) / vec.numel()
        b, c, p, d = 1, 8, 128, 1024  # s, F: 512 KiB; 1M steps per call
        s = torch.randn(b, p, d, generator=g)
        e = torch.randn(c, d, generator=g) * 0.1
        w = torch.randn(d, generator=g)
        sa = torch.rand(b, c, p, generator=g)
        ca = torch.rand(b, c, d, generator=g)
        steps = b * c * p * d
        try:
            with torch.inference_mode():
                out['eq5_compiled'] = 1e9 * _per_call_s(lambda: compiled.logits_forward(s, e, w), 20) / steps
                out['eq6_compiled'] = 1e9 * _per_call_s(
                    lambda: compiled.pool_forward(s, sa, ca, 0.5, 0.5, False), 20) / steps
        except Exception as error:  # no compiler: the library bounds only
            out['compiled_error'] = f'{type(error).__name__}: {error}'[:200]
        out['eq5'] = min(v for k, v in out.items() if k.startswith('eq5_'))
        out['eq6'] = min(v for k, v in out.items() if k.startswith('eq6_'))
        return out
    finally:
        torch.set_num_threads(threads)


def head_breakdown(args, batch: int) -> Dict[str, Any]:
    """Time every piece of SRDL's head (inference, ``batch``) and resnet101's, alternating; add the floor.

    Returns ``dict(pieces=[{piece, ms, ms_min, floor_ms?}], peak_ns=measure_peak(), steps=N)``.
    """
    import torch
    import timm
    from timing import _dtype, build_model, time_it  # benchmarks/timing.py (its folder is on sys.path)
    from srdl_timm.ops import dispatch as K
    device = torch.device(args.device)
    dtype = _dtype(args.precision)
    model = build_model('srdl', args.num_classes, args.attention_impl).to(device=device, dtype=dtype).eval()
    resnet = timm.create_model('resnet101', num_classes=args.num_classes).to(device=device, dtype=dtype).eval()
    side = args.img_size // 32
    fmap = torch.randn(batch, model.num_features, side, side, device=device, dtype=dtype).relu_()
    image = torch.randn(batch, 3, args.img_size, args.img_size, device=device, dtype=dtype)
    car = model.car
    impl = args.attention_impl
    impls = [impl] + [i for i in ('chunked', 'compiled') if i != impl and device.type == 'cpu']
    if device.type == 'cpu' and not _compiles():
        impls = [i for i in impls if i != 'compiled']
    with torch.inference_mode():
        feat = fmap.flatten(2).transpose(1, 2)
        emb = car.f_w(model.label_graph().to(dtype))
        proj = car.f_sa(feat)
        w = car.f_s.weight.view(-1)
        sa = car.spatial_attention(feat, emb)
        ca = car.channel_attention(feat.amax(dim=1), emb)
        pooled = car.pool(feat, sa, ca)
        steps = feat.shape[0] * emb.shape[0] * feat.shape[1] * feat.shape[2]
        pieces: List[tuple] = [
            ('label graph + f_w', lambda: car.f_w(model.label_graph().to(dtype))),
            ('f_sa (B*P*d*d linear)', lambda: car.f_sa(feat)),
        ]
        for i in impls:
            pieces.append((f'eq. 5 tanh sum (B*C*P*d) [{i}]',
                           lambda i=i: K.spatial_attention_logits(proj, emb, w, impl=i)))
        pieces.append(('eq. 4 CA (f_ca, f_c: B*C*d*d)', lambda: car.channel_attention(feat.amax(dim=1), emb)))
        for i in impls:
            pieces.append((f'eq. 6 + GMP (B*C*P*d) [{i}]', lambda i=i: K.attention_max_pool(
                feat, sa, ca, car.sa_weight, car.ca_weight, impl=i)))
        pieces += [
            ('classifier (eq. 2)', lambda: model.classifier(pooled)),
            (f'SRDL forward_head (all) [{impl}]', lambda: model.forward_head(fmap)),
            ('resnet101 forward_head', lambda: resnet.forward_head(fmap)),
            ('resnet101 forward_features', lambda: resnet.forward_features(image)),
        ]
        for _, fn in pieces:  # warm-up (and the one-time 'auto' measurement / compile)
            time_it(fn, device, args.warmup, 0)
        times: Dict[str, List[float]] = {name: [] for name, _ in pieces}
        for _ in range(args.repeats):
            for name, fn in pieces:
                times[name] += time_it(fn, device, 0, 1, args.clock)
    peak = measure_peak() if device.type == 'cpu' else {}
    threads = torch.get_num_threads()
    out = []
    for name, _ in pieces:
        entry = dict(piece=name, ms=statistics.median(times[name]), ms_min=min(times[name]))
        for eq in ('eq5', 'eq6'):
            if peak and name.startswith('eq. 5' if eq == 'eq5' else 'eq. 6'):
                entry['floor_ms'] = steps * peak[eq] * 1e-6 / threads
        out.append(entry)
    return dict(pieces=out, peak_ns=peak, steps=steps, auto=K.auto_decisions())


def _compiles() -> bool:
    from srdl_timm.ops import compiled
    return compiled.available()


def head_breakdown_main(args) -> List[Dict[str, Any]]:
    """Print (and write with ``--markdown``/``--json``) the head breakdown table; returns its pieces."""
    from timing import environment
    env = environment(args.device)
    result = head_breakdown(args, args.batch_size[0])
    pieces, peak = result['pieces'], result['peak_ns']
    head = next(p['ms'] for p in pieces if p['piece'].startswith('SRDL forward_head'))
    backbone = next(p['ms'] for p in pieces if p['piece'] == 'resnet101 forward_features')
    load = ' '.join(f'{x:.1f}' for x in env.get('loadavg', ()))
    lines = [f"{env.get('gpu') or env['cpu']}; torch {env['torch']}; {env['date']}; threads {env['threads']}, "
             f"clock {args.clock}, {args.precision}, batch {args.batch_size[0]}, {args.img_size} px, "
             f"attention {args.attention_impl}, repeats {args.repeats} (alternating), load average {load}", '',
             '| piece | ms (median) | ms (min) | % of resnet101 forward_features | floor ms | median / floor |',
             '|---|---|---|---|---|---|']
    for p in pieces:
        floor = p.get('floor_ms')
        lines.append(f"| {p['piece']} | {p['ms']:.2f} | {p['ms_min']:.2f} | {100 * p['ms'] / backbone:.1f} | "
                     + (f"{floor:.2f} | {p['ms'] / floor:.2f} |" if floor else '- | - |'))
    lines.append(f"\nSRDL head / resnet101 features: {head / backbone:.3f}")
    if peak:
        lines.append("Peak per step (1 thread, cache-resident, ns): "
                     + ', '.join(f'{k} {v:.3f}' if isinstance(v, float) else f'{k} {v}' for k, v in peak.items())
                     + f"; N = B*C*P*d = {result['steps']:,} steps per equation")
    if result['auto']:
        lines.append("'auto' ran: " + '; '.join(f'{op} -> {impl}' for op, impl in result['auto'].items()))
    table = '\n'.join(lines) + '\n'
    print(table)
    if args.markdown:
        from srdl_timm.utils import atomic_write_bytes
        atomic_write_bytes(args.markdown, table.encode('utf-8'))
    if args.json:
        from srdl_timm.utils import atomic_write_json
        atomic_write_json(args.json, dict(env=env, args=vars(args), pieces=pieces, peak_ns=peak))
    return pieces


def ops_under_threads(batch: int = 2, num_classes: int = 80, side: int = 14, repeats: int = 9) -> List[Dict]:
    """Eq. 5 + eq. 6 (inference, the head's shapes at 448 px) per CPU path at 1 and 2 threads: wall-clock median
    and minimum, CPU time of the process (both threads), and how many ATen ops (each a parallel region with
    a barrier at its end) one call issues. On a shared machine a barrier waits for a thread the OS has
    descheduled; a path issuing thousands of small ops suffers much more than one issuing a few big loops."""
    import os
    import torch
    from srdl_timm.ops import dispatch as K
    g = torch.Generator().manual_seed(0)
    p, d = side * side, 2048
    s, feat = torch.randn(batch, p, d, generator=g), torch.randn(batch, p, d, generator=g).relu_()
    e, w = torch.randn(num_classes, d, generator=g) * 0.05, torch.randn(d, generator=g) / d ** 0.5
    sa, ca = torch.rand(batch, num_classes, p, generator=g), torch.rand(batch, num_classes, d, generator=g)

    def both(impl: str) -> None:
        K.spatial_attention_logits(s, e, w, impl=impl)
        K.attention_max_pool(feat, sa, ca, impl=impl)

    impls = ['chunked'] + (['compiled'] if _compiles() else [])
    threads0 = torch.get_num_threads()
    rows = []
    with torch.inference_mode():
        ops = {}
        for impl in impls:
            both(impl)
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                both(impl)
            ops[impl] = sum(1 for ev in prof.events() if ev.name.startswith('aten::') and ev.cpu_parent is None)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for impl in impls:
                both(impl)
                wall, cpu = [], []
                for _ in range(repeats):
                    t0, c0 = time.perf_counter(), time.process_time()
                    both(impl)
                    wall.append(1e3 * (time.perf_counter() - t0))
                    cpu.append(1e3 * (time.process_time() - c0))
                rows.append(dict(impl=impl, threads=threads, wall_ms=statistics.median(wall), wall_min_ms=min(wall),
                                 cpu_ms=statistics.median(cpu), aten_ops=ops[impl], loadavg=os.getloadavg()[0]))
    torch.set_num_threads(threads0)
    return rows


if __name__ == '__main__':
    import sys
    sys.path.insert(0, __import__('os').path.dirname(__import__('os').path.abspath(__file__)))
    print('| path | threads | wall ms (median) | wall ms (min) | process CPU ms (median) | ATen ops per call | '
          'load average (1 min) |\n|---|---|---|---|---|---|---|')
    for r in ops_under_threads():
        print(f"| {r['impl']} | {r['threads']} | {r['wall_ms']:.1f} | {r['wall_min_ms']:.1f} | {r['cpu_ms']:.1f} | "
              f"{r['aten_ops']} | {r['loadavg']:.1f} |")
