"""Run timm's own ``train.py`` / ``validate.py`` / ``inference.py`` with the SRDL models registered.

``python -m srdl_timm.timm_script SCRIPT ARGS...`` imports :mod:`srdl_timm` and runs the script unchanged as
``__main__``; ``SCRIPT`` is a path or a name in ``$SRDL_TIMM_SCRIPTS_DIR``. For a multi-label SRDL model
``inference.py``'s softmax becomes a sigmoid (``--probs``).
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import types
from typing import Callable, Iterator, List, Optional, Sequence

from .errors import InputError

__all__ = ['SCRIPTS_DIR_ENV', 'resolve_script', 'script_version', 'is_multilabel_model', 'run_script', 'main']

#: environment variable naming the folder (a timm checkout) where bare script names are looked up
SCRIPTS_DIR_ENV = 'SRDL_TIMM_SCRIPTS_DIR'
#: the softmax expression of timm's inference.py (``if use_probs: output = output.softmax(-1)``)
_SOFTMAX_EXPR = 'output.softmax(-1)'
_PROBS_FN = '__srdl_timm_probs__'
_PROBS_CHOICES = ('auto', 'sigmoid', 'softmax')
_USAGE = f"""usage: python -m srdl_timm.timm_script [--probs {{{','.join(_PROBS_CHOICES)}}}] SCRIPT [SCRIPT_ARGS ...]

Run one of timm's scripts (train.py, validate.py, inference.py) with the srdl_* models registered.

  SCRIPT          path of the script, or a bare name looked up in ${SCRIPTS_DIR_ENV}
  SCRIPT_ARGS     passed to the script unchanged (see: python -m srdl_timm.timm_script SCRIPT --help)
  --probs MODE    inference.py's probabilities: auto (default: sigmoid for SRDL's multi-label models,
                  the script's softmax otherwise), sigmoid, or softmax
"""


def resolve_script(script: str) -> str:
    """Absolute path of ``script``: an existing path, else ``$SRDL_TIMM_SCRIPTS_DIR/script`` (else InputError)."""
    candidates = [script]
    scripts_dir = os.environ.get(SCRIPTS_DIR_ENV)
    if scripts_dir and not os.path.isabs(script):
        candidates.append(os.path.join(scripts_dir, script))
    for candidate in candidates:
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    where = ' or '.join(candidates)
    raise InputError(
        f'timm script not found: {where}. timm\'s train.py / validate.py / inference.py are not in its wheel or sdist: '
        'clone https://github.com/huggingface/pytorch-image-models at the tag of the installed timm and pass the '
        f'script\'s path, or set {SCRIPTS_DIR_ENV} to that checkout')


def script_version(script: str) -> Optional[str]:
    """timm version of the checkout ``script`` sits in (``timm/version.py`` beside it), or ``None``."""
    version_file = os.path.join(os.path.dirname(os.path.abspath(script)), 'timm', 'version.py')
    try:
        with open(version_file, 'r', encoding='utf-8') as f:
            match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", f.read())
    except OSError:
        return None
    return match.group(1) if match else None


def is_multilabel_model(model) -> bool:
    """Whether ``model`` scores classes independently (sigmoid): every SRDL model is multi-label."""
    from torch import nn
    from .models.srdl import SRDL
    while isinstance(getattr(model, 'module', None), nn.Module):
        model = model.module  # DataParallel / DDP
    model = getattr(model, '_orig_mod', model)  # torch.compile
    return isinstance(model, SRDL)


def _patch_inference_source(source: str) -> Optional[str]:
    """``source`` with inference.py's one softmax replaced by the launcher's probability function, or ``None``
    when the script does not contain exactly one such expression."""
    if source.count(_SOFTMAX_EXPR) != 1:
        return None
    return source.replace(_SOFTMAX_EXPR, f'{_PROBS_FN}(output)')


class _ModelKind:
    """Records whether the script's last created model is multi-label; turns logits into probabilities for it."""

    def __init__(self, probs: str, script: str, patched: bool):
        self.probs, self.script, self.patched = probs, script, patched
        self.multilabel = False

    def observe(self, model) -> None:
        self.multilabel = is_multilabel_model(model)
        if self.multilabel and not self.patched and self.probs != 'softmax':
            raise InputError(
                f'{self.script} does not contain the expression `{_SOFTMAX_EXPR}` this launcher replaces with a '
                'sigmoid, so it would show single-label softmax scores for a multi-label SRDL model. Run it with '
                '`--output-type logit` and apply a sigmoid to the logits, or pass --probs softmax to the launcher '
                'to accept softmax scores')

    def __call__(self, output):
        use_sigmoid = self.probs == 'sigmoid' or (self.probs == 'auto' and self.multilabel)
        return output.sigmoid() if use_sigmoid else output.softmax(-1)


