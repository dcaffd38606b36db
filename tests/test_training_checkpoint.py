"""Tests of srdl_timm/training/checkpoint.py: atomic checkpoints, weights_only loading, corruption detection, and that a
real SIGKILL at any moment never damages the last good checkpoint (and training resumes bit-exactly from it)."""
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file

import srdl_timm  # noqa: F401
from srdl_timm.errors import InputError
from srdl_timm.training import TrainConfig, fit
from srdl_timm.training import checkpoint as checkpoint_module
from srdl_timm.training.checkpoint import (
    CheckpointError, MANIFEST_FILE, MODEL_FILE, STATE_FILE, capture_rng_state, find_last_checkpoint, load_checkpoint,
    remove_stale_tmp, restore_rng_state, save_checkpoint, state_dict_for_save, verify_checkpoint)
from srdl_timm.training.run_folder import claim_output_dir
from srdl_timm.weight_files import load_state_dict

from fixtures_data import write_csv




def _model_and_optimizer():
    model = timm.create_model('srdl_test_resnet', num_classes=3, label_embeddings=torch.randn(3, 16))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), weight_decay=5e-4)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    opt.step()
    return model, opt


def _state(opt, epoch=1, batch=0, step=1):
    return {'epoch': epoch, 'batch_in_epoch': batch, 'global_step': step, 'optimizer': opt.state_dict(),
            'rng': [capture_rng_state()], 'history': [{'epoch': 1, 'train_loss': 0.5, 'val_mAP': float('nan')}]}


def test_roundtrip_is_exact_and_training_state_loads_with_weights_only(tmp_path):
    """Weights (model + EMA) come back bit-identical from safetensors; the training state (Adam state, RNG states,
    history) loads with torch.load(weights_only=True); the optimizer and RNG streams continue exactly."""
    model, opt = _model_and_optimizer()
    ema = {k: v * 0.5 for k, v in state_dict_for_save(model).items()}
    path = save_checkpoint(str(tmp_path), state_dict_for_save(model), _state(opt, 2, 3, 7), {'lr': 1e-3},
                           ema_state=ema)
    raw = torch.load(os.path.join(path, STATE_FILE), weights_only=True)
    assert raw['global_step'] == 7 and raw['optimizer']['param_groups'][0]['betas'] == (0.9, 0.999)
    ckpt = load_checkpoint(str(tmp_path))
    assert ckpt.path == path and (ckpt.epoch, ckpt.batch_in_epoch, ckpt.global_step) == (2, 3, 7)
    assert all(torch.equal(v, ckpt.model[k]) for k, v in state_dict_for_save(model).items())
    assert all(torch.equal(v, ckpt.ema[k]) for k, v in ema.items())
    assert ckpt.config == {'lr': 1e-3}
    opt2 = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt2.load_state_dict(ckpt.state['optimizer'])
    for p in opt.state:
        assert torch.equal(opt.state[p]['exp_avg'], opt2.state[p]['exp_avg'])
    restore_rng_state(ckpt.state['rng'][0])
    draws = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(ckpt.state['rng'][0])
    assert torch.equal(draws[0], torch.rand(3)) and np.array_equal(draws[1], np.random.rand(3))
    assert draws[2] == random.random()


