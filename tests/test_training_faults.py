"""Faults a real training job meets (srdl_timm/training/run_folder.py, checkpoint.py, the error boundary of
srdl_timm/cli): srdl-train killed with SIGKILL at seeded moments (with data-loader workers that outlive it, during a
checkpoint write) and resumed at once with --resume auto ends with weights bit-identical to an uninterrupted run;
a write the file system refuses (a full 6 MiB tmpfs, a file-size limit) ends with two lines naming the file, the
free space, what is intact and the fix, exit status 2, and nothing half-written. Real processes and files, no mocks
of the package; data: the ``csv_root`` fixture (tests/conftest.py)."""
import errno
import os
import random
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from srdl_timm.cli.train import main
from srdl_timm.training.checkpoint import verify_checkpoint
from srdl_timm.utils import atomic_write_bytes

from fixtures_data import train_cli_args

#: two epochs of 4 optimizer steps, a checkpoint after each step
RUN = ('--epochs', '2', '--batch-size', '2', '--checkpoint-interval-steps', '1')
FIX = 'then run the same command with --resume auto'

#: Python run before srdl-train in the child: SIGKILL itself just before the N-th fsync of a file or folder under
#: a checkpoint's temporary folder or of the run folder (the data written, not yet durable or renamed)
KILL_IN_WRITE = '''
import os, signal, sys
_left, _fsync = {n}, os.fsync
def _fsync_or_die(fd):
    global _left
    path = os.readlink(f'/proc/self/fd/{{fd}}')
    if path.startswith(sys.argv[-1]):
        _left -= 1
        if _left == 0:
            print(f'killed before fsync of {{path}}', file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    return _fsync(fd)
os.fsync = _fsync_or_die
'''


def _args(csv_root, out, *flags):
    return train_cli_args(csv_root, out, *RUN, *flags)


def _train(csv_root, out, *flags, prelude='', preexec_fn=None):
    """srdl-train in a fresh process (one intra-op thread, as in-process tests); ``prelude`` runs first."""
    code = prelude + '\nimport sys\nfrom srdl_timm.cli.train import main\nsys.exit(main(sys.argv[1:-1]))'
    argv = [sys.executable, '-c', code, *_args(csv_root, out, *flags), str(out)]
    err_path = f'{out}.{time.monotonic_ns()}.stderr'  # a file, not a pipe: a killed run's workers keep its pipes open
    with open(err_path, 'w') as err:
        proc = subprocess.Popen(argv, env=dict(os.environ, OMP_NUM_THREADS='1'), stdout=subprocess.DEVNULL,
                                stderr=err, preexec_fn=preexec_fn)
    proc.err_path = err_path
    return proc


def _finish(proc, timeout=300):
    proc.wait(timeout=timeout)
    with open(proc.err_path) as f:
        return proc.returncode, f.read()


def _wait_for(condition, proc, timeout=300):
    end = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f'srdl-train ended early: {_finish(proc)}'
        assert time.monotonic() < end, 'timed out'
        time.sleep(0.02)


def _children(pid):
    """Pids whose parent is ``pid`` (the data-loader workers of an srdl-train process)."""
    kids = []
    for entry in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{entry}/stat') as f:
                if int(f.read().rsplit(')', 1)[1].split()[1]) == pid:
                    kids.append(int(entry))
        except (OSError, IndexError, ValueError):
            pass
    return kids


def _same_weights(path, reference):
    got = load_file(path)
    return got.keys() == reference.keys() and all(torch.equal(got[k], reference[k]) for k in got)


@pytest.fixture(scope='module')
def reference(csv_root, tmp_path_factory):
    """The uninterrupted run's reported weights (in this process, one thread)."""
    out = tmp_path_factory.mktemp('uninterrupted') / 'run'
    assert main(_args(csv_root, out)) == 0
    return load_file(out / 'model.safetensors')


