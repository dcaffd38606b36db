"""Tests of srdl_timm/cli/__init__.py: ``run_cli``, the one error boundary of every ``srdl-*`` console script, and
the flags the scripts share (the model flags, the progress-bar default).

Expected errors (SRDLError, OSError) become one ``PROG: error: ...`` line and an exit status; a DataLoader worker's
wrapped message shows only the original message; Ctrl-C exits 130; ``--debug`` / SRDL_DEBUG=1 re-raise; anything
else is a bug and keeps its traceback. The bad-file corpus through the real scripts: tests/test_cli.py.

Run: OMP_NUM_THREADS=1 pytest -q tests/test_cli_boundary.py
"""
import argparse
import os

import pytest
from torch.utils.data import DataLoader, Dataset

from srdl_timm.cli import add_common_args, add_model_args, model_spec_from_args, progress_enabled, run_cli
from srdl_timm.errors import InputError, OperationError, SRDLError

PROG = 'srdl-x'


def _parser():
    parser = argparse.ArgumentParser(prog=PROG)
    parser.add_argument('--value', type=int, default=0)
    return add_common_args(parser)


def _cli(error, argv=()):
    """run_cli on a ``run`` that raises ``error`` (an exception, or a callable that raises)."""
    def run(args):
        if callable(error) and not isinstance(error, BaseException):
            return error(args)
        raise error
    return run_cli(PROG, _parser, run, list(argv))


class _FitError(OperationError):
    exit_code = 3


@pytest.mark.parametrize('error, status', [
    (InputError('--value 7 is out of range [0, 5]; pass a smaller --value'), 2),
    (OperationError('the loss became NaN at optimizer step 3'), 1),
    (_FitError('non-finite loss at optimizer step 3'), 3),
    (SRDLError('plain expected error'), 2),
])
def test_expected_errors_print_their_message_and_exit_code(error, status, capsys):
    """An SRDLError (or subclass) gives exactly one line 'PROG: error: MESSAGE' on stderr and exits with the error's
    exit_code; nothing on stdout, no traceback."""
    assert _cli(error) == status
    out, err = capsys.readouterr()
    assert err == f'{PROG}: error: {error}\n' and out == ''


def test_success_statuses_pass_through():
    """run returning None exits 0; an int it returns is the exit status."""
    assert _cli(lambda args: None) == 0
    assert _cli(lambda args: args.value, ['--value', '4']) == 4


def test_os_errors_name_the_file_and_the_reason(tmp_path, capsys):
    """A real OSError (a missing file opened, a rename of a missing file) exits 2 with one line naming the file(s)
    and the operating system's reason, not the errno tuple."""
    missing, other = tmp_path / 'missing.json', tmp_path / 'other.json'

    def open_missing(args):
        open(missing)

    assert _cli(open_missing) == 2
    assert capsys.readouterr().err == f'{PROG}: error: {missing}: No such file or directory\n'

    def rename_missing(args):
        os.rename(missing, other)

    assert _cli(rename_missing) == 2
    assert capsys.readouterr().err == f'{PROG}: error: {missing} -> {other}: No such file or directory\n'


def test_a_refused_write_names_the_file_and_the_free_space_and_notes_follow(capsys):
    """A write the file system refuses (a real ENOSPC: /dev/full) exits 2 with 'cannot write FILE: reason; N MiB
    free on its file system'; a note added on the way (srdl-train's 'what is intact, what to do') is the second
    line."""
    from srdl_timm.utils import write_synced

    def fill(args):
        try:
            write_synced('/dev/full', b'x' * 4096)
        except OSError as e:
            e.add_note('the last complete checkpoint is intact')
            raise

    if not os.path.exists('/dev/full'):
        pytest.skip('no /dev/full on this system')
    assert _cli(fill) == 2
    first, second = capsys.readouterr().err.splitlines()
    assert first.startswith(f'{PROG}: error: cannot write /dev/full: No space left on device; ')
    assert first.endswith(' MiB free on its file system') and second == 'the last complete checkpoint is intact'


def test_expected_error_behind_a_wrapper_is_found(capsys):
    """An unexpected exception raised *from* an expected one (a library wrapping it) reports the expected root cause
    and its exit code."""
    def wrapped(args):
        try:
            raise InputError('labels.csv: column "image" is missing')
        except InputError as e:
            raise RuntimeError('loading failed') from e

    assert _cli(wrapped) == 2
    assert capsys.readouterr().err == f'{PROG}: error: labels.csv: column "image" is missing\n'


class _FailingDataset(Dataset):
    """Raises ``error`` when item 0 is read (inside a DataLoader worker process)."""

    def __init__(self, error):
        self.error = error

    def __len__(self):
        return 1

    def __getitem__(self, index):
        if self.error == 'missing-file':
            open(os.path.join(os.sep, 'nonexistent-srdl-test-folder', 'image.jpg'), 'rb')
        raise InputError('images/cat.jpg: truncated JPEG (image file is truncated)')


