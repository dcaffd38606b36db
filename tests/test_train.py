"""End-to-end tests of ``srdl-train`` / :func:`srdl_timm.fit.fit` on tiny real data (JPEGs + CSV on disk)."""
import json
import os
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import load_file

import srdl_timm  # noqa: F401
from srdl_timm.checkpoint import CheckpointError, load_checkpoint, verify_checkpoint
from srdl_timm.cli.train import build_parser, config_from_args, main
from srdl_timm.fit import fit
from srdl_timm.loading import load_model
from srdl_timm.train_config import RECIPES, TrainConfig, resolve_config
from srdl_timm.training import NonFiniteLossError, is_oom as _is_oom, oom_message as _oom_message

from fixtures_data import write_csv



# tiny, fast and deterministic: the 10-class test ResNet at 64 px, 3 classes, 8 training / 6 validation images
BASE = dict(data='csv', model='srdl_test_resnet', img_size=64, lr=1e-3, workers=0, progress=False,
            label_embeddings='none', log_interval=1)


@pytest.fixture(scope='module')
def csv_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('csvdata')
    write_csv(root, split='train', num_images=8, seed=0)
    write_csv(root, split='val', num_images=6, seed=1)
    return str(root)


def _cfg(root, output, **kw):
    return TrainConfig(root=root, output=str(output), **dict(BASE, **kw))


def _weights_equal(a_path, b_path):
    a, b = load_file(a_path), load_file(b_path)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_few_steps_reduce_loss_and_write_outputs(csv_root, tmp_path):
    """Eight Adam steps with OE on lower the training loss (L_ori + L_era) from the first epoch to the last; the run
    writes the reported weights (loadable strictly into a fresh timm model, and by srdl_timm.loading.load_model from
    the run folder alone: the same architecture and outputs), logs and the resolved config."""
    out = tmp_path / 'run'
    result = fit(_cfg(csv_root, out, epochs=4, batch_size=4, aug='none', label_embeddings='auto'))
    losses = [h['train_loss'] for h in result['history']]
    assert result['global_step'] == 8 and len(losses) == 4
    assert losses[-1] < losses[0] - 0.05, losses
    for h in result['history']:  # OE on: both terms logged, and L = L_ori + L_era
        assert h['train_loss'] == pytest.approx(h['train_loss_ori'] + h['train_loss_era'], rel=1e-6)
    assert 0.0 <= result['final_metrics']['mAP_interpolated'] <= 100.0
    assert result['final_metrics']['mAP_interpolated'] >= result['final_metrics']['mAP_non_interpolated'] - 1e-9
    saved = json.loads((out / 'train_config.json').read_text())
    assert saved['model_args']['embed_dim'] == 50  # GloVe 6B-50d label embeddings ('auto' for custom names)
    model = timm.create_model('srdl_test_resnet', num_classes=3, label_embeddings=torch.zeros(3, 50))
    model.load_state_dict(load_file(result['model_path']), strict=True)
    # the one loader rebuilds exactly the trained architecture from train_config.json beside the weights
    loaded = load_model(None, result['model_path'])
    assert loaded.embed_dim == 50 and loaded.num_classes == 3
    assert loaded.pretrained_cfg['label_names'] == ['cat', 'dog', 'traffic light']
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    assert saved['label_names'] == ['cat', 'dog', 'traffic light'] and saved['oe'] is True
    csv_lines = (out / 'log.csv').read_text().strip().splitlines()
    assert len(csv_lines) == 5 and 'val_mAP_interpolated' in csv_lines[0] and 'val_OF1' in csv_lines[0]
    assert json.loads((out / 'summary.json').read_text())['global_step'] == 8
    assert verify_checkpoint(os.path.realpath(out / 'last'))['global_step'] == 8