def test_killed_run_with_workers_resumes_at_once_and_a_live_run_is_still_refused(csv_root, tmp_path, reference,
                                                                                   capsys):
    """SIGKILL of srdl-train --workers 2 at a seeded moment after its first checkpoint, its loader workers kept
    alive (stopped) as a killed job's workers outlive it: a --resume auto started at once is not refused (the
    POSIX lock is not passed to forked workers); while it runs, another run on the folder is refused naming its
    pid; it ends with weights bit-identical to an uninterrupted run."""
    out = tmp_path / 'run'
    first = _train(csv_root, out, '--workers', '2')
    _wait_for(lambda: (out / 'last').exists(), first)
    time.sleep(random.Random(32).uniform(0.0, 1.0))
    _wait_for(lambda: _children(first.pid), first)
    workers = _children(first.pid)
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    first.kill()
    first.wait()
    try:
        resumed = _train(csv_root, out, '--workers', '2', '--resume', 'auto')
        lock = out / '.srdl-train.lock'
        _wait_for(lambda: f'pid {resumed.pid} ' in lock.read_text(), resumed)
        assert all(os.path.exists(f'/proc/{pid}') for pid in workers)  # the killed run's workers still live
        resumed.send_signal(signal.SIGSTOP)  # keep it live (and holding the folder) while another run tries
        try:
            assert main(_args(csv_root, out, '--resume', 'auto')) == 2
        finally:
            resumed.send_signal(signal.SIGCONT)
        assert f'is in use by another srdl-train run (pid {resumed.pid} ' in capsys.readouterr().err
        status, err = _finish(resumed)
        assert status == 0, err[-3000:]
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
    assert _same_weights(out / 'model.safetensors', reference)


@pytest.mark.parametrize('workers, seed', [('0', 1), pytest.param('2', 2, marks=pytest.mark.slow)])
def test_kill_during_a_checkpoint_write_then_resume_gives_the_uninterrupted_weights(csv_root, tmp_path, reference,
                                                                                    workers, seed):
    """SIGKILL inside a write into the run folder (before the fsync of a seeded one of its files or folders: a
    checkpoint's files, its temporary folder, the 'last' link's folder, the logs), with and without workers: the
    next --resume auto removes what was half-written, continues from the last complete checkpoint and ends with
    weights bit-identical to an uninterrupted run."""
    out = tmp_path / 'run'
    kill_at = random.Random(seed).randint(4, 30)
    killed = _train(csv_root, out, '--workers', workers, prelude=KILL_IN_WRITE.format(n=kill_at))
    status, err = _finish(killed)
    assert status == -signal.SIGKILL and 'killed before fsync of' in err, err[-3000:]
    status, err = _finish(_train(csv_root, out, '--workers', workers, '--resume', 'auto'))
    assert status == 0, err[-3000:]
    assert not [n for n in os.listdir(out / 'checkpoints') if n.startswith('.')]
    assert _same_weights(out / 'model.safetensors', reference)


@pytest.fixture
def small_fs(tmp_path):
    """A 6 MiB tmpfs (room for one checkpoint of the test model, not two); skipped where mounting is not allowed."""
    mnt = tmp_path / 'small'
    mnt.mkdir()
    done = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=6m', 'tmpfs', str(mnt)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f'cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); the file-size-limit test '
                    'covers the same path')
    yield mnt
    subprocess.run(['umount', '-l', str(mnt)], check=False)


