"""Thin console scripts: their one error boundary and the flags they share.

Every ``srdl-*`` script is ``main = run_cli('srdl-NAME', build_parser, run)``. :func:`run_cli` turns expected
errors (:class:`~srdl_timm.errors.SRDLError`, ``OSError``, Ctrl-C) into one ``PROG: error: ...`` line and an exit
status; anything else keeps its traceback, as all do with ``--debug`` or ``SRDL_DEBUG=1``.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import shutil
import sys
from typing import Callable, Optional, Sequence

from ..errors import SRDLError
from ..loading import ModelSpec
from ..utils import parse_model_kwargs

__all__ = ['run_cli', 'add_common_args', 'add_model_args', 'model_spec_from_args', 'progress_enabled', 'format_error',
           'STORAGE_ERRNOS']

DEBUG_ENV = 'SRDL_DEBUG'
#: errno values of a write the file system refused: full, over quota, over the file size limit, read-only
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags every script has: ``--log-level`` and ``--debug``."""
    parser.add_argument('--log-level', default='INFO', choices=('DEBUG', 'INFO', 'WARNING', 'ERROR'),
                        type=str.upper, help='logging level (default INFO)')
    parser.add_argument('--debug', action='store_true',
                        help=f'show the full traceback of expected errors too (or set {DEBUG_ENV}=1)')
    return parser


def add_model_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The model flags of the inference scripts (``srdl-predict``, ``srdl-validate``, ``srdl-export``): --model,
    --checkpoint, --num-classes, --model-kwargs, --random-init; :func:`model_spec_from_args` reads them."""
    g = parser.add_argument_group('model')
    g.add_argument('--model', default=None,
                   help='timm model name or pretrained tag (srdl_x.tag), hf-hub:org/repo or local-dir:PATH; may be '
                        'left out when --checkpoint has a train_config.json / config.json beside it')
    g.add_argument('--checkpoint', default=None,
                   help='weights (.safetensors; .pth/.bin are read with weights_only=True) or a run folder; the '
                        'config beside it rebuilds the exact architecture')
    g.add_argument('--num-classes', type=int, default=None,
                   help='classifier size (default: from the weights\' config); must match the weights')
    g.add_argument('--model-kwargs', nargs='*', default=None, metavar='K=V',
                   help='extra create_model kwargs (override the config\'s model_args)')
    g.add_argument('--random-init', action='store_true', help='no weights at all (smoke tests only)')
    return g


def model_spec_from_args(args: argparse.Namespace) -> ModelSpec:
    """The :class:`~srdl_timm.loading.ModelSpec` the flags of :func:`add_model_args` describe."""
    return ModelSpec(model=args.model, checkpoint=args.checkpoint, num_classes=args.num_classes,
                     model_kwargs=parse_model_kwargs(args.model_kwargs), random_init=bool(args.random_init))


def progress_enabled(args: argparse.Namespace) -> bool:
    """Progress bar: ``--progress`` / ``--quiet`` / ``--no-progress``, else on when stderr is a terminal."""
    if getattr(args, 'quiet', False) or getattr(args, 'no_progress', False):
        return False
    if getattr(args, 'progress', False):
        return True
    return sys.stderr.isatty()


def _root_cause(exc: BaseException) -> BaseException:
    """The SRDLError/OSError at the bottom of a chain (e.g. re-raised by a DataLoader worker wrapper)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (SRDLError, OSError)):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _free_space(path: str) -> str:
    """'; N MiB free on its file system' for the nearest existing folder of ``path`` ('' where unknown)."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    with contextlib.suppress(OSError):
        return f'; {shutil.disk_usage(folder).free / 2 ** 20:.1f} MiB free on its file system'
    return ''


def format_error(prog: str, exc: BaseException) -> str:
    """``PROG: error: MESSAGE``; an OSError names its file(s) and the reason, a failed write (full disk, quota, file
    size limit, read-only file system) also the free space; notes added on the way (``add_note``) follow."""
    if isinstance(exc, OSError) and not isinstance(exc, SRDLError):
        where = ' -> '.join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        reason = exc.strerror or str(exc)
        message = f'{where}: {reason}' if where else reason
        if exc.errno in STORAGE_ERRNOS and exc.filename is not None:
            message = f'cannot write {message}{_free_space(os.fsdecode(exc.filename))}'
    else:
        message = str(exc) or type(exc).__name__
    if 'Original Traceback' in message:  # re-raised from a DataLoader worker: keep the original message only
        last = [line for line in message.splitlines() if line.strip()][-1].strip()
        head, _, rest = last.partition(': ')
        message = rest if rest and head.rsplit('.', 1)[-1] == type(exc).__name__ else last
    return '\n'.join([f'{prog}: error: {message}', *getattr(exc, '__notes__', ())])


def _debug_requested(argv: Sequence[str]) -> bool:
    return '--debug' in argv or os.environ.get(DEBUG_ENV, '') not in ('', '0')


def run_cli(prog: str, build_parser: Callable[[], argparse.ArgumentParser],
            run: Callable[[argparse.Namespace], Optional[int]], argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` with ``build_parser()``, call ``run(args)`` and map expected errors to an exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(argv)
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits 2 with a usage line on bad flags
    logging.basicConfig(level=getattr(logging, str(getattr(args, 'log_level', 'INFO')).upper(), logging.INFO),
                        format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    try:
        status = run(args)
        return 0 if status is None else int(status)
    except KeyboardInterrupt:
        print(f'{prog}: interrupted', file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the boundary: expected errors become a message, bugs re-raise
        cause = _root_cause(exc)
        if cause is None or debug:
            raise
        print(format_error(prog, cause), file=sys.stderr)
        return getattr(cause, 'exit_code', 2)
    finally:
        with contextlib.suppress(Exception):
            import torch.distributed as dist
            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