def test_step_limited_then_resumed_run_is_bitwise_identical(csv_root, tmp_path):
    """A run stopped mid-epoch (--max-steps 5 of 8) and resumed — with 2 loader workers instead of 0 — ends with the
    same model and EMA weights, bit for bit, and the same per-epoch losses as an uninterrupted run (CPU, paper
    augmentation with per-sample seeds, OE, EMA, step checkpoints); a half-pruned folder left by a kill during
    pruning is removed on resume."""
    kw = dict(epochs=2, batch_size=2, model_ema=True, model_ema_decay=0.9, checkpoint_interval_steps=1,
              report_checkpoint='ema')
    full = fit(_cfg(csv_root, tmp_path / 'full', **kw))
    part = fit(_cfg(csv_root, tmp_path / 'part', max_steps=5, **kw))
    assert part['stopped_early'] and part['global_step'] == 5 and part['model_path'] is None
    ckpt = load_checkpoint(str(tmp_path / 'part'))
    assert (ckpt.epoch, ckpt.batch_in_epoch, ckpt.global_step) == (1, 1, 5)
    # what a kill while pruning an older checkpoint leaves behind: a renamed, half-deleted hidden folder
    leftover = tmp_path / 'part' / 'checkpoints' / '.trash-epoch-0001-batch-000000-step-00000004-deadbeef'
    leftover.mkdir()
    (leftover / 'training_state.pt').write_bytes(b'half')
    resumed = fit(_cfg(csv_root, tmp_path / 'part', resume='auto', **dict(kw, workers=2)))
    assert resumed['global_step'] == 8
    assert not leftover.exists()  # removed when the resumed run claimed its folder
    assert _weights_equal(full['model_path'], resumed['model_path'])
    full_last, resumed_last = load_checkpoint(str(tmp_path / 'full')), load_checkpoint(str(tmp_path / 'part'))
    assert all(torch.equal(full_last.model[k], resumed_last.model[k]) for k in full_last.model)
    assert all(torch.equal(full_last.ema[k], resumed_last.ema[k]) for k in full_last.ema)
    assert [h['train_loss'] for h in full['history']] == [h['train_loss'] for h in resumed['history']]
    assert [h['val_mAP_interpolated'] for h in full['history']] == \
           [h['val_mAP_interpolated'] for h in resumed['history']]


def test_gradient_accumulation_equals_the_larger_batch(csv_root, tmp_path):
    """Batch 2 with --grad-accum-steps 2 reaches the same weights as batch 4 (max difference < 1e-5, float
    summation order only): micro-batches are consecutive slices of the same global batch, each micro-batch loss is
    divided by the accumulation count, and --freeze-bn makes BatchNorm independent of the batch split."""
    a = fit(_cfg(csv_root, tmp_path / 'big', epochs=2, batch_size=4, freeze_bn=True))
    b = fit(_cfg(csv_root, tmp_path / 'accum', epochs=2, batch_size=2, grad_accum_steps=2, freeze_bn=True))
    assert a['global_step'] == b['global_step'] == 4
    x, y = load_file(a['model_path']), load_file(b['model_path'])
    assert max((x[k] - y[k]).abs().max().item() for k in x) < 1e-5


@pytest.mark.parametrize('amp_dtype', ['bfloat16', 'float16'])
def test_amp_channels_last_ema_and_per_update_schedule(csv_root, tmp_path, amp_dtype):
    """AMP (bfloat16, or float16 with a GradScaler whose state is checkpointed), channels_last, gradient clipping,
    EMA reported as declared and a per-update cosine schedule train with finite losses that fall; the cosine lr
    reaches its minimum exactly at the last update."""
    result = fit(_cfg(csv_root, tmp_path / 'amp', epochs=3, batch_size=2, amp=True, amp_dtype=amp_dtype,
                      channels_last=True, clip_grad=1.0, model_ema=True, model_ema_decay=0.5,
                      report_checkpoint='ema', sched='cosine', sched_on_updates=True, aug='none'))
    losses = [h['train_loss'] for h in result['history']]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses
    assert result['history'][-1]['lr'] == 0.0 and result['reported'] == 'ema'
    ckpt = load_checkpoint(str(tmp_path / 'amp'))
    assert (ckpt.state['scaler'] is not None) == (amp_dtype == 'float16')
    ema = load_file(result['model_path'])
    assert all(torch.equal(ema[k], ckpt.ema[k]) for k in ema)  # model.safetensors holds the declared EMA weights


