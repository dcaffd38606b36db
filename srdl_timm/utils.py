"""Small helpers shared by the console scripts and the weight/checkpoint code."""
import ast
import hashlib
import os
from typing import Any, Dict, Optional, Sequence, Union

__all__ = ['sha256_file', 'parse_model_kwargs']


def sha256_file(path: Union[str, os.PathLike], chunk_size: int = 1 << 20) -> str:
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
            raise ValueError(f'--model-kwargs entries must be key=value, got {item!r}')
        key, value = item.split('=', 1)
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out
