"""One of each small helper the package needs: sha256, JSON sanitising, atomic writes, label files, heap trim."""
import ast
import ctypes
import hashlib
import json
import math
import os
import platform
import sys
import uuid
from typing import Any, Dict, List, Optional, Sequence, Union

from .errors import InputError

__all__ = ['PathLike', 'sha256_file', 'parse_model_kwargs', 'jsonable', 'fsync_dir', 'write_synced',
           'atomic_write_bytes', 'atomic_write_json', 'read_label_names']

#: a file-system path as the package's functions accept it (the one definition; every module imports it)
PathLike = Union[str, os.PathLike]


def sha256_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in ``chunk_size`` blocks (64 lower-case hex digits)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk_size), b''):
            digest.update(block)
    return digest.hexdigest()


def parse_model_kwargs(items: Optional[Sequence[str]]) -> Dict[str, Any]:
    """``--model-kwargs k=v ...`` to a dict; values are Python literals where they parse, else strings."""
    out: Dict[str, Any] = {}
    for item in items or []:
        if '=' not in item:
            raise InputError(f'--model-kwargs entries must be key=value, got {item!r}')
        key, value = item.split('=', 1)
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON values: numpy/torch scalars and arrays to Python, tuples/sets to lists, paths to
    strings, non-finite floats to ``None`` (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, 'tolist'):  # numpy arrays/scalars, torch tensors
        return jsonable(obj.tolist())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, 'item'):
        return jsonable(obj.item())
    return str(obj)


def fsync_dir(path: str) -> None:
    """fsync a directory so that a rename/creation inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_synced(path: PathLike, data: Union[bytes, memoryview]) -> None:
    """Write ``data`` to ``path`` and fsync it; an OSError names ``path`` (``f.write``'s does not)."""
    try:
        with open(path, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise OSError(e.errno, e.strerror, os.fspath(path)) from e


def atomic_write_bytes(path: PathLike, data: Union[bytes, memoryview]) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, ``os.replace``, fsync dir)."""
    path = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(path)
    os.makedirs(folder or '.', exist_ok=True)
    tmp = os.path.join(folder, f'.{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}')
    try:
        write_synced(tmp, data)
        os.replace(tmp, path)
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_dir(folder)


def atomic_write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (via :func:`jsonable`: NaN/inf become null)."""
    atomic_write_bytes(path, (json.dumps(jsonable(obj), indent=2) + '\n').encode('utf-8'))


def read_label_names(path: PathLike) -> List[str]:
    """A class-name file, one name per line (a UTF-8 BOM, surrounding blanks and blank lines ignored).
    Raises :class:`InputError` naming the file when it is missing, empty or has duplicates."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f'label-name file not found: {path}')
    with open(path, 'r', encoding='utf-8-sig') as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise InputError(f'{path}: no label names (expected one name per line)')
    if len(set(names)) != len(names):
        raise InputError(f'{path}: duplicate label names {sorted({n for n in names if names.count(n) > 1})}')
    return names


_MALLOC_TRIM: Any = None  # glibc's malloc_trim, False where there is none; looked up on first use


def release_free_heap() -> bool:
    """Hand the free pages of the C heap back to the OS (glibc ``malloc_trim(0)``), e.g. after compiling the CAR
    kernels, so a later peak starts from the memory in use; returns whether it was done (False: not glibc)."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        _MALLOC_TRIM = False
        if sys.platform.startswith('linux') and platform.libc_ver()[0] == 'glibc':
            try:
                trim = ctypes.CDLL(None).malloc_trim
                trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
                _MALLOC_TRIM = trim
            except (OSError, AttributeError):
                pass
    if not _MALLOC_TRIM:
        return False
    _MALLOC_TRIM(0)
    return True
