#!/usr/bin/env python
"""One short CUDA run: the fused (Triton) and chunked CAR kernels against the reference, then the timing table.

Sections, in order, each printed as it finishes (total budget ``--budget-s``, default 280 s; optional sections
are skipped when the budget would be exceeded):

1. ops: eq. 5's inner sum and eq. 6 + GMP, forward and input gradients, paths ``triton`` and ``chunked`` vs the
   reference on CUDA: float64 (rel. err <= 1e-10), fp32 (<= 1e-5), bf16 (<= 1e-2); shapes with h*w and d not a
   multiple of a block, C = 1, C = 80 at the real head size (B=2, 14x14, d=2048), C = 1000.
2. model: ``srdl_resnet101`` (fp32, 224 px, batch 2, training with object erasing; ``f_sa``/``f_s`` perturbed and
   SA checked to vary over positions, max - min >= 1e-3) with ``attention_impl`` triton vs reference: logits,
   erased logits and every parameter gradient (rel. err <= 1e-4).
3. timing (eager): every row of benchmarks/timing.py at 448 px, ``--precision`` (bf16) + channels_last:
   inference at batch 1, 32, 64 and a training step with OE at batch 16; plus SRDL with the reference
   (naive) and chunked kernels at batch 32 for comparison.
4. (optional) CUDA graphs at batch 1 for resnet101 and srdl.
5. (optional) torch.compile at batch 32 for resnet101 and srdl.
6. (optional) ``pytest tests/test_ops_*.py`` (the Triton tests run natively on CUDA).

Exit status 0 when every check passed, 1 when one failed, 2 without CUDA. Relative error is
``max|a - b| / max|b|``.

    python benchmarks/cuda_check.py --json cuda_check.json --markdown cuda_check.md
"""
import argparse
import glob
import os
import subprocess
import sys
import time
import traceback
from typing import Any, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--budget-s', type=float, default=280.0, help='skip optional sections past this many seconds')
    p.add_argument('--precision', choices=('fp32', 'bf16', 'fp16'), default='bf16')
    p.add_argument('--img-size', type=int, default=448)
    p.add_argument('--batch-size', type=int, nargs='+', default=[1, 32, 64])
    p.add_argument('--train-batch-size', type=int, default=16)
    p.add_argument('--warmup', type=int, default=10)
    p.add_argument('--repeats', type=int, default=30)
    p.add_argument('--no-graphs', action='store_true')
    p.add_argument('--no-compile', action='store_true')
    p.add_argument('--no-pytest', action='store_true')
    p.add_argument('--no-timing', action='store_true',
                   help='only the correctness checks (sections 1-2: kernels and model against the reference)')
    p.add_argument('--json', default=None)
    p.add_argument('--markdown', default=None)
    p.add_argument('--smoke-cpu', action='store_true',
                   help='exercise this script on CPU with tiny sizes (Triton checks need TRITON_INTERPRET=1); '
                        'not a measurement')
    return p.parse_args(argv)


