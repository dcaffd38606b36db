"""Tests of srdl_timm/training/loop.py (the training loop on SRDLTask): gradient accumulation, AMP / channels_last /
EMA / per-update schedule and the non-finite-loss stop, driven through :func:`srdl_timm.training.fit` on tiny real
data (the ``csv_root`` fixture, tests/conftest.py)."""
import os

import pytest
import torch
from safetensors.torch import load_file

import srdl_timm  # noqa: F401
from srdl_timm.cli.train import main
from srdl_timm.training import NonFiniteLossError, fit, load_checkpoint
from srdl_timm.training.checkpoint import verify_checkpoint

from fixtures_data import train_config as _cfg


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


def test_fast_depthwise_trains_as_pytorch_layers_and_returns_the_model_plain(csv_root, tmp_path, caplog):
    """--fast-depthwise on (srdl_timm.layers.depthwise) reaches the weights --fast-depthwise off reaches (2 epochs,
    a backbone with depthwise convolutions, difference < 1e-4: float summation order only; the log says both of its
    depthwise layers were swapped), and a model passed to fit() comes back with PyTorch's layer classes."""
    import logging
    import timm
    from srdl_timm.layers.depthwise import DepthwiseConv2d, DepthwiseConv2dSame
    caplog.set_level(logging.INFO, logger='srdl_timm')
    weights = {}
    for mode in ('off', 'on'):
        torch.manual_seed(0)
        model = timm.create_model('srdl_test_resnet', backbone='test_efficientnet', num_classes=3)
        result = fit(_cfg(csv_root, tmp_path / mode, epochs=2, batch_size=4, fast_depthwise=mode), model=model)
        assert not any(isinstance(m, (DepthwiseConv2d, DepthwiseConv2dSame)) for m in model.modules())
        weights[mode] = load_file(result['model_path'])
    assert '--fast-depthwise: 2 depthwise convolutions use the faster backward' in caplog.text
    assert max((weights['on'][k] - weights['off'][k]).abs().max().item() for k in weights['on']) < 1e-4


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(csv_root, tmp_path, capsys):
    """A non-finite loss (here from a real misconfiguration: normalisation std 1e-40 turns pixels into inf) stops
    training with the first non-finite step's number at the next host sync (log interval, checkpoint or epoch end),
    before anything is saved; the previous checkpoint stays intact and `last` still points at it; the CLI exits
    with status 3."""
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



def test_setup_builds_the_configured_loss_for_the_task(csv_root, tmp_path):
    """--loss asl reaches the task: its criterion is SRDLLoss with ASL and the configured parameters, and the
    L_ori it reports for a batch is the masked ASL of the original logits (not BCE); the default is BCE."""
    from srdl_timm.loss import masked_asl_with_logits, masked_bce_with_logits
    from srdl_timm.training import resolve_config
    from srdl_timm.training.loop import setup_training
    for loss, kwargs in (('asl', dict(asl_gamma_neg=2.0)), ('bce', {})):
        cfg = resolve_config(_cfg(csv_root, tmp_path / loss, loss=loss, batch_size=4, **kwargs))
        state, train_ds, _, _ = setup_training(cfg, torch.device('cpu'), 0, 1)
        criterion = state.task.loss
        assert criterion.loss == loss and criterion.asl == cfg.asl_params()
        images, targets = zip(*(train_ds[i] for i in range(4)))
        images, targets = torch.stack(images), torch.stack(targets)
        targets[0, 0] = -1  # not annotated: left out
        result = state.task(images, targets)
        if loss == 'asl':
            expected = masked_asl_with_logits(result['output'], targets, gamma_neg=2.0, gamma_pos=0.0, clip=0.05)
        else:
            expected = masked_bce_with_logits(result['output'], targets)
        torch.testing.assert_close(result['loss_ori'], expected.detach())
        assert state.unknown_entries == {'train': 0, 'val': 0} and state.val_split['split'] == 'val'
