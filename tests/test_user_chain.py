"""The chain a new user runs (#11 "Done when"), end to end through the console scripts' ``main`` functions:

srdl-train -> srdl-validate -> srdl-predict -> srdl-export -> srdl-publish --local-dir ->
``timm.create_model('local-dir:...', pretrained=True)``

on a tiny CSV dataset of real JPEGs (tests/fixtures_data.py), with the default flags except those that keep it fast
(``--model srdl_test_resnet --img-size 64 --epochs 1 --workers 0``). Notably no ``--batch-size``: the split (8 images)
is smaller than the default batch (16), which must still train. Every step must exit 0 and agree with the others:
the published folder gives bit-identical logits to the training run's weights, srdl-validate reproduces the run's
final metrics, srdl-predict's scores are the published model's sigmoid outputs, the TorchScript export matches.
"""
import json
import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image

import timm
import srdl_timm  # noqa: F401  (registers srdl_* models)
from srdl_timm.cli import export as export_cli
from srdl_timm.cli import predict as predict_cli
from srdl_timm.cli import publish as publish_cli
from srdl_timm.cli import train as train_cli
from srdl_timm.cli import validate as validate_cli
from srdl_timm.loading import load_model

from fixtures_data import write_csv, write_image

NAMES = ('cat', 'dog', 'traffic light')


@pytest.fixture(scope='module')
def chain(tmp_path_factory):
    """Run the whole chain once, in a fresh folder as the working directory (relative paths, as a user types them);
    tests using it run there too."""
    tmp_path = tmp_path_factory.mktemp('chain')
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        mp.setenv('HF_HUB_OFFLINE', '1')
        yield _run_chain(tmp_path)


@pytest.fixture(scope='module')
def knn_chain(tmp_path_factory):
    """The chain with the kNN label graph (``--model-kwargs graph_kind=knn graph_neighbors=2``), also exported to
    ONNX; the working directory is restored after it (the test using it changes to it)."""
    tmp_path = tmp_path_factory.mktemp('knn_chain')
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        mp.setenv('HF_HUB_OFFLINE', '1')
        return _run_chain(tmp_path, ['--model-kwargs', 'graph_kind=knn', 'graph_neighbors=2'], ['--onnx', 'model.onnx'])


def _run_chain(tmp_path, train_args=(), export_args=()):
    write_csv('data', 'train', num_images=8, label_names=NAMES, image_size=(64, 64), seed=0)
    val = write_csv('data', 'val', num_images=6, label_names=NAMES, image_size=(64, 64), seed=1)
    fast = ['--workers', '0', '--log-level', 'WARNING']
    assert train_cli.main(['--data', 'csv', '--root', 'data', '--model', 'srdl_test_resnet', '--img-size', '64',
                           '--epochs', '1', '--no-progress', '--output', 'run', *fast, *train_args]) == 0
    assert validate_cli.main(['--checkpoint', 'run/model.safetensors', '--data', 'csv', '--root', 'data',
                              '--output', 'val.json', '--quiet', *fast]) == 0
    assert predict_cli.main(['data/images/val', '--checkpoint', 'run/model.safetensors', '--threshold', '0',
                             '--format', 'json', '--output', 'preds.json', '--quiet', *fast]) == 0
    assert export_cli.main(['--checkpoint', 'run/model.safetensors', '--torchscript', 'model.pt',
                            '--log-level', 'WARNING', *export_args]) == 0
    assert publish_cli.main(['--checkpoint', 'run/model.safetensors', '--local-dir', 'pub', '--metrics', 'val.json',
                             '--log-level', 'WARNING']) == 0
    return tmp_path, val


@pytest.mark.filterwarnings('ignore:`torch.jit.load` is deprecated')
def test_train_validate_predict_export_publish_load_agree(chain):
    """Each step of the chain succeeds and every artefact describes the same model: identical logits from the
    published folder and the run's weights, the run's final metrics re-measured by srdl-validate, srdl-predict's
    scores equal to the published model's sigmoids, the TorchScript export equal to it, label names carried."""
    _check_chain(*chain)


@pytest.mark.filterwarnings('ignore:`torch.jit.load` is deprecated')
def test_knn_label_graph_through_the_chain(knn_chain, monkeypatch):
    """The kNN label graph goes through the same chain with the same agreement; its kind and k are recorded in the
    run's and the published config's model_args (so local-dir: rebuilds it), and the checked ONNX export exists."""
    root, val = knn_chain
    monkeypatch.chdir(root)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    _check_chain(root, val)
    for config in (root / 'run' / 'train_config.json', root / 'pub' / 'config.json'):
        args = json.loads(config.read_text())['model_args']
        assert (args['graph_kind'], args['graph_neighbors']) == ('knn', 2), config
    assert (root / 'model.onnx').stat().st_size > 0
    assert timm.create_model(f'local-dir:{root / "pub"}', pretrained=True).label_graph.neighbor_index.shape == (3, 2)