def rel_err(a, b) -> float:
    """``max|a - b| / max|b|`` in float64."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


class Checks:
    """Collects named checks with their measured error and bound."""

    def __init__(self) -> None:
        self.items: List[Dict[str, Any]] = []

    def add(self, name: str, err: float, bound: float) -> None:
        ok = err <= bound
        self.items.append(dict(name=name, err=err, bound=bound, ok=ok))
        print(f"  {'PASS' if ok else 'FAIL'} {name}: rel err {err:.2e} (<= {bound:.0e})", flush=True)

    def skip(self, name: str, reason: str) -> None:
        """A check that does not apply here (recorded, not a failure)."""
        self.items.append(dict(name=name, err=None, bound=None, ok=True, skipped=reason))
        print(f'  SKIP {name}: {reason}', flush=True)

    def fail(self, name: str, error: str) -> None:
        self.items.append(dict(name=name, err=None, bound=None, ok=False, error=error))
        print(f'  FAIL {name}: {error}', flush=True)

    @property
    def ok(self) -> bool:
        return all(i['ok'] for i in self.items)


def _op_case(checks: Checks, impl: str, dtype, shape, bound: float, dev: str) -> None:
    import torch
    from srdl_timm.ops import dispatch as K
    from srdl_timm.ops import reference as R
    b, p, d, c = shape
    g = torch.Generator(device='cpu').manual_seed(0)

    def make(*size, kind='randn'):
        t = torch.randn(*size, generator=g, dtype=torch.float64) if kind == 'randn' else \
            torch.rand(*size, generator=g, dtype=torch.float64)
        return t.to(device=dev, dtype=dtype).requires_grad_()

    cases = {
        'logits': ((make(b, p, d), make(c, d), make(d)),
                   lambda s, e, w: K.spatial_attention_logits(s, e, w, impl=impl),
                   R.spatial_attention_logits_reference),
        'pool': ((make(b, p, d), make(b, c, p, kind='rand'), make(b, c, d, kind='rand')),
                 lambda f, sa, ca: K.attention_max_pool(f, sa, ca, impl=impl),
                 R.attention_max_pool_reference),
        'pool_sa_only': ((make(b, p, d), make(b, c, p, kind='rand')),
                         lambda f, sa: K.attention_max_pool(f, sa, None, 1.0, 1.0, impl=impl),
                         lambda f, sa: R.attention_max_pool_reference(f, sa, None, 1.0, 1.0)),
    }
    for op, (inputs, fn, ref) in cases.items():
        name = f'{op} {impl} {str(dtype).replace("torch.", "")} B{b} P{p} d{d} C{c}'
        try:
            out = fn(*inputs)
            ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
            expected = ref(*ref_inputs)
            cot = torch.randn(expected.shape, generator=g, dtype=torch.float64).to(dev)
            grads = torch.autograd.grad(out, inputs, cot.to(out.dtype))
            ref_grads = torch.autograd.grad(expected, ref_inputs, cot)
            err = max([rel_err(out, expected)] + [rel_err(a, r) for a, r in zip(grads, ref_grads)])
            checks.add(name, err, bound)
        except Exception as e:  # report and go on to the next check
            checks.fail(name, f'{type(e).__name__}: {e}')
            traceback.print_exc()


def check_ops(checks: Checks, dev: str, smoke: bool) -> None:
    """Section 1: both paths on ``dev`` vs the reference, float64 / fp32 / bf16."""
    import torch
    from srdl_timm.ops import triton_launch as T
    impls = ['chunked'] + (['triton'] if T.is_available(torch.device(dev)) else [])
    if dev == 'cpu':
        impls.append('compiled')  # (--smoke-cpu) the CPU path generated by torch.compile
    if 'triton' not in impls and dev == 'cpu':  # --smoke-cpu: Triton runs on CPU only in its interpreter
        checks.skip('triton', 'no CUDA; set TRITON_INTERPRET=1 to run the Triton kernels in the interpreter')
    elif 'triton' not in impls:
        checks.fail('triton available', 'Triton not importable or card older than sm70')
    small = [(2, 63, 100, 37), (1, 1, 3, 1), (2, 18, 33, 1)]
    large = [(2, 9, 16, 1000)] if smoke else [(2, 196, 2048, 80), (2, 49, 256, 1000)]
    for impl in impls:
        for shape in small:
            _op_case(checks, impl, torch.float64, shape, 1e-10, dev)
        for shape in small + large:
            _op_case(checks, impl, torch.float32, shape, 1e-5, dev)
        for shape in small[:1] + large:
            _op_case(checks, impl, torch.bfloat16, shape, 1e-2, dev)
    if dev == 'cuda':
        torch.cuda.synchronize()


def check_model(checks: Checks, dev: str, smoke: bool) -> None:
    """Section 2: whole model, triton (on CPU without it: chunked) vs reference, training with OE (fp32)."""
    import numpy as np
    import torch
    import timm
    import srdl_timm  # noqa: F401
    from srdl_timm.ops import triton_launch as T
    fast = 'triton' if T.is_available(torch.device(dev)) else 'chunked' if dev == 'cpu' else None
    if fast is None:
        checks.fail('model check', 'Triton is not available on this CUDA device')
        return
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    emb = np.random.default_rng(0).standard_normal((80, 300)).astype('float32')
    name, size = ('srdl_resnet18', 64) if smoke else ('srdl_resnet101', 224)
    model = timm.create_model(name, num_classes=80, label_embeddings=emb).to(dev).train()
    model.set_object_erasing(True)
    x = torch.randn(2, 3, size, size, device=dev)
    # the default zero-init f_s makes SA 0.5 everywhere: eq. 5 would not count and OE would erase nothing
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer, gain in ((model.car.f_sa, 30.0), (model.car.f_s, 3.0)):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * gain / layer.weight.shape[1] ** 0.5)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen))
        sa = model.eval().attention_maps(x)['spatial_attention'].flatten(2)
    model.train()
    spread = (sa.amax(-1) - sa.amin(-1)).min().item()  # over every image and class
    print(f'  SA max - min over positions: {spread:.2e} at least', flush=True)
    if spread < 1e-3:
        checks.fail('model SA varies over positions', f'max - min {spread:.2e} < 1e-3: the comparison is blind')
    results = {}
    for impl in ('reference', fast):
        model.set_attention_impl(impl)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        logits, erased = model(x)
        (logits.square().mean() + erased.sigmoid().mean()).backward()
        results[impl] = (logits.detach(), erased.detach(),
                         {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})
    ref, tri = results['reference'], results[fast]
    checks.add(f'model logits {fast} vs reference', rel_err(tri[0], ref[0]), 1e-4)
    checks.add(f'model erased logits {fast} vs reference', rel_err(tri[1], ref[1]), 1e-4)
    worst = max(((rel_err(tri[2][n], g), n) for n, g in ref[2].items() if g.abs().max() > 0), default=(0.0, ''))
    checks.add(f'model parameter grads {fast} vs reference (worst: {worst[1]})', worst[0], 1e-4)
    torch.backends.cudnn.deterministic = False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    del model


def timing_args(args: argparse.Namespace, **over):
    """A benchmarks/timing.py namespace for the CUDA table."""
    sys.path.insert(0, HERE)
    import timing
    argv = ['--device', args.device, '--img-size', str(args.img_size), '--precision', args.precision,
            '--channels-last', '--warmup', str(args.warmup), '--repeats', str(args.repeats),
            '--batch-size', *map(str, args.batch_size), '--train-batch-size', str(args.train_batch_size),
            '--method', 'sequential']
    ns = timing.resolve_defaults(timing.parse_args(argv))
    for k, v in over.items():
        setattr(ns, k, v)
    return ns


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the sections; print the checks and the table; return the exit status."""
    args = parse_args(argv)
    import torch
    args.device = 'cuda'
    if args.smoke_cpu:  # tiny settings to exercise the script itself on a machine without CUDA
        args.device, args.img_size, args.batch_size, args.train_batch_size = 'cpu', 64, [1, 2], 2
        args.warmup, args.repeats, args.no_graphs, args.no_compile, args.no_pytest = 1, 1, True, True, True
    elif not torch.cuda.is_available():
        print('CUDA is not available: nothing to check (this script is for a CUDA machine; '
              '--smoke-cpu exercises it on CPU).')
        return 2
    sys.path.insert(0, HERE)
    import timing
    t_start = time.perf_counter()
    elapsed = lambda: time.perf_counter() - t_start  # noqa: E731
    torch.backends.cudnn.benchmark = True
    env = timing.environment(args.device)
    print(f"{env.get('gpu')} | torch {env['torch']} | CUDA {env.get('cuda')} | triton {env.get('triton')} | "
          f"timm {env['timm']}", flush=True)
    checks = Checks()

    print('\n[1] ops vs reference', flush=True)
    check_ops(checks, args.device, args.smoke_cpu)
    print(f'    ({elapsed():.0f} s)', flush=True)
    print('\n[2] model vs reference', flush=True)
    try:
        check_model(checks, args.device, args.smoke_cpu)
    except Exception as e:
        checks.fail('model check', f'{type(e).__name__}: {e}')
        traceback.print_exc()
    print(f'    ({elapsed():.0f} s)', flush=True)

    cells: List[Dict[str, Any]] = []

    def cell(ns, row: str, mode: str, batch: int, label: Optional[str] = None) -> None:
        try:
            c = timing.run_cell(ns, row, mode, batch, label=label)
            cells.append(c)
            import statistics
            print(f"  {c['row']:22s} {mode:5s} b{batch:<3d} {statistics.median(c['times_ms']):8.2f} ms  "
                  f"peak {c['peak_bytes'] / 2**20:8.0f} MiB  ({elapsed():.0f} s)", flush=True)
            if args.device == 'cpu':
                c['peak_bytes'] = None  # in-process CPU peaks are not attributable to one cell
        except Exception as e:
            checks.fail(f'timing {label or row} {mode} b{batch}', f'{type(e).__name__}: {e}')
            traceback.print_exc()
        if args.device == 'cuda':
            torch.cuda.empty_cache()

    ns = timing_args(args)
    if args.no_timing:
        args.batch_size, args.no_graphs, args.no_compile = [], True, True
    else:
        print('\n[3] timing, eager', flush=True)
    for batch in args.batch_size:
        for row in timing.ROWS:
            cell(ns, row, 'infer', batch)
    if not args.no_timing:
        for row in timing.ROWS:
            cell(ns, row, 'train', args.train_batch_size)
        big = max(args.batch_size)
        for impl in ('reference', 'chunked'):
            cell(timing_args(args, attention_impl=impl), 'srdl', 'infer', big, label=f'srdl[{impl}]')
        cell(timing_args(args, attention_impl='reference'), 'srdl', 'train', args.train_batch_size,
             label='srdl[reference]')

    if not args.no_graphs and elapsed() < args.budget_s - 40:
        print('\n[4] CUDA graphs, batch 1', flush=True)
        ns_g = timing_args(args, cuda_graphs=True)
        for row in ('resnet101', 'srdl'):
            cell(ns_g, row, 'infer', 1, label=f'{row}[graphs]')
    if not args.no_compile and elapsed() < args.budget_s - 150:
        print('\n[5] torch.compile, batch 32', flush=True)
        ns_c = timing_args(args, compile='on')
        for row in ('resnet101', 'srdl'):
            if elapsed() < args.budget_s - 75:  # one compile takes up to about a minute
                cell(ns_c, row, 'infer', 32 if 32 in args.batch_size else big, label=f'{row}[compile]')
    if not args.no_pytest and elapsed() < args.budget_s - 45:
        print('\n[6] pytest tests/test_ops_*.py', flush=True)
        try:
            r = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-x', '-p', 'no:cacheprovider',
                                *sorted(glob.glob(os.path.join(ROOT, 'tests', 'test_ops_*.py')))],
                               capture_output=True, text=True, timeout=max(30, args.budget_s - elapsed()), cwd=ROOT)
            print('  ' + (r.stdout.strip().splitlines() or ['(no output)'])[-1], flush=True)
            if r.returncode != 0:
                checks.fail('pytest tests/test_ops_*.py', r.stdout[-2000:])
        except subprocess.TimeoutExpired:
            print('  pytest skipped: out of time', flush=True)

    results = timing.summarize(cells)
    table = timing.markdown(results, env, ns)
    if cells:
        print('\n' + table)
    failed = [c for c in checks.items if not c['ok']]
    skipped = [c for c in checks.items if c.get('skipped')]
    print(f"checks: {len(checks.items) - len(failed) - len(skipped)} passed, {len(failed)} failed, "
          f"{len(skipped)} skipped; total {elapsed():.0f} s")
    for c in failed:
        print(f"  FAILED {c['name']}: {c.get('error') or c['err']}")
    if args.markdown:
        from srdl_timm.utils import atomic_write_bytes
        atomic_write_bytes(args.markdown, table.encode('utf-8'))
    if args.json:
        from srdl_timm.utils import atomic_write_json
        atomic_write_json(args.json, dict(env=env, checks=checks.items, results=results))
    return 0 if checks.ok else 1


if __name__ == '__main__':
    sys.exit(main())
