"""Tests of srdl_timm/utils.py, the one copy of each small helper: atomic writes, JSON sanitising, the label-name
file reader, ``--model-kwargs`` parsing and sha256.

Run: OMP_NUM_THREADS=1 pytest -q tests/test_utils.py
"""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from srdl_timm.errors import InputError
from srdl_timm.utils import (
    atomic_write_bytes, atomic_write_json, jsonable, parse_model_kwargs, read_label_names, release_free_heap,
    sha256_file,
)


def _strict_json(path):
    """Parse a JSON file, refusing the NaN/Infinity extensions Python's json would otherwise accept."""
    def refuse(name):
        raise ValueError(f'{path} holds {name}, which is not JSON')
    return json.loads(Path(path).read_text(encoding='utf-8'), parse_constant=refuse)


def test_atomic_write_json_writes_strict_json_and_leaves_no_temporary_file(tmp_path):
    """atomic_write_json writes standard JSON (NaN and inf become null, numpy/torch values plain numbers), replaces
    an existing file whole, and leaves nothing but the target in the folder (no temporary file)."""
    target = tmp_path / 'out' / 'summary.json'  # the folder is created
    atomic_write_json(target, {'loss': float('nan'), 'best': float('inf'), 'mAP': np.float32(61.25),
                               'step': torch.tensor(8), 'history': (1, 2)})
    assert _strict_json(target) == {'loss': None, 'best': None, 'mAP': 61.25, 'step': 8, 'history': [1, 2]}
    atomic_write_json(target, {'step': 9})
    assert _strict_json(target) == {'step': 9}
    assert sorted(p.name for p in target.parent.iterdir()) == ['summary.json']


def test_failed_atomic_write_keeps_the_target_and_removes_the_temporary_file(tmp_path):
    """When the final rename fails (here the target is a non-empty folder), the error reaches the caller, the target
    is untouched and the temporary file is removed."""
    target = tmp_path / 'model.safetensors'
    target.mkdir()
    (target / 'keep.txt').write_text('keep')
    with pytest.raises(OSError):
        atomic_write_bytes(target, b'new bytes')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['model.safetensors']
    assert (target / 'keep.txt').read_text() == 'keep'


def test_jsonable_turns_numpy_and_torch_values_into_plain_json():
    """jsonable maps numpy/torch scalars and arrays to Python numbers and lists, tuples and sets to lists, paths to
    strings, keys to strings and every non-finite float (Python, numpy or torch) to None; the result passes
    json.dumps(allow_nan=False) and keeps bools, ints and strings as they are."""
    value = {
        'np_int': np.int64(3), 'np_float': np.float32(0.5), 'np_bool': np.bool_(True),
        'np_array': np.array([[1.0, np.nan], [np.inf, 2.0]]), 'torch_scalar': torch.tensor(1.5),
        'torch_vector': torch.tensor([1, 2, 3]), 'torch_nan': torch.tensor(float('nan')),
        'tuple': (1, 'a'), 'set': {7}, 'path': Path('/data/coco'), 1: 'int key', 'flag': False, 'none': None,
        'nested': [{'x': float('-inf')}],
    }
    out = jsonable(value)
    assert out == {
        'np_int': 3, 'np_float': 0.5, 'np_bool': True, 'np_array': [[1.0, None], [None, 2.0]], 'torch_scalar': 1.5,
        'torch_vector': [1, 2, 3], 'torch_nan': None, 'tuple': [1, 'a'], 'set': [7], 'path': '/data/coco',
        '1': 'int key', 'flag': False, 'none': None, 'nested': [{'x': None}],
    }
    assert type(out['np_int']) is int and type(out['np_float']) is float and type(out['np_bool']) is bool
    json.dumps(out, allow_nan=False)


def test_read_label_names_strips_a_bom_and_blank_lines(tmp_path):
    """A class-name file saved with a UTF-8 BOM (as Windows editors do), with surrounding blanks, blank lines and a
    non-ASCII name, gives exactly the names in order: the BOM is not part of the first name."""
    path = tmp_path / 'classes.txt'
    path.write_bytes('\ufeffcat\n\n  dog  \r\nmotorbike\ncafé\n'.encode('utf-8'))
    assert read_label_names(path) == ['cat', 'dog', 'motorbike', 'café']


@pytest.mark.parametrize('text, words', [
    ('cat\ndog\ncat\n', ["duplicate label names ['cat']"]),
    ('\ufeff\n  \n', ['no label names']),
])
def test_read_label_names_errors_name_the_file(tmp_path, text, words):
    """Duplicate names and a file without names are an InputError (a ValueError, exit 2) naming the file and what is
    wrong; so is a missing file."""
    path = tmp_path / 'classes.txt'
    path.write_text(text, encoding='utf-8')
    with pytest.raises(InputError) as info:
        read_label_names(path)
    assert str(path) in str(info.value) and all(w in str(info.value) for w in words)
    assert isinstance(info.value, ValueError) and info.value.exit_code == 2
    with pytest.raises(InputError, match='label-name file not found'):
        read_label_names(tmp_path / 'missing.txt')


def test_parse_model_kwargs_reads_python_literals_else_strings():
    """--model-kwargs key=value pairs: values that are Python literals become those values (ints, floats, bools,
    None, tuples, dicts), anything else stays a string, and only the first '=' splits key from value."""
    parsed = parse_model_kwargs(['embed_dim=8', 'oe_alpha=0.3', 'use_ca=False', 'drop=None', 'std=(0.5, 0.5)',
                                 "overlay={'std': (1e-40,)}", 'global_pool=avg', 'expr=a=b'])
    assert parsed == {'embed_dim': 8, 'oe_alpha': 0.3, 'use_ca': False, 'drop': None, 'std': (0.5, 0.5),
                      'overlay': {'std': (1e-40,)}, 'global_pool': 'avg', 'expr': 'a=b'}
    assert parse_model_kwargs(None) == {} and parse_model_kwargs([]) == {}
    with pytest.raises(InputError, match="--model-kwargs entries must be key=value, got 'embed_dim'"):
        parse_model_kwargs(['embed_dim'])


def test_sha256_file_matches_hashlib_across_chunks(tmp_path):
    """sha256_file equals hashlib's digest of the whole file, also when the file spans several read chunks."""
    data = np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8).tobytes()
    path = tmp_path / 'w.bin'
    path.write_bytes(data)
    assert sha256_file(path, chunk_size=4096) == sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert len(sha256_file(path)) == 64


_FRAGMENTED_HEAP = """
from srdl_timm.utils import release_free_heap

def rss_mib():
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith('VmRSS:')) / 1024

blocks = [bytearray(64 << 10) for _ in range(2048)]  # 128 MiB of 64 KiB blocks: glibc serves them from its heap
pinned = blocks.pop()  # the heap's top block stays in use, so free() alone cannot shrink the heap
del blocks
before = rss_mib()
done = release_free_heap()
print(done, before, rss_mib())
"""


def test_release_free_heap_returns_freed_heap_pages_to_the_os():
    """After 128 MiB of small blocks are freed below a block still in use, RSS stays up; release_free_heap()
    (glibc malloc_trim) gives at least 100 MiB of it back. On another C library it does nothing and says so."""
    import platform
    import subprocess
    import sys
    result = subprocess.run([sys.executable, '-c', _FRAGMENTED_HEAP], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    done, before, after = result.stdout.split()
    if platform.libc_ver()[0] != 'glibc':
        assert done == 'False' and release_free_heap() is False
        return
    assert done == 'True' and float(before) - float(after) >= 100, result.stdout
