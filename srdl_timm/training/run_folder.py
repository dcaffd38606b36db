"""A training run's output folder: one run owns it (a lock while it runs, no silent reuse), and its logs.

:func:`claim_output_dir` runs before anything is written: an unwritable ``--output`` is an :class:`OutputDirError`
naming the path; a running run holds a POSIX record lock on ``DIR/.srdl-train.lock`` (dropped by the kernel however
the process ends, not inherited by ``fork``); a folder holding another run's files is refused unless the run
continues it or ``--overwrite`` moves them to ``DIR.old-<UTC time>``. A folder holding only ``train_config.json``
(a run that stopped before its first checkpoint) is started over.
"""
import csv
import datetime
import errno
import io
import logging
import math
import os
import socket
from typing import Any, Dict, List, Optional, Set

from ..errors import InputError
from ..utils import atomic_write_bytes, atomic_write_json
from .checkpoint import CHECKPOINT_DIR, CONFIG_FILE, LAST_LINK, CheckpointError, find_last_checkpoint, remove_stale_tmp

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory lock, the ownership check still runs
    fcntl = None

__all__ = ['OutputDirError', 'RunLock', 'claim_output_dir', 'previous_run_files', 'LOCK_FILE', 'write_logs',
           'format_summary', 'write_failure_note']

_logger = logging.getLogger(__name__)

LOCK_FILE = '.srdl-train.lock'
#: Files and folders whose presence means "a training run already wrote here".
RUN_FILES = (CONFIG_FILE, 'model.safetensors', 'summary.json', 'log.json', 'log.csv', LAST_LINK, CHECKPOINT_DIR)


class OutputDirError(InputError):
    """``--output`` cannot be used: not a writable folder, in use by another run, or holding another run."""


def _unusable(path: str, exc: OSError) -> OutputDirError:
    if exc.errno in (errno.EEXIST, errno.ENOTDIR) or (os.path.exists(path) and not os.path.isdir(path)):
        return OutputDirError(f'--output {path} is an existing file (or a file is in its path), not a folder; '
                              'choose a folder path')
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputDirError(f'--output {path} is not writable ({exc.strerror}); choose a folder you can write to')
    return OutputDirError(f'--output {path} cannot be used: {exc.strerror or exc}')


#: realpath of each lock file this process holds (a POSIX lock cannot refuse its own process)
_HELD: Set[str] = set()


class RunLock:
    """An exclusive POSIX record lock on ``folder/.srdl-train.lock``, released on :meth:`release` or when the process
    ends; the file keeps the holder's pid, host and start time for the refusal message."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.path = os.path.join(folder, LOCK_FILE)
        self._fd: Optional[int] = None

    def _busy(self, holder: str) -> OutputDirError:
        return OutputDirError(f'--output {self.folder} is in use by another srdl-train run ({holder}; lock '
                              f'{self.path}); wait for it to finish or choose another --output')

    def acquire(self) -> 'RunLock':
        key = os.path.realpath(self.path)
        if key in _HELD:  # opening and closing the file here would drop this process's own lock
            raise self._busy(f'pid {os.getpid()}, this process')
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise _unusable(self.folder, e) from e
        if fcntl is not None:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = os.read(fd, 200).decode('utf-8', 'replace').strip() or 'unknown pid'
                os.close(fd)
                raise self._busy(holder) from e
        started = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f'pid {os.getpid()} on {socket.gethostname()} since {started}\n'.encode('utf-8'))
            os.fsync(fd)
        except OSError as e:  # a full or read-only file system
            os.close(fd)
            raise _unusable(self.folder, e) from e
        self._fd = fd
        _HELD.add(key)
        return self

    def release(self) -> None:
        """Unlock (the file stays; an unlocked file means no run holds the folder)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.ftruncate(fd, 0)
            finally:
                os.close(fd)  # closing drops the lock
                _HELD.discard(os.path.realpath(self.path))

    def __enter__(self) -> 'RunLock':
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def previous_run_files(folder: str) -> List[str]:
    """The names in ``folder`` that a training run wrote (empty for a new or unrelated folder)."""
    found = []
    for name in RUN_FILES:
        path = os.path.join(folder, name)
        if os.path.lexists(path) and not (name == CHECKPOINT_DIR and os.path.isdir(path) and not os.listdir(path)):
            found.append(name)
    return found


