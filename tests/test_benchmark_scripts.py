"""Tests of the benchmark scripts that need a GPU to measure (benchmarks/cuda_check.py), exercised on CPU so a
broken script is found before a GPU session is spent on it.

Run: pytest -q tests/test_benchmark_scripts.py
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cuda_check_smoke_cpu_correctness_sections_pass(tmp_path):
    """`cuda_check.py --smoke-cpu --no-timing` exits 0 on a machine without CUDA: the chunked and compiled CPU
    kernels are checked against the reference in float64/float32/bfloat16, the whole model (training, OE on)
    chunked against the reference, and Triton -- not runnable here without its interpreter -- is reported as
    skipped with the way to run it, not as a failure."""
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    out = tmp_path / 'checks.json'
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'cuda_check.py'), '--smoke-cpu',
                             '--no-timing', '--json', str(out)], capture_output=True, text=True, env=env,
                            cwd=str(tmp_path), timeout=600)
    tail = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, tail
    checks = json.loads(out.read_text())['checks']
    assert all(c['ok'] for c in checks), [c for c in checks if not c['ok']]
    skipped = [c for c in checks if c.get('skipped')]
    assert [c['name'] for c in skipped] == ['triton'] and 'TRITON_INTERPRET=1' in skipped[0]['skipped']
    names = [c['name'] for c in checks]
    for impl in ('chunked', 'compiled'):
        for dtype in ('float64', 'float32', 'bfloat16'):
            assert any(n.startswith(f'logits {impl} {dtype}') for n in names), (impl, dtype)
            assert any(n.startswith(f'pool {impl} {dtype}') for n in names), (impl, dtype)
    assert {'model logits chunked vs reference', 'model erased logits chunked vs reference'} <= set(names)
    assert 'SKIP triton' in result.stdout and '0 failed, 1 skipped' in result.stdout, tail
