"""Tests of srdl_timm/cli/publish.py (the ``srdl-publish`` console script): an srdl-train run evaluated by
srdl-validate, a timm train.py checkpoint and a loaded local-dir: folder publish and load back bitwise; code pickles,
checkpoints that do not fit their config and --model without weights are refused with exit 2.

Run: OMP_NUM_THREADS=1 pytest -q tests/test_cli_publish.py
"""
import json
import os
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

import srdl_timm  # noqa: F401  registers the SRDL architectures
from srdl_timm import hub
from srdl_timm.cli.publish import main as publish_main

from fixtures_data import (
    HUB_HPARAMS as HPARAMS, HUB_IMG as IMG, HUB_NAMES as NAMES, model_out as _out, perturb as _perturb,
    toy_srdl_model as _source_model, write_csv,
)

# Fixtures `source` (the toy SRDL model), `x` (an input batch) and `published` (source published with a report)
# come from tests/conftest.py; constants and helpers from tests/fixtures_data.py.


def test_console_script_is_declared():
    """The srdl-publish console script points at the thin script srdl_timm.cli.publish:main (pyproject.toml)."""
    text = (Path(__file__).parent.parent / 'pyproject.toml').read_text()
    assert 'srdl-publish = "srdl_timm.cli.publish:main"' in text


def test_cli_publishes_a_training_checkpoint_with_srdl_validate_metrics(source, x, tmp_path, capsys):
    """A training run's model.safetensors + train_config.json (srdl-train's layout), evaluated by the real
    srdl-validate, becomes a published folder (srdl-publish --local-dir) whose card carries that report's metrics,
    whose config records the run's crop and the measured input size, and which loads back bitwise; the manifest
    registration (--manifest-tag --ship) lists the same file."""
    from srdl_timm.cli.validate import main as validate_main
    run = tmp_path / 'run'
    run.mkdir()
    ckpt = run / 'model.safetensors'
    # 'module.' prefixes as a DDP state dict would have them
    save_file({'module.' + k: v.contiguous() for k, v in source.state_dict().items()}, str(ckpt))
    structural = {k: HPARAMS[k] for k in ('embed_dim', 'graph_layers', 'attention_impl', 'global_pool')}
    train_config = dict(model='srdl_test_resnet', num_classes=3, lr=1e-5, epochs=1, pretrained_backbone=True,
                        label_names=NAMES, use_gcn=True, use_ca=False, use_sa=True, oe=True, oe_topk=2,
                        oe_alpha=0.3, label_embeddings='glove-6b-50d', model_kwargs=structural,
                        data_config={'input_size': [3, 96, 96], 'interpolation': 'bilinear', 'crop_pct': 0.9,
                                     'crop_mode': 'center', 'mean': [0.5] * 3, 'std': [0.5] * 3})
    (run / 'train_config.json').write_text(json.dumps(train_config))
    data = tmp_path / 'data'
    write_csv(data, split='val', num_images=6, label_names=NAMES)
    report = tmp_path / 'results.json'
    kwargs = [f'{k}={v!r}' for k, v in HPARAMS.items()] + [f'label_names={NAMES!r}']
    validate_main(['--model', 'srdl_test_resnet', '--checkpoint', str(ckpt), '--model-kwargs', *kwargs,
                   '--data', 'csv', '--root', str(data), '--split', 'val', '--img-size', str(IMG), '--workers', '0',
                   '--batch-size', '4', '--no-progress', '--output', str(report)])
    measured = json.loads(report.read_text())
    out = tmp_path / 'out'
    weights = tmp_path / 'weights'
    assert publish_main(['--checkpoint', str(ckpt), '--repo-id', 'srdl-test/cli', '--local-dir', str(out),
                     '--metrics', str(report), '--recipe', 'srdl-train --model srdl_test_resnet', '--dataset',
                     'toy-csv', '--manifest-tag', 'cli', '--ship', '--manifest', str(weights / 'manifest.json'),
                     '--log-level', 'WARNING']) == 0
    assert 'published README.md, config.json, model.safetensors' in capsys.readouterr().out
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True)
    assert torch.equal(_out(loaded, x), _out(source, x))
    config = json.loads((out / 'config.json').read_text())
    assert config['label_names'] == NAMES and config['model_args']['embed_dim'] == HPARAMS['embed_dim']
    assert 'pretrained_backbone' not in config['model_args'] and 'lr' not in config['model_args']
    pcfg = config['pretrained_cfg']
    assert pcfg['input_size'] == [3, IMG, IMG] and pcfg['crop_pct'] == 0.9 and pcfg['crop_mode'] == 'center'
    card = (out / 'README.md').read_text()
    assert f"| mAP (all-point interpolated AP) | {measured['metrics']['mAP_interpolated']:.2f} |" in card
    entry = hub.load_manifest(weights / 'manifest.json')['weights'][0]
    assert entry['sha256'] == hub.sha256_file(out / 'model.safetensors')
    assert entry['sha256'] == hub.sha256_file(weights / 'srdl_test_resnet.cli.safetensors')
    assert entry['metrics']['values']['mAP_non_interpolated'] == measured['metrics']['mAP_non_interpolated']