def _move_aside(folder: str) -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%d-%H%M%S')
    target = f'{os.path.normpath(folder)}.old-{stamp}'
    suffix = 1
    while os.path.lexists(target):
        suffix += 1
        target = f'{os.path.normpath(folder)}.old-{stamp}-{suffix}'
    os.makedirs(target)
    for name in os.listdir(folder):
        if name != LOCK_FILE:
            os.rename(os.path.join(folder, name), os.path.join(target, name))
    return target


def claim_output_dir(folder: str, resume_here: bool = False, overwrite: bool = False) -> RunLock:
    """Make ``folder`` this run's output folder and lock it (see the module docstring).

    Args:
        folder: the ``--output`` path.
        resume_here: this run continues the run in ``folder``.
        overwrite: move another run's files to ``folder.old-<time>`` instead of refusing.

    Returns:
        The held :class:`RunLock` (release it when the run ends).
    """
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise OutputDirError(f'--output {folder} is an existing file, not a folder; choose a folder path')
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise _unusable(folder, e) from e
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputDirError(f'--output {folder} is not writable (permission denied); choose a folder you can '
                             'write to')
    lock = RunLock(folder).acquire()
    try:
        previous = previous_run_files(folder)
        if previous == [CONFIG_FILE] and not resume_here:
            # a run that stopped before its first checkpoint trained nothing that could be lost
            _logger.info('%s holds only the %s of a run that stopped before its first checkpoint; starting over',
                         folder, CONFIG_FILE)
            previous = []
        if previous and not resume_here:
            if not overwrite:
                raise OutputDirError(
                    f'--output {folder} already holds another training run ({", ".join(previous)}); continue it '
                    'with --resume auto, replace it with --overwrite (moves its files to a sibling '
                    f'{os.path.basename(os.path.normpath(folder))}.old-<time> folder), or choose another --output')
            moved_to = _move_aside(folder)
            _logger.warning('--overwrite: moved the previous run in %s (%s) to %s; delete that folder when it is no '
                            'longer needed', folder, ', '.join(previous), moved_to)
        remove_stale_tmp(folder)
    except BaseException:
        lock.release()
        raise
    return lock


def write_failure_note(folder: str, exc: OSError) -> str:
    """After a write into the run folder ``folder`` failed (``exc``): what is intact and how to go on."""
    try:
        last = find_last_checkpoint(folder)
    except CheckpointError:
        last = None
    intact = f'the last complete checkpoint {last} is intact' if last else 'no checkpoint was completed yet'
    fix = {errno.EROFS: 'make the file system writable', errno.EFBIG: 'raise the file-size limit (ulimit -f) or use '
           'a file system that allows larger files'}.get(exc.errno, 'free space')
    return f'{intact} (nothing half-written was kept); {fix}, then run the same command with --resume auto'


def write_logs(output: str, history: List[Dict[str, Any]]) -> None:
    """``log.json`` and ``log.csv`` (one row per epoch), each written atomically."""
    atomic_write_json(os.path.join(output, 'log.json'), history)
    keys: List[str] = []
    for row in history:
        keys.extend(k for k in row if k not in keys)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction='ignore')
    writer.writeheader()
    for row in history:
        writer.writerow({k: ('' if v is None else v) for k, v in row.items()})
    atomic_write_bytes(os.path.join(output, 'log.csv'), buf.getvalue().encode('utf-8'))


def format_summary(history: List[Dict[str, Any]]) -> str:
    """A plain-text table: one row per epoch with loss, lr and the validation metrics (percent)."""
    heads = ['epoch', 'step', 'lr', 'loss', 'L_ori', 'L_era', 'mAP(interp)', 'mAP(non-interp)', 'CF1', 'OF1', 'time']
    cols = [('lr', '.2e'), ('train_loss', '.4f'), ('train_loss_ori', '.4f'), ('train_loss_era', '.4f'),
            ('val_mAP_interpolated', '.2f'), ('val_mAP_non_interpolated', '.2f'), ('val_CF1', '.2f'),
            ('val_OF1', '.2f'), ('epoch_time_s', '.1f')]

    def cell(v: Any, fmt: str) -> str:
        return '-' if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    rows = [[str(h['epoch']), str(h['global_step'])] + [cell(h.get(k), fmt) for k, fmt in cols] for h in history]
    widths = [max([len(heads[i])] + [len(r[i]) for r in rows]) for i in range(len(heads))]
    line = ' | '.join(h.rjust(w) for h, w in zip(heads, widths))
    sep = '-+-'.join('-' * w for w in widths)
    return '\n'.join([line, sep] + [' | '.join(c.rjust(w) for c, w in zip(r, widths)) for r in rows])
