"""timm's own generic model tests (tests/test_models.py from timm's source distribution) run against SRDL.

They check forward, backward reaching every parameter, default-cfg sanity (pool size, first conv and
classifier names, reset_classifier, device/dtype propagation), TorchScript, fx and feature extraction. The
sdist is fetched from PyPI into a cache once; without network the test is skipped with the reason.
"""
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import timm

CACHE = Path(os.environ.get('SRDL_TIMM_SDIST_CACHE', Path.home() / '.cache' / 'srdl-timm'))


def _timm_tests_dir() -> Path:
    version = timm.__version__
    root = CACHE / f'timm-{version}'
    if (root / 'tests' / 'test_models.py').exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    archive = CACHE / f'timm-{version}.tar.gz'
    if not archive.exists():
        result = subprocess.run(
            [sys.executable, '-m', 'pip', 'download', '--no-deps', '--no-binary', ':all:', f'timm=={version}',
             '-d', str(CACHE), '-q'], capture_output=True, text=True, timeout=300)
        if result.returncode != 0 or not archive.exists():
            pytest.skip(f'cannot fetch timm {version} sdist from PyPI: {result.stderr.strip()[-300:]}')
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if '/tests/' in m.name or m.name.endswith(('pyproject.toml', 'setup.cfg'))]
        tar.extractall(CACHE, members=members, filter='data')
    return root


@pytest.mark.slow
def test_timm_generic_model_tests_pass_for_srdl():
    """Every timm generic model test selected for srdl_test_resnet passes (none fails, at least 8 run)."""
    root = _timm_tests_dir()
    env = dict(os.environ, TORCH_BACKEND='srdl_timm', OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '2'))
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', 'tests/test_models.py',
         '-k', 'srdl_test_resnet', '-rA'],
        cwd=root, env=env, capture_output=True, text=True, timeout=900)
    summary = result.stdout[-4000:]
    assert result.returncode == 0, summary
    passed = [line for line in result.stdout.splitlines() if line.startswith('PASSED')]
    assert len(passed) >= 8, summary