def test_full_file_system_ends_with_two_lines_and_resumes_after_space_is_freed(csv_root, small_fs, reference, capsys):
    """The second checkpoint does not fit on a 6 MiB file system: exit 2 and two lines naming the file, 'No space
    left on device', the free space, the intact last checkpoint and the fix; no temporary file or folder is left
    and 'last' verifies. After the file system is grown, --resume auto ends bit-identical to an uninterrupted run."""
    out = small_fs / 'run'
    assert main(_args(csv_root, out)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    last = os.path.realpath(out / 'last')
    assert len(lines) == 2, lines
    assert lines[0].startswith(f'srdl-train: error: cannot write {out}/checkpoints/.tmp-epoch-0000-')
    assert ': No space left on device; ' in lines[0] and lines[0].endswith(' MiB free on its file system')
    intact = f'the last complete checkpoint {last} is intact (nothing half-written was kept)'
    assert lines[1] == f'{intact}; free space, {FIX}'
    verify_checkpoint(last)
    leftovers = [n for d in (out, out / 'checkpoints') for n in os.listdir(d) if '.tmp' in n]
    assert not leftovers
    subprocess.run(['mount', '-o', 'remount,size=24m', str(small_fs)], check=True)
    assert main(_args(csv_root, out, '--resume', 'auto')) == 0
    assert _same_weights(out / 'model.safetensors', reference)


def _file_size_limit(limit):
    def set_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death by SIGXFSZ
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return set_limit


def test_file_size_limit_ends_with_two_lines_and_nothing_half_written(csv_root, tmp_path, reference):
    """Under a file-size limit (RLIMIT_FSIZE) that lets the weights through but not the optimizer state, the first
    checkpoint cannot be written: exit 2, two lines naming training_state.pt, 'File too large', the free space,
    that no checkpoint was completed and the fix; no checkpoint, temporary file or 'last' link is left."""
    out = tmp_path / 'run'
    weights = sum(t.numel() * t.element_size() for t in reference.values())
    status, err = _finish(_train(csv_root, out, preexec_fn=_file_size_limit(weights + (1 << 16))))
    lines = [line for line in err.strip().splitlines() if ' WARNING ' not in line]
    assert status == 2 and len(lines) == 2, err[-3000:]
    assert lines[0].startswith(f'srdl-train: error: cannot write {out}/checkpoints/.tmp-epoch-0000-')
    assert '/training_state.pt: File too large; ' in lines[0] and lines[0].endswith(' MiB free on its file system')
    assert lines[1] == ('no checkpoint was completed yet (nothing half-written was kept); raise the file-size limit '
                        f'(ulimit -f) or use a file system that allows larger files, {FIX}')
    assert os.listdir(out / 'checkpoints') == [] and not os.path.lexists(out / 'last')


def _errno_and_file_under_a_size_limit(limit, write):
    """Run ``write()`` in a forked child under a file-size limit; 'ERRNO FILE' of the OSError it raised."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: limit, write, report, exit without pytest's clean-up
        try:
            _file_size_limit(limit)()
            write()
            os.write(write_end, b'no error')
        except BaseException as e:
            os.write(write_end, f'{getattr(e, "errno", None)} {getattr(e, "filename", repr(e))}'.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end) as f:
        return f.read()


def test_atomic_write_refused_by_a_file_size_limit_keeps_the_old_file(tmp_path):
    """atomic_write_bytes (every report, log, config, export and overlay goes through it) under a file-size limit:
    an OSError (EFBIG) naming the target, the previous file byte-identical, no temporary file."""
    target = tmp_path / 'report.json'
    target.write_text('{"old": true}')
    assert _errno_and_file_under_a_size_limit(1024, lambda: atomic_write_bytes(target, bytes(4096))) == \
        f'{errno.EFBIG} {target}'
    assert target.read_text() == '{"old": true}' and os.listdir(tmp_path) == ['report.json']


def test_publishing_refused_by_a_file_size_limit_names_the_weights_file(source, tmp_path):
    """hub.save_pretrained_dir (srdl-publish --local-dir) under a file-size limit: the safetensors writer's error
    comes back as the OSError (EFBIG) naming model.safetensors, and no weights file is left in the folder."""
    from srdl_timm import hub
    folder = tmp_path / 'published'
    got = _errno_and_file_under_a_size_limit(4096, lambda: hub.save_pretrained_dir(source, folder, repo_id='a/b'))
    assert got == f'{errno.EFBIG} {folder / "model.safetensors"}'
    assert 'model.safetensors' not in os.listdir(folder)
