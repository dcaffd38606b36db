"""Tests of srdl_timm/training/run.py (:func:`fit`, a whole srdl-train run) on tiny real data (JPEGs + CSV on
disk): a run lowers the loss and writes loadable outputs, a stopped run resumes bit for bit, a damaged checkpoint is
named on resume, two DDP processes train like one, and an out-of-memory error comes with advice. Data: the
``csv_root`` fixture (tests/conftest.py)."""
import json
import os
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import load_file

import srdl_timm  # noqa: F401
from srdl_timm.cli.train import main
from srdl_timm.loading import load_model
from srdl_timm.training import CheckpointError, TrainConfig, fit, load_checkpoint, resolve_config
from srdl_timm.training.checkpoint import verify_checkpoint
from srdl_timm.training.run import is_oom, oom_message

from fixtures_data import train_config as _cfg


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
    assert loaded.pretrained_cfg['label_names'] == ('cat', 'dog', 'traffic light')
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
    ddp = subprocess.run([*cmd, '--standalone', '--nproc_per_node', '2', '-m', 'srdl_timm.cli.train', *common,
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


def test_oom_is_recognised_and_explained():
    """A real allocator failure (CPU: an impossible 4 EiB allocation) is classified as out-of-memory, and the
    message suggests a smaller batch with gradient accumulation (same global batch), AMP and a smaller input."""
    with pytest.raises(RuntimeError) as info:
        torch.empty(1 << 62, dtype=torch.uint8)
    assert is_oom(info.value)
    assert not is_oom(RuntimeError('shape mismatch'))
    cfg = resolve_config(TrainConfig(root='x', batch_size=16, model='srdl_test_resnet'))
    text = oom_message(cfg, torch.device('cuda'), 'epoch 1')
    assert '--batch-size 8 --grad-accum-steps 2' in text and '--amp' in text and '--img-size' in text


def test_partial_labels_asl_and_thresholds_tuned_on_the_validation_split(tmp_path, caplog):
    """A run with --loss asl on a CSV with entries marked not annotated ('?name') logs and records how many there
    are per split, records the loss and its parameters, and at the end tunes per-class thresholds on the validation
    split: written to train_config.json (with where they were tuned) and summary.json, carried by the model that
    load_model rebuilds, and equal to what srdl-validate --tune-thresholds finds on the same split."""
    import logging
    from fixtures_data import write_csv
    from srdl_timm.labels import model_label_thresholds
    from srdl_timm.loading import ModelSpec
    from srdl_timm.loss import ASL_DEFAULTS
    from srdl_timm.validate import evaluate_dataset
    root = tmp_path / 'data'
    write_csv(root, 'train', num_images=8, seed=0, num_ignore=3)
    write_csv(root, 'val', num_images=6, seed=1, num_ignore=1)
    out = tmp_path / 'run'
    with caplog.at_level(logging.INFO, logger='srdl_timm'):
        result = fit(_cfg(str(root), out, epochs=1, batch_size=4, loss='asl'))
    assert 'not annotated, left out of the loss and the metrics: 3 of 24 in the training split, 1 of 18' in caplog.text
    saved = json.loads((out / 'train_config.json').read_text())
    assert saved['loss'] == 'asl' and {k: saved[f'asl_{k}'] for k in ASL_DEFAULTS} == ASL_DEFAULTS
    assert saved['unknown_entries'] == {'train': 3, 'val': 1} == result['unknown_entries']
    values, info = saved['label_thresholds'], saved['label_thresholds_info']
    assert len(values) == 3 and all(0 < v < 1 for v in values) and info['rule'] == 'f1'
    assert (info['tuned_on']['data'], info['tuned_on']['split'], info['tuned_on']['num_images']) == ('csv', 'val', 6)
    assert result['label_thresholds']['label_thresholds'] == values
    assert list(model_label_thresholds(load_model(None, out / 'model.safetensors')).values) == values
    evaluation = evaluate_dataset(ModelSpec(checkpoint=str(out / 'model.safetensors')), 'csv', str(root), 'val',
                                  workers=0, tune_thresholds_file=str(tmp_path / 'th.json'))
    # the same thresholds up to float32 rounding of the logits: the two evaluations run in different processes'
    # oneDNN kernels (measured 7e-10 apart on an AMX Xeon)
    assert evaluation.report['tuned_thresholds']['label_thresholds'] == pytest.approx(values, abs=1e-6)
    assert evaluation.report['tuned_thresholds']['label_thresholds_info']['tuned_on'] == info['tuned_on']