def test_truncated_checkpoint_is_detected_with_the_file_named(csv_root, tmp_path, capsys):
    """Resuming from a checkpoint whose training state was truncated fails with CheckpointError naming the file
    (API), and the CLI exits with status 2 and the file's path on stderr."""
    out = tmp_path / 'run'
    fit(_cfg(csv_root, out, epochs=1, batch_size=4))
    state_file = os.path.join(os.path.realpath(out / 'last'), 'training_state.pt')
    size = os.path.getsize(state_file)
    with open(state_file, 'r+b') as f:
        f.truncate(size // 2)
    with pytest.raises(CheckpointError, match='truncated') as info:
        fit(_cfg(csv_root, out, epochs=2, batch_size=4, resume=str(out)))
    assert state_file in str(info.value)
    status = main(['--data', 'csv', '--root', csv_root, '--model', 'srdl_test_resnet', '--img-size', '64',
                   '--epochs', '2', '--batch-size', '4', '--workers', '0', '--label-embeddings', 'none',
                   '--output', str(out), '--resume', 'auto', '--no-progress'])
    assert status == 2
    assert state_file in capsys.readouterr().err


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(csv_root, tmp_path, capsys):
    """A non-finite loss (here from a real misconfiguration: normalisation std 1e-40 turns pixels into inf) stops
    training with the step number, before any weight update; the previous checkpoint stays intact and `last` still
    points at it; the CLI exits with status 3."""
    out = tmp_path / 'run'
    fit(_cfg(csv_root, out, epochs=1, batch_size=4))
    last_before = os.path.realpath(out / 'last')
    manifest_before = verify_checkpoint(last_before)
    bad = {'pretrained_cfg_overlay': {'std': (1e-40, 1e-40, 1e-40)}}
    with pytest.raises(NonFiniteLossError) as info:
        fit(_cfg(csv_root, out, epochs=2, batch_size=4, resume='auto', model_kwargs=bad))
    assert info.value.step == 3 and 'optimizer step 3' in str(info.value) and last_before in str(info.value)
    assert os.path.realpath(out / 'last') == last_before
    assert verify_checkpoint(last_before) == manifest_before
    status = main(['--data', 'csv', '--root', csv_root, '--model', 'srdl_test_resnet', '--img-size', '64',
                   '--epochs', '2', '--batch-size', '4', '--workers', '0', '--label-embeddings', 'none',
                   '--output', str(out), '--resume', 'auto', '--no-progress',
                   '--model-kwargs', "pretrained_cfg_overlay={'std': (1e-40, 1e-40, 1e-40)}"])
    assert status == 3
    assert 'optimizer step 3' in capsys.readouterr().err


@pytest.mark.parametrize('flags, message', [
    (['--lr', '0'], '--lr must be in (0, 1]'),
    (['--lr', '3'], '--lr must be in (0, 1]'),
    (['--epochs', '0'], '--epochs must be in [1, 100000]'),
    (['--batch-size', '0'], '--batch-size must be in [1, 65536]'),
    (['--batch-size', '64'], 'fewer than one optimizer step'),
    (['--num-classes', '5'], '--num-classes 5 does not match the dataset'),
    (['--report-checkpoint', 'ema'], '--report-checkpoint ema needs --model-ema'),
    (['--oe', '--no-sa'], 'object erasing (--oe) needs the spatial attention'),
])
def test_bad_input_is_a_clear_error(csv_root, tmp_path, capsys, flags, message):
    """Out-of-range lr/epochs/batch, a batch larger than the data, --num-classes not matching the dataset and
    contradictory flags exit with status 2 and a message naming the flag, before any training."""
    status = main(['--data', 'csv', '--root', csv_root, '--model', 'srdl_test_resnet', '--img-size', '64',
                   '--workers', '0', '--label-embeddings', 'none', '--output', str(tmp_path / 'o'),
                   '--no-progress', *flags])
    assert status == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / 'o' / 'last')