def _timm_training_checkpoint(model, folder, model_kwargs, ema=None):
    """last.pth.tar as timm's train.py writes it: timm.utils.CheckpointSaver with the run's argparse args, the
    optimizer state and (optionally) the EMA weights."""
    import argparse
    from timm.utils import CheckpointSaver
    args = argparse.Namespace(model='srdl_test_resnet', num_classes=3, model_kwargs=model_kwargs, lr=1e-3,
                              epochs=1, img_size=IMG)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    saver = CheckpointSaver(model, optimizer, args=args, model_ema=ema, checkpoint_dir=str(folder),
                            recovery_dir=str(folder))
    folder.mkdir(parents=True, exist_ok=True)
    saver.save_checkpoint(epoch=0, metric=1.0)
    return folder / 'last.pth.tar'


def test_cli_publishes_a_timm_train_py_checkpoint_safely(source, x, tmp_path, capsys):
    """A real timm training checkpoint (timm.utils.CheckpointSaver: args as argparse.Namespace, optimizer state,
    state_dict and state_dict_ema) publishes with no other flag than --label-names: the architecture, classes and
    model_kwargs come from the checkpoint's args (read with weights_only=True), the `state_dict` weights are
    converted to model.safetensors, and the folder loads back bitwise-equal to the trained model."""
    structural = {k: HPARAMS[k] for k in ('embed_dim', 'graph_layers', 'use_ca', 'attention_impl', 'global_pool')}
    ema = _perturb(_source_model(), seed=9)  # different weights: the published ones must be state_dict's
    checkpoint = _timm_training_checkpoint(source, tmp_path / 'train', structural, ema=ema)
    names = tmp_path / 'classes.txt'
    names.write_text('\n'.join(NAMES) + '\n')
    out = tmp_path / 'out'
    assert publish_main(['--checkpoint', str(checkpoint), '--label-names', str(names), '--local-dir', str(out),
                         '--log-level', 'WARNING']) == 0
    assert 'published README.md, config.json, model.safetensors' in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'srdl_test_resnet' and config['label_names'] == NAMES
    assert config['model_args']['embed_dim'] == 8 and config['model_args']['use_ca'] is False
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True)
    assert torch.equal(_out(loaded, x), _out(source, x))


def test_cli_refuses_code_pickles_and_checkpoints_that_do_not_fit_their_config(source, tmp_path, capsys):
    """A pickle that would run code on load is refused without being unpickled (exit 2, naming the file); a plain
    torch.save'd state dict (.pth) is converted; a run config that does not describe the weights (use_ca=True for a
    use_ca=False checkpoint) is an error naming the file and the offending tensors, never a partly random
    publication; --model without any weights says how to train and publish."""
    class Evil:
        def __reduce__(self):
            return (os.system, ('touch ' + str(tmp_path / 'pwned'),))

    evil = tmp_path / 'evil.pth'
    torch.save({'state_dict': source.state_dict(), 'payload': Evil()}, evil)
    assert publish_main(['--checkpoint', str(evil), '--model', 'srdl_test_resnet', '--local-dir',
                         str(tmp_path / 'o0')]) == 2
    err = capsys.readouterr().err
    assert str(evil) in err and 'not loaded' in err and not (tmp_path / 'pwned').exists()
    assert not (tmp_path / 'o0').exists()

    plain = tmp_path / 'plain' / 'model.pth'
    plain.parent.mkdir()
    torch.save(source.state_dict(), plain)
    kwargs = json.dumps({k: HPARAMS[k] for k in ('embed_dim', 'graph_layers', 'use_ca', 'attention_impl',
                                                 'global_pool')})
    assert publish_main(['--checkpoint', str(plain), '--model', 'srdl_test_resnet', '--model-args', kwargs,
                         '--local-dir', str(tmp_path / 'o1'), '--log-level', 'WARNING']) == 0
    capsys.readouterr()
    assert hub.sha256_file(tmp_path / 'o1' / 'model.safetensors')

    run = tmp_path / 'run'
    run.mkdir()
    ckpt = run / 'model.safetensors'
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(ckpt))
    (run / 'train_config.json').write_text(json.dumps({'model': 'srdl_test_resnet', 'num_classes': 3,
                                                       **dict(HPARAMS, use_ca=True)}))
    assert publish_main(['--checkpoint', str(ckpt), '--local-dir', str(tmp_path / 'o2')]) == 2
    err = capsys.readouterr().err
    assert 'does not fit srdl_test_resnet' in err and 'missing' in err and 'car.' in err and str(ckpt) in err
    assert not (tmp_path / 'o2').exists()
    assert publish_main(['--model', 'srdl_test_resnet', '--local-dir', str(tmp_path / 'o3')]) == 2
    assert 'srdl-train' in capsys.readouterr().err and not (tmp_path / 'o3').exists()


