"""timm's own generic model tests (tests/test_models.py from timm's source distribution) run against every SRDL
architecture and every pretrained tag.

They check forward, backward reaching every parameter, default-cfg sanity (pool size of the default input size,
first conv and classifier names, reset_classifier, device/dtype propagation, unknown kwargs rejected), TorchScript,
fx, feature extraction and that pretrained tags load (also with in_chans=1 / num_classes=5 / features_only). The
sdist is fetched from PyPI into a cache once; without network the test is skipped with the reason. A small pytest
plugin lowers the forward/backward/TorchScript/fx/feature input sizes of timm's module to 64 px so that ResNet-101
runs in seconds on a CPU (the default-cfg test still checks the pool size at each cfg's full input size, on the meta
device).
"""
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import timm

import srdl_timm  # noqa: F401  registers the SRDL architectures

CACHE = Path(os.environ.get('SRDL_TIMM_SDIST_CACHE', Path.home() / '.cache' / 'srdl-timm'))

#: pytest plugin run inside timm's test session: small inputs for the tests that run real tensors
SMALL_SIZES_PLUGIN = '''
SIZES = dict(TARGET_FWD_SIZE=64, TARGET_BWD_SIZE=64, TARGET_JIT_SIZE=64, TARGET_FFEAT_SIZE=64,
             TARGET_FWD_FX_SIZE=64, TARGET_BWD_FX_SIZE=64)


def pytest_collection_modifyitems(session, config, items):
    for module in {item.module for item in items if getattr(item, 'module', None) is not None}:
        for name, value in SIZES.items():
            if hasattr(module, name):
                setattr(module, name, value)
'''


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
def test_timm_generic_model_tests_pass_for_every_srdl_model_and_tag(tmp_path):
    """timm's generic tests pass for every registered srdl_* model and pretrained tag: none fails, and each name
    passes forward, backward, default-cfg, TorchScript and fx tests (each tag at least the default-cfg and
    pretrained-loading tests)."""
    root = _timm_tests_dir()
    (tmp_path / 'srdl_small_sizes.py').write_text(SMALL_SIZES_PLUGIN)
    env = dict(os.environ, TORCH_BACKEND='srdl_timm', OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '1'),
               PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get('PYTHONPATH', '')]))
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-p', 'srdl_small_sizes',
         'tests/test_models.py', '-k', 'srdl_', '-rA'],
        cwd=root, env=env, capture_output=True, text=True, timeout=1800)
    summary = result.stdout[-6000:]
    assert result.returncode == 0, summary
    passed = [line for line in result.stdout.splitlines() if line.startswith('PASSED')]
    assert not [line for line in result.stdout.splitlines() if line.startswith(('FAILED', 'ERROR'))], summary

    def tests_passed(name):
        return {line.split('::')[1].split('[')[0] for line in passed if f'[{name}-' in line or f'-{name}]' in line}

    for name in timm.list_models('srdl_*'):
        ran = tests_passed(name)
        for test in ('test_model_forward', 'test_model_backward', 'test_model_forward_torchscript',
                     'test_model_forward_fx', 'test_model_forward_features'):
            assert test in ran, (name, test, sorted(ran))
        # timm lists an architecture with weights under its tags only (as for its own models)
        cfg_names = timm.list_models(name, include_tags=True) or [name]
        assert all('test_model_default_cfgs' in tests_passed(n) for n in cfg_names), (name, cfg_names)
    tags = timm.list_pretrained('srdl_*')
    assert 'srdl_efficientnet_lite0.fashion_scenes' in tags
    for tag in tags:
        ran = tests_passed(tag)
        assert {'test_model_default_cfgs', 'test_model_load_pretrained'} <= ran, (tag, sorted(ran))