def _check_chain(root, val):
    train_config = json.loads((root / 'run' / 'train_config.json').read_text())
    assert train_config['batch_size'] == 8  # the default 16 lowered to the 8-image split, and recorded

    published = timm.create_model(f'local-dir:{root / "pub"}', pretrained=True).eval()
    trained = load_model(None, 'run/model.safetensors')
    assert list(published.pretrained_cfg['label_names']) == list(NAMES)
    assert published.label_names == list(NAMES) == trained.label_names

    config = timm.data.resolve_model_data_config(published)
    assert tuple(config['input_size']) == (3, 64, 64)
    transform = timm.data.create_transform(**config, is_training=False)
    paths = [os.path.join('data', rel) for rel, _ in val['rows']]
    batch = torch.stack([transform(Image.open(p).convert('RGB')) for p in paths])
    scripted = torch.jit.load('model.pt')
    with torch.no_grad():
        logits = published(batch)
        assert torch.equal(logits, trained(batch))
        torch.testing.assert_close(scripted(batch), logits, rtol=1e-5, atol=1e-6)
    assert not torch.equal(logits[0], logits[1])  # real, image-dependent outputs

    summary = json.loads((root / 'run' / 'summary.json').read_text())
    report = json.loads((root / 'val.json').read_text())
    for key in ('mAP_interpolated', 'mAP_non_interpolated', 'CF1', 'OF1'):
        assert report['metrics'][key] == pytest.approx(summary['final_metrics'][key], abs=1e-9), key
    assert report['label_names'] == list(NAMES)

    preds = json.loads((root / 'preds.json').read_text())
    assert preds['num_failed'] == 0 and preds['weights']['label_names'] == list(NAMES)
    by_path = {os.path.normpath(r['path']): r for r in preds['results']}
    probs = logits.sigmoid()
    for i, path in enumerate(paths):
        scores = {e['label']: e['score'] for e in by_path[os.path.normpath(path)]['labels']}
        assert sorted(scores) == sorted(NAMES)
        np.testing.assert_allclose([scores[n] for n in NAMES], probs[i].tolist(), atol=2e-6)

    # the published weights are as readable as the config beside them (safetensors writes 0600 files)
    mode = stat.S_IMODE((root / 'pub' / 'model.safetensors').stat().st_mode)
    assert mode == stat.S_IMODE((root / 'pub' / 'config.json').stat().st_mode)


def test_rerun_after_a_failed_first_epoch_starts_over(tmp_path, monkeypatch, capsys):
    """A run that dies on a corrupt image before its first checkpoint leaves only train_config.json; the same
    command, re-run after the image is fixed, trains (nothing was lost), while a folder holding a finished run is
    still refused."""
    from fixtures_data import write_corrupt_image
    monkeypatch.chdir(tmp_path)
    write_csv('data', 'train', num_images=8, label_names=NAMES, image_size=(64, 64), seed=0)
    write_csv('data', 'val', num_images=4, label_names=NAMES, image_size=(64, 64), seed=1)
    bad = os.path.join('data', 'images', 'train', 'train_003.jpg')
    write_corrupt_image(bad, 'garbage')
    argv = ['--data', 'csv', '--root', 'data', '--model', 'srdl_test_resnet', '--img-size', '64', '--epochs', '1',
            '--batch-size', '4', '--label-embeddings', 'none', '--no-progress', '--workers', '0',
            '--log-level', 'WARNING', '--output', 'run']
    assert train_cli.main(argv) == 2
    assert bad in capsys.readouterr().err
    assert sorted(n for n in os.listdir('run') if not n.startswith('.')) == ['train_config.json']
    write_image(bad, size=(64, 64), seed=3, fmt='JPEG')
    assert train_cli.main(argv) == 0
    assert (tmp_path / 'run' / 'model.safetensors').is_file()
    capsys.readouterr()
    assert train_cli.main(argv) == 2
    assert 'already holds another training run' in capsys.readouterr().err