@pytest.mark.parametrize('error, message', [
    ('input-error', 'images/cat.jpg: truncated JPEG (image file is truncated)'),
    ('missing-file', "[Errno 2] No such file or directory: '/nonexistent-srdl-test-folder/image.jpg'"),
])
def test_dataloader_worker_error_shows_the_original_message_only(error, message, capsys):
    """An error raised in a real DataLoader worker process comes back re-wrapped by torch (ExceptionWrapper: 'Caught
    X in DataLoader worker process 0. Original Traceback ...', the last line 'srdl_timm.errors.InputError: ...' with
    the module-qualified name); the boundary prints only the original message on one line: no traceback, no
    'DataLoader worker', no exception name."""
    def read_in_worker(args):
        batches = iter(DataLoader(_FailingDataset(error), num_workers=1))
        try:
            next(batches)
        finally:  # stop the worker now: left to garbage collection, its shutdown waits a 5 s timeout
            batches._shutdown_workers()

    with pytest.raises(Exception) as info:  # what run_cli receives: torch's re-wrapped exception
        read_in_worker(None)
    assert 'Original Traceback' in str(info.value) and 'DataLoader worker process 0' in str(info.value)
    if error == 'input-error':
        assert str(info.value).rstrip().splitlines()[-1].startswith('srdl_timm.errors.InputError: ')
    assert _cli(read_in_worker) == 2
    assert capsys.readouterr().err == f'{PROG}: error: {message}\n'


def test_keyboard_interrupt_exits_130(capsys):
    """Ctrl-C (KeyboardInterrupt) during run exits 130 with 'PROG: interrupted', no traceback."""
    assert _cli(KeyboardInterrupt()) == 130
    assert capsys.readouterr().err == f'{PROG}: interrupted\n'


def test_debug_flag_and_environment_re_raise_expected_errors(monkeypatch, capsys):
    """--debug, or SRDL_DEBUG set to anything but '' / '0', lets an expected error propagate with its traceback;
    SRDL_DEBUG=0 keeps the one-line message."""
    error = InputError('--value 7 is out of range')
    with pytest.raises(InputError, match='out of range'):
        _cli(error, ['--debug'])
    monkeypatch.setenv('SRDL_DEBUG', '1')
    with pytest.raises(InputError, match='out of range'):
        _cli(error)
    monkeypatch.setenv('SRDL_DEBUG', '0')
    assert _cli(error) == 2
    assert capsys.readouterr().err == f'{PROG}: error: {error}\n'


@pytest.mark.parametrize('bug', [
    lambda args: 1 / args.value,  # ZeroDivisionError
    lambda args: [][args.value],  # IndexError
    lambda args: int('seven'),  # ValueError that is not an InputError
])
def test_unexpected_exceptions_keep_their_traceback(bug, capsys):
    """An exception that is neither SRDLError nor OSError is a bug: it propagates unchanged from run_cli, its
    traceback still reaching the line in ``run`` that raised it, and nothing is printed as if it were expected."""
    with pytest.raises((ZeroDivisionError, IndexError, ValueError)) as info:
        _cli(bug)
    assert not isinstance(info.value, SRDLError)
    assert any(entry.frame.code.name == '<lambda>' for entry in info.traceback)
    assert 'error:' not in capsys.readouterr().err


def test_progress_bar_default_follows_the_terminal(monkeypatch):
    """No flag: a bar exactly when stderr is a terminal; --quiet hides it there; --progress forces it elsewhere."""
    Namespace = argparse.Namespace
    monkeypatch.setattr('sys.stderr.isatty', lambda: True)
    assert progress_enabled(Namespace(quiet=False, progress=False))
    assert not progress_enabled(Namespace(quiet=True, progress=False))
    monkeypatch.setattr('sys.stderr.isatty', lambda: False)
    assert not progress_enabled(Namespace(quiet=False, progress=False))
    assert progress_enabled(Namespace(quiet=False, progress=True))


def test_model_flags_become_a_model_spec():
    """The shared model flags parse into the ModelSpec the library loads: K=V kwargs as Python literals, the
    random-init switch, and no flag given means no model named."""
    parser = argparse.ArgumentParser()
    add_model_args(parser)
    spec = model_spec_from_args(parser.parse_args(['--model', 'resnet10t', '--num-classes', '3', '--random-init',
                                                   '--model-kwargs', 'drop_rate=0.1', 'global_pool=avg']))
    assert (spec.model, spec.checkpoint, spec.num_classes, spec.random_init) == ('resnet10t', None, 3, True)
    assert dict(spec.model_kwargs) == {'drop_rate': 0.1, 'global_pool': 'avg'}
    empty = model_spec_from_args(parser.parse_args([]))
    assert (empty.model, empty.checkpoint, empty.random_init, dict(empty.model_kwargs)) == (None, None, False, {})
    with pytest.raises(InputError, match="key=value, got 'drop_rate'"):
        model_spec_from_args(parser.parse_args(['--model-kwargs', 'drop_rate']))