@contextlib.contextmanager
def _observe_create_model(on_model: Callable) -> Iterator[None]:
    """Wrap ``timm.create_model`` / ``timm.models.create_model`` (what the scripts import) for the run."""
    import timm
    import timm.models

    original = timm.models.create_model

    def create_model(*args, **kwargs):
        model = original(*args, **kwargs)
        on_model(model)
        return model

    create_model.__wrapped__ = original
    saved = timm.create_model, timm.models.create_model
    timm.create_model = timm.models.create_model = create_model
    try:
        yield
    finally:
        timm.create_model, timm.models.create_model = saved


def run_script(script: str, args: Sequence[str] = (), probs: str = 'auto') -> None:
    """Import :mod:`srdl_timm` and run ``script`` as ``__main__`` with ``args`` (``probs``: inference.py's
    ``'auto'`` / ``'sigmoid'`` / ``'softmax'``); raises the script's SystemExit."""
    import srdl_timm  # noqa: F401  registers the srdl_* architectures before the script creates a model

    if probs not in _PROBS_CHOICES:
        raise InputError(f'--probs must be one of {_PROBS_CHOICES}, got {probs!r}')
    path = resolve_script(script)
    with open(path, 'r', encoding='utf-8') as f:
        source = f.read()
    is_inference = os.path.basename(path) == 'inference.py'
    patched = _patch_inference_source(source) if is_inference else None
    kind = _ModelKind(probs, path, patched is not None)
    code = compile(patched if patched is not None else source, path, 'exec')

    main_module = types.ModuleType('__main__')
    main_module.__dict__.update(__file__=path, __builtins__=__builtins__, __package__=None, __spec__=None,
                                __loader__=None, __cached__=None)
    main_module.__dict__[_PROBS_FN] = kind
    saved_argv, saved_main = sys.argv, sys.modules.get('__main__')
    sys.argv = [path, *args]
    sys.modules['__main__'] = main_module
    try:
        with _observe_create_model(kind.observe if is_inference else (lambda model: None)):
            exec(code, main_module.__dict__)
    finally:
        sys.argv = saved_argv
        if saved_main is not None:
            sys.modules['__main__'] = saved_main


def _split_argv(argv: List[str]) -> tuple:
    probs, i = 'auto', 0
    while i < len(argv) and argv[i].startswith('-'):
        flag = argv[i]
        if flag in ('-h', '--help'):
            return None, None, None
        if flag == '--probs' and i + 1 < len(argv):
            probs, i = argv[i + 1], i + 2
        elif flag.startswith('--probs='):
            probs, i = flag.split('=', 1)[1], i + 1
        else:
            raise InputError(f'unknown launcher option {flag!r} before the script (script options go after it)')
    if i >= len(argv):
        raise InputError('no script given: python -m srdl_timm.timm_script SCRIPT [SCRIPT_ARGS ...]')
    return probs, argv[i], argv[i + 1:]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m srdl_timm.timm_script [--probs MODE] SCRIPT [SCRIPT_ARGS ...]``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        probs, script, args = _split_argv(argv)
        if script is None:
            print(_USAGE, end='')
            return 0
        run_script(script, args, probs=probs)
    except InputError as e:
        print(f'srdl_timm.timm_script: error: {e}', file=sys.stderr)
        return e.exit_code
    except SystemExit as e:  # the script's own exit status (argparse: 2)
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