def test_mismatched_config_and_output_folders_are_one_line_errors(chain, capsys):
    """A config.json whose num_classes disagrees with the weights names both files and blames the config; an --output that is a folder
    is refused before any work, naming the flag (exit 2, no traceback)."""
    import shutil
    root, _ = chain
    shutil.copytree(root / 'pub', root / 'pub5')
    cfg = json.loads((root / 'pub5' / 'config.json').read_text())
    cfg['num_classes'] = cfg['model_args']['num_classes'] = 5
    cfg['label_names'] = list(NAMES) + ['x', 'y']
    cfg['label_thresholds'] = cfg['label_thresholds'] + [0.5, 0.5]  # a config consistent in itself
    (root / 'pub5' / 'config.json').write_text(json.dumps(cfg))
    capsys.readouterr()
    assert predict_cli.main(['data/images/val', '--model', 'local-dir:pub5', '--quiet', '--workers', '0']) == 2
    err = capsys.readouterr().err
    assert 'pub5/model.safetensors holds weights for 3 classes' in err
    assert 'asked for 5 by pub5/config.json (its num_classes): that config does not belong to these weights' in err
    assert 'Traceback' not in err
    (root / 'outdir').mkdir()
    assert validate_cli.main(['--checkpoint', 'run/model.safetensors', '--data', 'csv', '--root', 'data',
                              '--output', 'outdir', '--quiet', '--workers', '0']) == 2
    assert '--output outdir is a folder' in capsys.readouterr().err
    assert predict_cli.main(['data/images/val', '--checkpoint', 'run/model.safetensors', '-o', 'outdir',
                             '--quiet', '--workers', '0']) == 2
    assert '--output outdir is a folder' in capsys.readouterr().err
    assert export_cli.main(['--checkpoint', 'run/model.safetensors', '--onnx', 'outdir']) == 2
    assert '--onnx outdir is a folder' in capsys.readouterr().err
    assert os.listdir('outdir') == []


def test_loading_a_run_through_pretrained_cfg_overlay_says_what_to_pass(chain, caplog):
    """timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=...)) on a training run's weights:
    a node width other than the architecture's default (GloVe 50-d vs srdl_test_resnet's 16) is an error naming
    embed_dim (not a warning that "num_classes=3 differs from the checkpoint's 3 classes"); a class count other than
    the default cfg's, which makes timm drop the file's classifier, is a warning naming the overlay key; with both
    passed the model equals the run's."""
    import logging
    from srdl_timm.errors import InputError
    with pytest.raises(InputError, match='nodes are 50-d but the model was built with embed_dim=16: pass embed_dim=50'):
        timm.create_model('srdl_test_resnet', pretrained=True, num_classes=3,
                          pretrained_cfg_overlay=dict(file='run/model.safetensors'))
    with caplog.at_level(logging.WARNING, logger='srdl_timm'):
        timm.create_model('srdl_test_resnet', pretrained=True, num_classes=3, embed_dim=50,
                          pretrained_cfg_overlay=dict(file='run/model.safetensors'))
    assert 'pretrained_cfg_overlay=dict(file=..., num_classes=3)' in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger='srdl_timm'):
        model = timm.create_model('srdl_test_resnet', pretrained=True, num_classes=3, embed_dim=50,
                                  pretrained_cfg_overlay=dict(file='run/model.safetensors', num_classes=3)).eval()
    assert 're-initialises' not in caplog.text
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), load_model(None, 'run/model.safetensors')(x))


def test_unreachable_backbone_weights_name_the_backbone_and_the_way_out(tmp_path, monkeypatch, capsys):
    """--pretrained-backbone when timm cannot fetch the ImageNet weights (offline, nothing cached): srdl-train exits
    2 with one line naming the backbone, where its weights come from, and the two ways out, instead of
    huggingface_hub's bare "check your connection" (the failure is simulated where timm loads pretrained weights,
    so the test never touches the network)."""
    import timm.models._builder as builder
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError('cannot find the requested files in the local cache')

    monkeypatch.setattr(builder, 'load_pretrained', offline)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.chdir(tmp_path)
    write_csv('data', 'train', num_images=4, label_names=NAMES, image_size=(64, 64), seed=0)
    write_csv('data', 'val', num_images=2, label_names=NAMES, image_size=(64, 64), seed=1)
    assert train_cli.main(['--data', 'csv', '--root', 'data', '--model', 'srdl_resnet18', '--pretrained-backbone',
                           '--img-size', '64', '--epochs', '1', '--label-embeddings', 'none', '--workers', '0',
                           '--no-progress', '--log-level', 'WARNING', '--output', 'run']) == 2
    err = capsys.readouterr().err
    assert "the ImageNet weights of backbone 'resnet18.tv_in1k'" in err and 'timm/resnet18.tv_in1k' in err, err
    assert 'HF_HUB_OFFLINE=1 forbids downloading them' in err and 'drop --pretrained-backbone' in err
    assert 'Traceback' not in err