@pytest.mark.parametrize('victim', [MODEL_FILE, STATE_FILE, 'train_config.json'])
def test_truncated_file_is_reported_by_name(tmp_path, victim):
    """Truncating any file of a checkpoint makes loading fail with CheckpointError naming that file; a missing
    manifest (a half-written checkpoint) is reported as incomplete."""
    model, opt = _model_and_optimizer()
    path = save_checkpoint(str(tmp_path), state_dict_for_save(model), _state(opt), {'x': 1})
    target = os.path.join(path, victim)
    with open(target, 'r+b') as f:
        f.truncate(os.path.getsize(target) // 2)
    with pytest.raises(CheckpointError, match='truncated') as info:
        load_checkpoint(str(tmp_path))
    assert target in str(info.value)
    os.unlink(os.path.join(path, MANIFEST_FILE))
    with pytest.raises(CheckpointError, match='incomplete checkpoint'):
        load_checkpoint(path)


def test_unverified_loads_still_detect_damage(tmp_path):
    """Without the manifest check, a truncated safetensors file or training state still raises CheckpointError
    naming the file (never a bare pickle/safetensors error or silent garbage)."""
    model, opt = _model_and_optimizer()
    for name in (MODEL_FILE, STATE_FILE):
        path = save_checkpoint(str(tmp_path / name), state_dict_for_save(model), _state(opt), {})
        target = os.path.join(path, name)
        with open(target, 'r+b') as f:
            f.truncate(100)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path, verify=False)
        assert target in str(info.value)
    with pytest.raises(CheckpointError, match='truncated or corrupt'):
        load_state_dict(os.path.join(find_last_checkpoint(str(tmp_path / MODEL_FILE)), MODEL_FILE), CheckpointError)


def test_pruning_keeps_newest_and_protected(tmp_path):
    """keep_last=2 keeps the two newest checkpoints (by step) plus any protected one; `last` is the newest."""
    model, opt = _model_and_optimizer()
    sd = state_dict_for_save(model)
    first = save_checkpoint(str(tmp_path), sd, _state(opt, step=1), {}, keep_last=2)
    for step in (2, 3, 4):
        newest = save_checkpoint(str(tmp_path), sd, _state(opt, step=step), {}, keep_last=2, keep=[first])
    names = sorted(os.listdir(tmp_path / 'checkpoints'))
    assert len(names) == 3 and os.path.basename(first) in names
    assert any('step-00000003' in n for n in names) and find_last_checkpoint(str(tmp_path)) == newest
    with pytest.raises(ValueError):
        save_checkpoint(str(tmp_path), sd, {'epoch': 1}, {})


def test_a_kill_while_pruning_leaves_no_half_deleted_checkpoint(tmp_path, monkeypatch):
    """Pruning renames an old checkpoint to a hidden .trash- name before deleting it. A kill in the middle of the
    deletion (simulated: the delete removes one file, then the process 'dies') therefore leaves every visible
    checkpoint folder complete and verifiable, `last` intact, and only a hidden leftover, which the next start or
    resume (claiming the output folder) removes. A CheckpointError is an InputError (exit status 2)."""
    model, opt = _model_and_optimizer()
    sd = state_dict_for_save(model)
    save_checkpoint(str(tmp_path), sd, _state(opt, step=1), {}, keep_last=1)

    class Killed(BaseException):
        pass

    def dying_rmtree(path, ignore_errors=False):
        os.unlink(os.path.join(path, MODEL_FILE))
        raise Killed()
    monkeypatch.setattr(checkpoint_module.shutil, 'rmtree', dying_rmtree)
    with pytest.raises(Killed):
        save_checkpoint(str(tmp_path), sd, _state(opt, step=2), {}, keep_last=1)
    monkeypatch.undo()
    names = os.listdir(tmp_path / 'checkpoints')
    visible = [n for n in names if not n.startswith('.')]
    hidden = [n for n in names if n.startswith('.trash-')]
    assert len(visible) == 1 and 'step-00000002' in visible[0] and len(hidden) == 1 and 'step-00000001' in hidden[0]
    assert verify_checkpoint(str(tmp_path / 'checkpoints' / visible[0]))['global_step'] == 2
    assert load_checkpoint(str(tmp_path)).global_step == 2
    claim_output_dir(str(tmp_path), resume_here=True).release()
    assert os.listdir(tmp_path / 'checkpoints') == visible
    assert issubclass(CheckpointError, InputError) and CheckpointError('x').exit_code == 2