def test_recipe_paper_resolves_to_section_4_2_and_flags_override(csv_root):
    """--recipe paper gives exactly §4.2 (Adam 0.9/0.999, lr 1e-5, wd 5e-4 on all parameters, global batch 16,
    20 epochs, step ÷10 every 10 epochs, 448 px with resize 512, paper augmentation, ImageNet backbone, OE top-3
    α 0.5); the global batch is split over processes; an explicit flag overrides the recipe."""
    args = build_parser().parse_args(['--recipe', 'paper', '--data', 'coco', '--root', csv_root])
    cfg = resolve_config(config_from_args(args))
    assert (cfg.opt, cfg.opt_betas, cfg.lr, cfg.weight_decay, cfg.wd_exclude_bias_norm) == \
           ('adam', (0.9, 0.999), 1e-5, 5e-4, False)
    assert (cfg.batch_size, cfg.epochs, cfg.sched, cfg.decay_epochs, cfg.decay_rate, cfg.warmup_epochs) == \
           (16, 20, 'step', 10, 0.1, 0)
    assert (cfg.img_size, cfg.train_resize, cfg.aug, cfg.pretrained_backbone) == (448, 512, 'paper', True)
    assert (cfg.oe, cfg.oe_topk, cfg.oe_alpha, cfg.model) == (True, 3, 0.5, 'srdl_resnet101')
    assert resolve_config(config_from_args(args), world_size=4).batch_size == 4
    args = build_parser().parse_args(['--recipe', 'paper', '--data', 'coco', '--root', csv_root, '--lr', '1e-4',
                                      '--batch-size', '8', '--no-oe', '--epochs', '3'])
    cfg = resolve_config(config_from_args(args), world_size=2)
    assert (cfg.lr, cfg.batch_size, cfg.oe, cfg.epochs, cfg.weight_decay) == (1e-4, 8, False, 3, 5e-4)
    assert set(cfg.explicit) >= {'lr', 'batch_size', 'oe', 'epochs'}
    assert set(RECIPES['paper']) >= {'opt', 'lr', 'weight_decay', 'epochs', 'sched', 'img_size', 'oe_topk'}


def test_oom_is_recognised_and_explained():
    """A real allocator failure (CPU: an impossible 4 EiB allocation) is classified as out-of-memory, and the
    message suggests a smaller batch with gradient accumulation (same global batch), AMP and a smaller input."""
    with pytest.raises(RuntimeError) as info:
        torch.empty(1 << 62, dtype=torch.uint8)
    assert _is_oom(info.value)
    assert not _is_oom(RuntimeError('shape mismatch'))
    cfg = resolve_config(TrainConfig(root='x', batch_size=16, model='srdl_test_resnet'))
    text = _oom_message(cfg, torch.device('cuda'), 'epoch 1')
    assert '--batch-size 8 --grad-accum-steps 2' in text and '--amp' in text and '--img-size' in text