def test_republishing_a_loaded_folder_keeps_its_label_names(published, tmp_path):
    """srdl-publish --model local-dir:DIR re-publishes a loaded folder with its label names and identical weights."""
    folder, result = published
    assert publish_main(['--model', f'local-dir:{folder}', '--local-dir', str(tmp_path / 'again'), '--log-level',
                     'WARNING']) == 0
    config = json.loads((tmp_path / 'again' / 'config.json').read_text())
    assert config['label_names'] == NAMES
    assert hub.sha256_file(tmp_path / 'again' / 'model.safetensors') == result.sha256


def test_local_dir_holding_a_published_model_is_replaced_only_with_overwrite(published, tmp_path, capsys):
    """srdl-publish --local-dir into an empty existing folder works; into a folder that already holds a published
    model it exits 2 naming the folder, its files and --overwrite, leaving the files as they were; with
    --overwrite it replaces them."""
    folder, result = published
    out = tmp_path / 'out'
    out.mkdir()
    argv = ['--model', f'local-dir:{folder}', '--local-dir', str(out), '--log-level', 'WARNING']
    assert publish_main(argv) == 0
    (out / 'README.md').write_text('my notes\n')
    capsys.readouterr()
    assert publish_main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f'srdl-publish: error: --local-dir {out} already holds a published model (config.json, '
                           'model.safetensors, README.md); choose another folder or pass --overwrite to replace it')
    assert (out / 'README.md').read_text() == 'my notes\n'
    assert publish_main(argv + ['--overwrite']) == 0
    assert (out / 'README.md').read_text() != 'my notes\n'
    assert hub.sha256_file(out / 'model.safetensors') == result.sha256


def test_thresholds_file_replaces_the_weights_thresholds(published, tmp_path, capsys):
    """Re-publishing keeps the folder's decision thresholds; --thresholds FILE (srdl-validate --tune-thresholds'
    format) publishes the file's instead, into config.json and the card; a file for other classes is refused."""
    from fixtures_data import HUB_THRESHOLDS
    folder, _ = published
    assert publish_main(['--model', f'local-dir:{folder}', '--local-dir', str(tmp_path / 'kept'), '--log-level',
                         'WARNING']) == 0
    kept = json.loads((tmp_path / 'kept' / 'config.json').read_text())
    assert {k: kept[k] for k in HUB_THRESHOLDS} == HUB_THRESHOLDS
    th = tmp_path / 'th.json'
    th.write_text(json.dumps({'label_thresholds': [0.1, 0.2, 0.3], 'label_names': NAMES,
                              'label_thresholds_info': {'rule': 'f1', 'tuned_on': {'data': 'csv', 'split': 'holdout',
                                                                                   'num_images': 40}}}))
    assert publish_main(['--model', f'local-dir:{folder}', '--local-dir', str(tmp_path / 'new'), '--thresholds',
                         str(th), '--log-level', 'WARNING']) == 0
    config = json.loads((tmp_path / 'new' / 'config.json').read_text())
    assert config['label_thresholds'] == [0.1, 0.2, 0.3]
    assert config['label_thresholds_info']['tuned_on']['split'] == 'holdout'
    assert 'on csv split `holdout` (40 images)' in (tmp_path / 'new' / 'README.md').read_text()
    th.write_text(json.dumps({'label_thresholds': [0.1, 0.2, 0.3], 'label_names': ['a', 'b', 'c']}))
    capsys.readouterr()
    assert publish_main(['--model', f'local-dir:{folder}', '--local-dir', str(tmp_path / 'bad'), '--thresholds',
                         str(th)]) == 2
    assert "its thresholds are for the classes ['a', 'b', 'c']" in capsys.readouterr().err