_WRITER = textwrap.dedent('''
    import sys, torch
    from srdl_timm.training.checkpoint import save_checkpoint
    out = sys.argv[1]
    step = 0
    while True:
        step += 1
        weights = {"w": torch.full((1 << 20,), float(step)), "v": torch.full((3,), float(step))}
        state = {"epoch": 0, "batch_in_epoch": step, "global_step": step, "blob": torch.full((1 << 19,), step)}
        save_checkpoint(out, weights, state, {"step": step}, keep_last=1)
''')


def test_sigkill_while_writing_never_damages_last(tmp_path):
    """A process that writes 6 MB checkpoints in a loop (pruning the previous one each time) is SIGKILLed at several
    moments; each time `last` resolves to a complete checkpoint that verifies and is internally consistent (weights,
    state and config of the same step), every visible checkpoint folder verifies (none half-pruned), and the
    leftover temporary or half-pruned directory is cleaned up by the next run."""
    for trial, delay in enumerate((0.15, 0.7)):
        out = tmp_path / f'k{trial}'
        proc = subprocess.Popen([sys.executable, '-c', _WRITER, str(out)], env=dict(os.environ, OMP_NUM_THREADS='1'))
        deadline = time.time() + 60
        while not os.path.lexists(out / 'last') and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        ckpt = load_checkpoint(str(out))
        step = ckpt.global_step
        assert step >= 1
        assert torch.equal(ckpt.model['w'], torch.full((1 << 20,), float(step)))
        assert torch.equal(ckpt.state['blob'], torch.full((1 << 19,), step))
        assert ckpt.config == {'step': step}
        for name in os.listdir(out / 'checkpoints'):  # pruning is crash-safe: no visible half-deleted folder
            if not name.startswith('.'):
                verify_checkpoint(str(out / 'checkpoints' / name))
        remove_stale_tmp(str(out))
        assert not [n for n in os.listdir(out / 'checkpoints') if n.startswith('.')]


def test_sigkilled_training_resumes_to_identical_weights(tmp_path):
    """`srdl-train` with a checkpoint every step is SIGKILLed right after its first checkpoint appears; resuming
    with --resume auto finishes the run with weights bit-identical to an uninterrupted run (CPU, 1 thread)."""
    root = tmp_path / 'data'
    write_csv(root, split='train', num_images=8, seed=0)
    write_csv(root, split='val', num_images=4, seed=1)
    # the subprocesses use as many threads as this process, so the in-process reference run is bit-comparable
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    args = [sys.executable, '-m', 'srdl_timm.cli.train', '--data', 'csv', '--root', str(root), '--model',
            'srdl_test_resnet', '--img-size', '64', '--epochs', '2', '--batch-size', '2', '--lr', '1e-3',
            '--workers', '0', '--no-progress', '--label-embeddings', 'none', '--checkpoint-interval-steps', '1',
            '--log-level', 'WARNING']
    fit(TrainConfig(data='csv', root=str(root), model='srdl_test_resnet', img_size=64, epochs=2, batch_size=2,
                    lr=1e-3, workers=0, progress=False, label_embeddings='none', checkpoint_interval_steps=1,
                    output=str(tmp_path / 'ref')))
    out = tmp_path / 'killed'
    proc = subprocess.Popen([*args, '--output', str(out)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 90
    while not os.path.lexists(out / 'last') and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, 'the run ended before it could be killed'
    assert not (out / 'model.safetensors').exists()
    killed_at = load_checkpoint(str(out)).global_step
    assert 1 <= killed_at < 8
    res = subprocess.run([*args, '--output', str(out), '--resume', 'auto'], env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = load_file(str(tmp_path / 'ref' / 'model.safetensors')), load_file(str(out / 'model.safetensors'))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ref_log = json.loads((tmp_path / 'ref' / 'log.json').read_text())
    res_log = json.loads((out / 'log.json').read_text())
    assert [h['train_loss'] for h in ref_log] == [h['train_loss'] for h in res_log]