def test_two_process_ddp_matches_single_process(csv_root, tmp_path):
    """torchrun with 2 CPU processes (gloo, batch 2 each) trains to the same weights as 1 process with batch 4
    (max difference < 1e-5) and reports the same per-epoch losses and validation mAP.

    Why it is exactly comparable: the resumable sampler gives global batch s = perm[4s:4s+4] in both cases (rank r
    takes the slice [4s+2r, 4s+2r+2)), augmentation is seeded per sample, DDP averages the two ranks' gradients of
    per-rank mean losses = the gradient of the 4-sample mean loss (no ignored targets here), and --freeze-bn keeps
    BatchNorm on its running statistics so no layer depends on how the batch is split. Only float summation order
    differs. Evaluation gathers both ranks' unpadded slices, so the 6 validation images count once each."""
    env = dict(os.environ, OMP_NUM_THREADS='1')
    common = ['--data', 'csv', '--root', csv_root, '--model', 'srdl_test_resnet', '--img-size', '64', '--epochs', '2',
              '--lr', '1e-3', '--workers', '0', '--no-progress', '--freeze-bn', '--label-embeddings', 'none',
              '--log-level', 'WARNING']
    fit(_cfg(csv_root, tmp_path / 'single', epochs=2, batch_size=4, freeze_bn=True, log_interval=50))
    torchrun = os.path.join(os.path.dirname(sys.executable), 'torchrun')
    cmd = [torchrun] if os.path.exists(torchrun) else [sys.executable, '-m', 'torch.distributed.run']
    ddp = subprocess.run([*cmd, '--standalone', '--nproc_per_node', '2', '-m', 'srdl_timm.train', *common,
                          '--batch-size', '2', '--output', str(tmp_path / 'ddp')], env=env, capture_output=True,
                         text=True, timeout=180)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = load_file(str(tmp_path / 'single' / 'model.safetensors')), load_file(str(tmp_path / 'ddp' / 'model.safetensors'))
    assert a.keys() == b.keys()
    diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert diff < 1e-5, diff
    last = load_checkpoint(str(tmp_path / 'ddp')).model  # the last checkpoint holds the final weights
    assert all(torch.equal(b[k], v) for k, v in last.items())
    hs = json.loads((tmp_path / 'single' / 'log.json').read_text())
    hd = json.loads((tmp_path / 'ddp' / 'log.json').read_text())
    assert [h['global_step'] for h in hs] == [h['global_step'] for h in hd] == [2, 4]
    for x, y in zip(hs, hd):
        assert x['train_loss'] == pytest.approx(y['train_loss'], abs=1e-5)
        assert x['val_mAP_interpolated'] == pytest.approx(y['val_mAP_interpolated'], abs=1e-6)
        assert x['val_num_samples'] == y['val_num_samples'] == 6
    ckpt = load_checkpoint(str(tmp_path / 'ddp'))
    assert ckpt.state['world_size'] == 2 and len(ckpt.state['rng']) == 2


# ----------------------------------------------------------------------------------------------------------------
# lost work (#12): an output folder belongs to one run
# ----------------------------------------------------------------------------------------------------------------
def _cli(csv_root, output, *flags):
    return ['--data', 'csv', '--root', csv_root, '--model', 'srdl_test_resnet', '--img-size', '64', '--epochs', '1',
            '--batch-size', '4', '--lr', '1e-3', '--workers', '0', '--label-embeddings', 'none', '--no-progress',
            '--log-level', 'WARNING', '--output', str(output), *flags]


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
from srdl_timm.run_dir import RunLock
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
            from srdl_timm import run_dir

            def refuse(path, *args, **kwargs):
                raise PermissionError(errno.EACCES, 'Permission denied', str(path))
            monkeypatch.setattr(run_dir.os, 'makedirs', refuse)
        assert main(_cli(csv_root, target)) == 2
    finally:
        parent.chmod(0o700)
    err = capsys.readouterr().err
    assert err.strip() == (f'srdl-train: error: --output {target} is not writable (Permission denied); choose a '
                           'folder you can write to')


def test_corrupt_image_with_loader_workers_gives_the_original_message(tmp_path):
    """A truncated JPEG in the training split with --workers 2: the console script exits 2 with the file's name and
    the reason on one line, not the DataLoader worker's wrapped traceback."""
    from fixtures_data import write_corrupt_image
    root = tmp_path / 'data'
    info = write_csv(root, split='train', num_images=8, seed=0)
    write_csv(root, split='val', num_images=4, seed=1)
    bad = os.path.join(str(root), info['rows'][0][0])
    write_corrupt_image(bad, kind='truncated')
    res = subprocess.run([sys.executable, '-m', 'srdl_timm.cli.train', *_cli(str(root), tmp_path / 'o'),
                          '--workers', '2', '--aug', 'none'], capture_output=True, text=True, timeout=180,
                         env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [line for line in res.stderr.splitlines() if line.startswith('srdl-train: error:')]
    assert len(lines) == 1 and bad in lines[0] and 'truncated' in lines[0], res.stderr[-2000:]
    assert 'Traceback' not in res.stderr and 'DataLoader worker' not in res.stderr
    assert lines[0].startswith(f'srdl-train: error: {bad}'), lines[0]  # no (module-qualified) exception name
