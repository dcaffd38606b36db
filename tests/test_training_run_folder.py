"""Tests of srdl_timm/training/run_folder.py (lost work, #12): an output folder belongs to one srdl-train run — a
second run is refused or moves the first aside with --overwrite, a concurrent run is blocked by the lock, and an
--output that is a file or not writable is a one-line error. Data: the ``csv_root`` fixture (tests/conftest.py)."""
import json
import os
import subprocess
import sys

import srdl_timm  # noqa: F401
from srdl_timm.cli.train import main

from fixtures_data import train_cli_args as _cli


def _snapshot(folder):
    """{relative path: sha256} of every file under ``folder`` (symlinks by target), to show nothing changed."""
    from srdl_timm.utils import sha256_file
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, folder)
            out[rel] = os.readlink(path) if os.path.islink(path) else sha256_file(path)
    return out


def test_second_run_into_the_same_output_is_refused_and_the_first_is_kept(csv_root, tmp_path, capsys):
    """The same command started twice (or a second seed by mistake) into one --output: the second exits 2 with a
    message naming the folder, --resume and --overwrite, and every file of the first run stays byte-identical.
    With --overwrite it runs, and the first run's files are moved, byte-identical, to OUTPUT.old-<time>."""
    out = tmp_path / 'run'
    assert main(_cli(csv_root, out)) == 0
    first = _snapshot(out)
    assert 'model.safetensors' in first and 'train_config.json' in first
    capsys.readouterr()
    assert main(_cli(csv_root, out, '--seed', '7')) == 2
    err = capsys.readouterr().err
    assert f'--output {out} already holds another training run' in err and '--overwrite' in err
    assert '--resume auto' in err and 'Traceback' not in err
    assert _snapshot(out) == first
    assert main(_cli(csv_root, out, '--seed', '7', '--overwrite')) == 0
    moved = [p for p in tmp_path.iterdir() if p.name.startswith('run.old-')]
    assert len(moved) == 1
    assert _snapshot(moved[0]) == {k: v for k, v in first.items() if k != '.srdl-train.lock'}  # the lock stays
    assert json.loads((out / 'train_config.json').read_text())['seed'] == 7


_LOCK_HOLDER = '''
import sys, time
from srdl_timm.training.run_folder import RunLock
lock = RunLock(sys.argv[1]).acquire()
print('locked', flush=True)
time.sleep(120)
'''


def test_a_concurrent_run_is_blocked_by_the_lock(csv_root, tmp_path, capsys):
    """While another process holds OUTPUT's run lock, srdl-train on OUTPUT exits 2 naming that process's pid and
    writes nothing; once that process is gone (SIGKILL: the kernel drops the lock, no stale lock), a run proceeds."""
    out = tmp_path / 'busy'
    out.mkdir()
    holder = subprocess.Popen([sys.executable, '-c', _LOCK_HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        assert main(_cli(csv_root, out)) == 2
        err = capsys.readouterr().err
        assert f'--output {out} is in use by another srdl-train run (pid {holder.pid} ' in err, err
        assert sorted(os.listdir(out)) == ['.srdl-train.lock']
    finally:
        holder.kill()
        holder.wait()
    assert main(_cli(csv_root, out)) == 0
    assert (out / 'model.safetensors').is_file()


def test_output_that_is_a_file_is_a_clear_error(csv_root, tmp_path, capsys):
    """--output naming an existing file: exit 2, one line naming the path, the file untouched, no traceback."""
    target = tmp_path / 'notes.txt'
    target.write_text('keep me')
    assert main(_cli(csv_root, target)) == 2
    err = capsys.readouterr().err
    assert err.strip() == f'srdl-train: error: --output {target} is an existing file, not a folder; choose a folder path'
    assert target.read_text() == 'keep me'
    assert main(_cli(csv_root, target / 'sub')) == 2  # a file in the path
    assert f'--output {target / "sub"} is an existing file (or a file is in its path)' in capsys.readouterr().err


def test_unwritable_output_is_a_clear_error(csv_root, tmp_path, capsys, monkeypatch):
    """--output inside a read-only folder: exit 2 and one line naming the path and 'not writable'.

    As root, permission bits do not stop writes (root bypasses them), so there the kernel's refusal is reproduced by
    making os.makedirs raise the PermissionError (EACCES) that a non-root user gets; the message path is the same."""
    parent = tmp_path / 'readonly'
    parent.mkdir()
    parent.chmod(0o500)
    target = parent / 'run'
    try:
        if os.geteuid() == 0:
            import errno
            from srdl_timm.training import run_folder

            def refuse(path, *args, **kwargs):
                raise PermissionError(errno.EACCES, 'Permission denied', str(path))
            monkeypatch.setattr(run_folder.os, 'makedirs', refuse)
        assert main(_cli(csv_root, target)) == 2
    finally:
        parent.chmod(0o700)
    err = capsys.readouterr().err
    assert err.strip() == (f'srdl-train: error: --output {target} is not writable (Permission denied); choose a '
                           'folder you can write to')


def test_a_folder_this_process_holds_is_refused_and_stays_locked(tmp_path):
    """A POSIX record lock cannot refuse its own process, and closing any descriptor of the file would drop it: a
    second claim in the same process is refused (naming this pid) without opening the file, and another process is
    still refused afterwards; after release the folder can be claimed again."""
    import pytest
    from srdl_timm.training.run_folder import OutputDirError, RunLock
    lock = RunLock(str(tmp_path)).acquire()
    try:
        with pytest.raises(OutputDirError, match=f'another srdl-train run \\(pid {os.getpid()}, this process'):
            RunLock(str(tmp_path)).acquire()
        other = subprocess.run([sys.executable, '-c', 'import sys\nfrom srdl_timm.training.run_folder import RunLock\n'
                                'RunLock(sys.argv[1]).acquire()', str(tmp_path)], capture_output=True, text=True)
        assert other.returncode != 0 and f'(pid {os.getpid()} on ' in other.stderr
    finally:
        lock.release()
    RunLock(str(tmp_path)).acquire().release()