def test_multilabel_chain_asl_partial_labels_and_tuned_thresholds(tmp_path, monkeypatch, capsys):
    """#21 end to end on a tiny real-JPEG CSV whose training and validation splits mark entries not annotated
    ('?name'): srdl-train --loss asl (records the loss and the unknown entries, tunes per-class thresholds on val)
    -> srdl-validate on test (CP ... OF1 at 0.5 and at the tuned thresholds; the same on val is refused) ->
    srdl-predict (labels at each class's own threshold, named in the header) -> srdl-publish (thresholds in
    config.json and the card) -> timm.create_model('local-dir:...') carries them."""
    from srdl_timm.labels import model_label_thresholds
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    write_csv('data', 'train', num_images=8, label_names=NAMES, image_size=(64, 64), seed=0, num_ignore=3,
              classes_txt=True)
    write_csv('data', 'val', num_images=6, label_names=NAMES, image_size=(64, 64), seed=1, num_ignore=1)
    test = write_csv('data', 'test', num_images=6, label_names=NAMES, image_size=(64, 64), seed=2)
    assert '?' in open('data/train.csv').read()
    fast = ['--workers', '0', '--log-level', 'WARNING']
    assert train_cli.main(['--data', 'csv', '--root', 'data', '--model', 'srdl_test_resnet', '--img-size', '64',
                           '--epochs', '1', '--loss', 'asl', '--no-progress', '--output', 'run', *fast]) == 0
    out = capsys.readouterr().out
    assert 'decision thresholds per class (best F1 per class, tuned on csv split \'val\' (6 images)' in out
    saved = json.loads((tmp_path / 'run' / 'train_config.json').read_text())
    assert saved['loss'] == 'asl' and saved['asl_gamma_neg'] == 4.0 and saved['unknown_entries'] == {'train': 3,
                                                                                                    'val': 1}
    thresholds = saved['label_thresholds']

    assert validate_cli.main(['--checkpoint', 'run/model.safetensors', '--data', 'csv', '--root', 'data', '--split',
                              'test', '--thresholds', 'from-weights', '--output', 'test.json', '--quiet',
                              *fast]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert any('csv/test (6 images)' in r and 'at per-class' not in r for r in rows)
    assert any("at per-class thresholds (the weights' own)" in r for r in rows)
    report = json.loads((tmp_path / 'test.json').read_text())
    assert report['metrics']['threshold'] == 0.5 and report['metrics_at_thresholds']['threshold'] == thresholds
    assert {'CF1', 'OF1', 'CP', 'CR', 'OP', 'OR'} <= set(report['metrics_at_thresholds'])
    assert validate_cli.main(['--checkpoint', 'run/model.safetensors', '--data', 'csv', '--root', 'data',
                              '--thresholds', 'from-weights', '--quiet', *fast]) == 2
    assert "tuned on csv split 'val' (6 images), the split evaluated here" in capsys.readouterr().err

    assert predict_cli.main(['data/images/test', '--checkpoint', 'run/model.safetensors', '--format', 'json',
                             '--output', 'preds.json', *fast]) == 0
    preds = json.loads((tmp_path / 'preds.json').read_text())
    assert preds['threshold'] == thresholds and preds['threshold_source'] == 'weights'
    trained = load_model(None, 'run/model.safetensors')
    config = timm.data.resolve_model_data_config(trained)
    transform = timm.data.create_transform(**config, is_training=False)
    for record in preds['results']:
        with torch.no_grad():
            probs = trained(transform(Image.open(record['path']).convert('RGB'))[None]).sigmoid()[0]
        assert sorted(lab['index'] for lab in record['labels']) == \
            [i for i in range(3) if probs[i].item() >= thresholds[i]]
    capsys.readouterr()
    assert predict_cli.main([test['csv_file'].replace('test.csv', 'images/test/test_000.jpg'), '--checkpoint',
                             'run/model.safetensors', *fast]) == 0
    assert "# thresholds: the weights' own, per class (best F1 per class, tuned on csv split 'val'" in \
        capsys.readouterr().out

    assert publish_cli.main(['--checkpoint', 'run/model.safetensors', '--local-dir', 'pub', '--metrics', 'test.json',
                             '--log-level', 'WARNING']) == 0
    published = json.loads((tmp_path / 'pub' / 'config.json').read_text())
    assert published['label_thresholds'] == thresholds
    assert published['label_thresholds_info']['tuned_on']['split'] == 'val'
    card = (tmp_path / 'pub' / 'README.md').read_text()
    assert '## Decision thresholds' in card and 'They were chosen on csv split `val` (6 images)' in card
    model = timm.create_model(f'local-dir:{tmp_path / "pub"}', pretrained=True)
    assert list(model_label_thresholds(model).values) == thresholds
