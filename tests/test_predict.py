"""Tests of srdl_timm/predict.py and srdl_timm/cli/predict.py (``srdl-predict``): real image files in, correct
table/JSON/CSV out, bad inputs reported per file with a non-zero exit status, strict model loading from a checkpoint
(with its config beside it, or bare) or a local-dir, the header saying what the weights know. Collecting inputs
from folders and globs (srdl_timm/data/inputs.py): tests/test_data_inputs.py.

Run: OMP_NUM_THREADS=1 pytest -q tests/test_predict.py
"""
import csv
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import srdl_timm  # noqa: F401
from srdl_timm.cli.predict import main
from srdl_timm.data.transforms import create_paper_transform
from srdl_timm.loading import model_args
from srdl_timm.predict import Prediction, collect_inputs, format_csv, format_table, select_labels

LABELS = ['cat', 'dog', 'car', 'tree']
IMG = 64




def _model(num_classes=4, seed=0, **kwargs):
    torch.manual_seed(seed)
    emb = np.random.default_rng(seed).standard_normal((num_classes, 16)).astype(np.float32)
    return timm.create_model('srdl_test_resnet', num_classes=num_classes, label_embeddings=emb, **kwargs).eval()


def _write_rgb(path, size, seed):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(base).save(path)
    return path


@pytest.fixture(scope='module')
def assets(tmp_path_factory):
    """A 4-class checkpoint with label names in its metadata and a folder of good and bad files."""
    root = tmp_path_factory.mktemp('predict')
    model = _model()
    os.makedirs(root / 'named')
    ckpt = str(root / 'named' / 'model.safetensors')  # with a config.json beside it, as srdl-publish writes
    save_file(model.state_dict(), ckpt)
    (root / 'named' / 'config.json').write_text(json.dumps(dict(
        architecture='srdl_test_resnet', num_classes=4, label_names=LABELS, model_args=model_args(model))))
    bare = str(root / 'bare' / 'weights.safetensors')
    os.makedirs(os.path.dirname(bare))
    save_file(model.state_dict(), bare)
    imgs = root / 'imgs'
    good = [
        _write_rgb(str(imgs / 'a.jpg'), (70, 50), 1),
        _write_rgb(str(imgs / 'b.png'), (40, 60), 2),
        _write_rgb(str(imgs / 'sub' / 'c.jpg'), (33, 33), 3),
    ]
    gray = str(imgs / 'gray.png')
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (30, 45), dtype=np.uint8), mode='L').save(gray)
    good.append(gray)
    bad_dir = root / 'bad'
    bad_dir.mkdir()
    (bad_dir / 'notes.txt').write_text('not an image\n')
    (bad_dir / 'fake.jpg').write_bytes(b'this is text with a jpg name\n')
    full = io.BytesIO()
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full, 'JPEG')
    (bad_dir / 'truncated.jpg').write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    (root / 'empty').mkdir()
    (root / 'only_text').mkdir()
    (root / 'only_text' / 'readme.md').write_text('# nothing\n')
    return dict(root=root, model=model, ckpt=ckpt, bare=bare, imgs=str(imgs), good=good,
                notes=str(bad_dir / 'notes.txt'), fake=str(bad_dir / 'fake.jpg'),
                truncated=str(bad_dir / 'truncated.jpg'), empty=str(root / 'empty'),
                only_text=str(root / 'only_text'))


def _expected_scores(model, path):
    cfg = dict(input_size=(3, IMG, IMG), interpolation='bilinear', mean=model.pretrained_cfg['mean'],
               std=model.pretrained_cfg['std'])
    img = Image.open(path).convert('RGB')
    with torch.no_grad():
        return torch.sigmoid(model(create_paper_transform(cfg, False)(img)[None]))[0].numpy()


def _run_json(args, tmp_path, name='out.json'):
    out = tmp_path / name
    rc = main(args + ['--format', 'json', '--output', str(out), '--workers', '0', '--img-size', str(IMG)])
    return rc, json.loads(out.read_text())


def test_json_scores_labels_and_order_match_the_model(assets, tmp_path):
    """JSON has one record per image in input order with the checkpoint's label names and sigmoid scores equal to
    the model's on the eval-transformed image, sorted by score; batches of 2 cover 4 images."""
    rc, doc = _run_json([assets['imgs'], '--recursive', '--model', 'srdl_test_resnet', '--checkpoint',
                         assets['ckpt'], '--threshold', '0', '--batch-size', '2'], tmp_path)
    assert rc == 0
    assert doc['num_inputs'] == 4 and doc['num_failed'] == 0
    imgs = assets['imgs']
    assert [r['path'] for r in doc['results']] == [
        os.path.join(imgs, 'a.jpg'), os.path.join(imgs, 'b.png'), os.path.join(imgs, 'gray.png'),
        os.path.join(imgs, 'sub', 'c.jpg')]
    for record in doc['results']:
        assert record['ok'] and record['error'] is None
        expected = _expected_scores(assets['model'], record['path'])
        got = {lab['label']: lab['score'] for lab in record['labels']}
        assert list(got) == [LABELS[i] for i in np.argsort(-expected, kind='stable')]
        for lab in record['labels']:
            assert LABELS[lab['index']] == lab['label']
            assert lab['score'] == pytest.approx(float(expected[lab['index']]), abs=2e-6)
        w, h = Image.open(record['path']).size
        assert record['size'] == [w, h]


def test_threshold_and_topk_select_labels():
    """--threshold keeps scores >= T, --topk the K best, both: the K best above T; neither: threshold 0.5."""
    scores = np.array([0.2, 0.9, 0.5, 0.7, 0.49])
    names = ['a', 'b', 'c', 'd', 'e']
    assert [n for n, _, _ in select_labels(scores, names)] == ['b', 'd', 'c']
    assert [n for n, _, _ in select_labels(scores, names, threshold=0.6)] == ['b', 'd']
    assert [n for n, _, _ in select_labels(scores, names, topk=4)] == ['b', 'd', 'c', 'e']
    assert [n for n, _, _ in select_labels(scores, names, threshold=0.6, topk=3)] == ['b', 'd']
    assert [n for n, _, _ in select_labels(scores, names, threshold=0.3, topk=1)] == ['b']
    assert select_labels(scores, names, threshold=0.95) == []
    name, index, score = select_labels(scores, names, topk=1)[0]
    assert (name, index, score) == ('b', 1, pytest.approx(0.9))


def test_per_class_thresholds_select_labels_and_say_where_they_come_from():
    """A threshold per class keeps each class at or above its own value (with --topk: at most the K best of them);
    decision_thresholds takes a given threshold first, then none for --topk alone, then the weights' per-class
    thresholds, then 0.5, and says which."""
    from srdl_timm.labels import LabelThresholds, store_label_thresholds
    from srdl_timm.predict import decision_thresholds
    scores = np.array([0.2, 0.9, 0.5, 0.7])
    names = ['a', 'b', 'c', 'd']
    assert [n for n, _, _ in select_labels(scores, names, threshold=[0.1, 0.95, 0.5, 0.8])] == ['c', 'a']
    assert [n for n, _, _ in select_labels(scores, names, threshold=[0.1, 0.5, 0.5, 0.5], topk=2)] == ['b', 'd']
    model = _model()
    assert decision_thresholds(model)['threshold'] == 0.5 and decision_thresholds(model)['source'] == 'default'
    store_label_thresholds(model, LabelThresholds((0.1, 0.2, 0.3, 0.4), {'rule': 'f1', 'tuned_on': {
        'data': 'csv', 'split': 'val', 'num_images': 9}}))
    rule = decision_thresholds(model)
    assert rule['threshold'] == [0.1, 0.2, 0.3, 0.4] and rule['source'] == 'weights'
    assert "tuned on csv split 'val' (9 images)" in rule['description']
    assert decision_thresholds(model, threshold=0.3) == dict(threshold=0.3, source='given',
                                                             description='0.3 for every class (given)')
    assert decision_thresholds(model, topk=2)['threshold'] is None


def test_cli_uses_the_weights_thresholds_by_default_and_shows_them(assets, tmp_path, capsys):
    """Weights whose config records per-class thresholds: srdl-predict keeps each label at or above its own
    threshold and its header (table) and JSON say which thresholds were used; --threshold applies one value to
    every class instead, and says so."""
    folder = tmp_path / 'with_thresholds'
    folder.mkdir()
    save_file(assets['model'].state_dict(), str(folder / 'model.safetensors'))
    thresholds = [0.3, 0.5, 0.7, 0.9]
    (folder / 'config.json').write_text(json.dumps(dict(
        architecture='srdl_test_resnet', num_classes=4, label_names=LABELS, model_args=model_args(assets['model']),
        label_thresholds=thresholds, label_thresholds_info={'rule': 'f1', 'tuned_on': {
            'data': 'csv', 'split': 'val', 'num_images': 12}})))
    rc, doc = _run_json([*assets['good'], '--checkpoint', str(folder)], tmp_path)
    assert rc == 0 and doc['threshold'] == thresholds and doc['threshold_source'] == 'weights'
    for record in doc['results']:
        expected = _expected_scores(assets['model'], record['path'])
        assert sorted(lab['index'] for lab in record['labels']) == \
            [i for i in range(4) if expected[i] >= thresholds[i]]
    capsys.readouterr()
    assert main([assets['good'][0], '--checkpoint', str(folder), '--workers', '0', '--img-size', str(IMG)]) == 0
    header = [line for line in capsys.readouterr().out.splitlines() if line.startswith('# thresholds:')]
    assert header == ["# thresholds: the weights' own, per class (best F1 per class, tuned on csv split 'val' "
                      '(12 images)): min 0.300, median 0.600, max 0.900']
    assert main([assets['good'][0], '--checkpoint', str(folder), '--threshold', '0.25', '--workers', '0']) == 0
    assert '# thresholds: 0.25 for every class (--threshold)' in capsys.readouterr().out


def test_topk_cli_gives_k_labels_per_image(assets, tmp_path):
    """--topk 2 without a threshold returns exactly the two best labels of every image."""
    rc, doc = _run_json([assets['good'][0], assets['good'][1], '--model', 'srdl_test_resnet', '--checkpoint',
                         assets['ckpt'], '--topk', '2'], tmp_path)
    assert rc == 0 and doc['topk'] == 2 and doc['threshold'] is None
    for record in doc['results']:
        expected = _expected_scores(assets['model'], record['path'])
        assert [lab['index'] for lab in record['labels']] == list(np.argsort(-expected, kind='stable')[:2])


def test_bad_inputs_are_reported_per_file_and_exit_status_is_one(assets, tmp_path):
    """Non-image, fake-extension and truncated files, a missing path, an empty folder, a folder without images and
    a glob matching nothing each get a failed record with a reason, while the good images are still predicted."""
    missing = str(assets['root'] / 'no_such.jpg')
    nomatch = str(assets['root'] / 'zzz*.png')
    inputs = [assets['good'][0], assets['notes'], assets['fake'], assets['truncated'], missing, assets['empty'],
              assets['only_text'], nomatch, assets['good'][1]]
    rc, doc = _run_json(inputs + ['--model', 'srdl_test_resnet', '--checkpoint', assets['ckpt']], tmp_path)
    assert rc == 1
    by_path = {r['path']: r for r in doc['results']}
    assert [r['path'] for r in doc['results']] == inputs
    assert doc['num_failed'] == 7 and doc['num_inputs'] == 9
    assert by_path[assets['good'][0]]['ok'] and by_path[assets['good'][1]]['ok']
    assert by_path[assets['good'][0]]['labels']
    expectations = {
        assets['notes']: 'not a readable image', assets['fake']: 'not a readable image',
        assets['truncated']: 'truncated', missing: 'no such file', assets['empty']: 'no image files',
        assets['only_text']: 'no image files', nomatch: 'no files match',
    }
    for path, words in expectations.items():
        record = by_path[path]
        assert not record['ok'] and record['labels'] == []
        assert words in record['error'], (path, record['error'])
    assert '1 files without an image extension skipped' in by_path[assets['only_text']]['error']


def test_table_and_csv_outputs_list_every_input(assets, tmp_path, capsys):
    """The default table prints one row per input (labels or ERROR) and a summary; CSV has one row per label and
    one row per failed input, parseable with the csv module."""
    rc = main([assets['good'][0], assets['notes'], '--model', 'srdl_test_resnet', '--checkpoint', assets['ckpt'],
               '--topk', '2', '--workers', '0', '--img-size', str(IMG)])
    out = capsys.readouterr().out
    assert rc == 1
    header = [line for line in out.splitlines() if line.startswith('#')]
    assert header[0] == '# weights: srdl_test_resnet, backbone test_resnet' and header[1] == f'# knows 4 labels: {", ".join(LABELS)}'
    lines = out.strip().splitlines()[len(header):]
    assert lines[0].split() == ['image', 'labels']
    assert lines[1].startswith(assets['good'][0]) and len(lines[1].split(',')) == 2
    assert lines[2].startswith(assets['notes']) and 'ERROR:' in lines[2]
    assert lines[-1] == '1 predicted, 1 failed'

    csv_path = tmp_path / 'out.csv'
    rc = main([assets['good'][0], assets['notes'], '--model', 'srdl_test_resnet', '--checkpoint', assets['ckpt'],
               '--topk', '3', '--workers', '0', '--img-size', str(IMG), '--format', 'csv', '--output', str(csv_path)])
    assert rc == 1
    rows = list(csv.DictReader(csv_path.open(newline='')))
    good_rows = [r for r in rows if r['path'] == assets['good'][0]]
    assert [r['rank'] for r in good_rows] == ['1', '2', '3']
    assert all(r['label'] in LABELS and r['ok'] == '1' for r in good_rows)
    scores = [float(r['score']) for r in good_rows]
    assert scores == sorted(scores, reverse=True)
    bad = [r for r in rows if r['path'] == assets['notes']]
    assert len(bad) == 1 and bad[0]['ok'] == '0' and bad[0]['label'] == '' and bad[0]['error']


def test_formatters_on_hand_made_predictions():
    """format_table/format_csv render labels, '(none)' for an image without labels, and errors."""
    preds = [Prediction('x.jpg', [('dog', 1, 0.91234)]), Prediction('y.jpg', []), Prediction('z.jpg', error='boom')]
    table = format_table(preds)
    assert 'dog 0.912' in table and '(none)' in table and 'ERROR: boom' in table
    assert table.strip().endswith('2 predicted, 1 failed')
    rows = list(csv.reader(io.StringIO(format_csv(preds))))
    assert rows[1] == ['x.jpg', '1', '1', 'dog', '1', '0.912340', '']
    assert rows[2] == ['y.jpg', '1', '', '', '', '', '']
    assert rows[3] == ['z.jpg', '0', '', '', '', '', 'boom']


def _as_nobody():
    """The command prefix that runs a process as the unprivileged user 65534 (root's permission checks pass every
    read), or None with the reason it cannot be had here."""
    if os.geteuid() != 0:
        return [], None
    for tool in (['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'], ['runuser', '-u', 'nobody', '--']):
        if shutil.which(tool[0]):
            probe = subprocess.run(tool + ['id', '-u'], capture_output=True, text=True)
            if probe.returncode == 0 and probe.stdout.strip() == '65534':
                return tool, None
    return None, 'running as root, and neither setpriv nor runuser can switch to user 65534 here'


def test_broken_symlink_and_unreadable_file_are_reported(assets, tmp_path):
    """A dangling symbolic link fails as its own input; a file without read permission fails with 'permission
    denied' (srdl-predict run as a non-root user: as root through setpriv/runuser, else skipped saying why)."""
    link = tmp_path / 'dangling.jpg'
    link.symlink_to(tmp_path / 'gone.jpg')
    items = collect_inputs([str(link)])
    assert items[0].error and 'broken symbolic link' in items[0].error
    prefix, why = _as_nobody()
    if prefix is None:
        pytest.skip(why)
    with tempfile.TemporaryDirectory() as folder:  # pytest's tmp_path is private to root: not readable by 65534
        os.chmod(folder, 0o777)
        locked, ckpt, out = (os.path.join(folder, n) for n in ('locked.jpg', 'model.safetensors', 'out.json'))
        _write_rgb(locked, (20, 20), 9)
        os.chmod(locked, 0)
        shutil.copyfile(assets['ckpt'], ckpt)
        os.chmod(ckpt, 0o644)
        env = dict(os.environ, HOME=folder)
        run = subprocess.run(prefix + [sys.executable, '-m', 'srdl_timm.cli.predict', locked, '--model',
                                       'srdl_test_resnet', '--checkpoint', ckpt, '--format', 'json', '--output', out,
                                       '--workers', '0', '--img-size', str(IMG)],
                             capture_output=True, text=True, env=env, cwd=folder, timeout=300)
        assert run.returncode == 1, run.stderr
        with open(out) as f:
            assert 'permission denied' in json.load(f)['results'][0]['error']


def test_label_names_fall_back_to_class_index_with_a_warning(assets, tmp_path, caplog):
    """A checkpoint without label names and no --label-names gives class_0.. and logs a warning; --label-names FILE
    supplies them."""
    with caplog.at_level(logging.WARNING, logger='srdl_timm.labels.names'):
        rc, doc = _run_json([assets['good'][0], '--model', 'srdl_test_resnet', '--checkpoint', assets['bare'],
                             '--topk', '4'], tmp_path)
    assert rc == 0
    assert sorted(lab['label'] for lab in doc['results'][0]['labels']) == [f'class_{i}' for i in range(4)]
    assert any('no label names' in r.getMessage() for r in caplog.records)
    names = tmp_path / 'names.txt'
    names.write_text('\n'.join(['w', 'x', 'y', 'z']) + '\n')
    rc, doc = _run_json([assets['good'][0], '--model', 'srdl_test_resnet', '--checkpoint', assets['bare'],
                         '--topk', '4', '--label-names', str(names)], tmp_path, 'named.json')
    assert rc == 0 and sorted(lab['label'] for lab in doc['results'][0]['labels']) == ['w', 'x', 'y', 'z']


def test_local_dir_model_takes_label_names_from_its_config(assets, tmp_path):
    """A timm local-dir written by srdl_timm.hub.save_pretrained_dir (config.json + model.safetensors) loads with
    its config's label names and weights."""
    from srdl_timm.hub import save_pretrained_dir
    folder = tmp_path / 'srdl_local'
    model = _model(num_classes=3, seed=7, label_names=['sun', 'sea', 'sky'])
    save_pretrained_dir(model, folder)
    rc, doc = _run_json([assets['good'][0], '--model', f'local-dir:{folder}', '--threshold', '0'], tmp_path)
    assert rc == 0
    labels = doc['results'][0]['labels']
    assert sorted(lab['label'] for lab in labels) == ['sea', 'sky', 'sun']
    expected = _expected_scores(model, assets['good'][0])
    for lab in labels:
        assert lab['score'] == pytest.approx(float(expected[lab['index']]), abs=2e-6)


def test_training_run_weights_say_the_data_they_were_trained_on(assets, tmp_path, capsys):
    """Weights of an srdl-train run (model.safetensors + train_config.json) are reported as trained on the data
    the run's config records (format, root, split, annotation file), in the JSON summary and the table header;
    weights whose config records no training data keep trained_on null."""
    from fixtures_data import train_config
    from srdl_timm.training import resolve_config
    run, data = tmp_path / 'run', str(tmp_path / 'data')
    run.mkdir()
    save_file(assets['model'].state_dict(), str(run / 'model.safetensors'))
    config = resolve_config(train_config(data, run, data='coco-json', ann_file=f'{data}/ann.json')).to_dict()
    config.update(label_names=LABELS, model_args=model_args(assets['model']), data_config={'input_size': [3, IMG, IMG]})
    (run / 'train_config.json').write_text(json.dumps(config))
    expected = f'coco-json {data} (train split, {data}/ann.json)'
    rc, doc = _run_json([assets['good'][0], '--checkpoint', str(run / 'model.safetensors')], tmp_path)
    assert rc == 0 and doc['weights']['trained_on'] == expected, doc['weights']
    assert main([assets['good'][0], '--checkpoint', str(run), '--workers', '0', '--img-size', str(IMG)]) == 0
    assert f'# trained on: {expected}' in capsys.readouterr().out.splitlines()
    rc, doc = _run_json([assets['good'][0], '--checkpoint', assets['ckpt']], tmp_path, 'published.json')
    assert rc == 0 and doc['weights']['trained_on'] is None


def test_model_errors_exit_with_status_two(assets, tmp_path, capsys):
    """A class count other than the weights', an empty .pth, a missing file, a model name without weights and an
    unknown model name are refused in one line naming the file or name, exit status 2, before any image is read."""
    base = [assets['good'][0], '--workers', '0', '--quiet']
    pth = tmp_path / 'w.pth'
    torch.save({}, pth)
    cases = [
        (['--model', 'srdl_test_resnet', '--checkpoint', assets['ckpt'], '--num-classes', '5'],
         'num_classes=4 but 5 classes were asked for'),
        (['--model', 'srdl_test_resnet', '--checkpoint', str(pth)], f'{pth} holds no state dict of tensors'),
        (['--model', 'srdl_test_resnet', '--checkpoint', str(tmp_path / 'nope.safetensors')],
         f'checkpoint not found: {tmp_path / "nope.safetensors"}'),
        (['--model', 'srdl_resnet18'], 'No pretrained SRDL weights exist for srdl_resnet18'),
        (['--model', 'no_such_architecture'], "unknown model 'no_such_architecture'"),
    ]
    for argv, words in cases:
        assert main(base + argv) == 2, argv
        captured = capsys.readouterr()
        assert captured.err.startswith('srdl-predict: error: ') and words in captured.err, captured.err
        assert 'Traceback' not in captured.err and 'image' not in captured.out


def test_checkpoint_of_another_configuration_is_refused(assets, tmp_path, capsys):
    """Weights of an SRDL without GCN layers do not load silently into the default (2-layer) model: exit 2 naming
    the file and the tensors; with the right --model-kwargs they load and give that model's scores."""
    other = _model(graph_layers=0)
    path = tmp_path / 'nogcn.safetensors'
    save_file(other.state_dict(), str(path))
    base = [assets['good'][0], '--model', 'srdl_test_resnet', '--checkpoint', str(path), '--workers', '0', '--quiet']
    assert main(base) == 2
    err = capsys.readouterr().err
    assert f'{path} does not fit srdl_test_resnet' in err and 'label_graph' in err, err
    out = tmp_path / 'nogcn.json'
    assert main(base + ['--model-kwargs', 'graph_layers=0', '--threshold', '0', '--img-size', str(IMG),
                        '--format', 'json', '--output', str(out)]) == 0
    expected = _expected_scores(other, assets['good'][0])
    for lab in json.loads(out.read_text())['results'][0]['labels']:
        assert lab['score'] == pytest.approx(float(expected[lab['index']]), abs=2e-6)


def test_shipped_weights_header_says_what_they_know(assets, capsys):
    """srdl-predict with the shipped Fashion Scenes tag heads its table with the 10 clothing labels and the data it
    was trained on (from the weights' pretrained_cfg), so a photo of anything else is not read as understood."""
    rc = main([assets['good'][0], '--model', 'srdl_efficientnet_lite0.fashion_scenes', '--workers', '0',
               '--topk', '1'])
    out = capsys.readouterr().out
    assert rc == 0
    header = [line for line in out.splitlines() if line.startswith('#')]
    assert header[0] == '# weights: srdl_efficientnet_lite0.fashion_scenes, backbone tf_efficientnet_lite0'
    assert header[1].startswith('# knows 10 labels: t-shirt, trousers, pullover, dress, coat, sandal')
    assert any(line.startswith('# trained on: ') and 'Fashion Scenes' in line for line in header)
    assert any('scores only these 10 labels' in line for line in header)
    # the paper head's maps are known to be shared by every class: said once, in the header
    assert sum(line.startswith('# attention: ') and 'one map shared by every class' in line for line in header) == 1


def test_header_attention_warning_only_for_the_paper_head():
    """weights_summary warns about the attention maps for the paper's head (eqs. 5-6) and not for a variant whose
    maps are normalised per class, nor for a head without spatial attention."""
    import warnings
    import timm
    from srdl_timm.predict import summary_lines, weights_summary
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        paper = timm.create_model('srdl_test_resnet', num_classes=3)
        variant = timm.create_model('srdl_test_resnet', num_classes=3, attention='softmax_gated')
        no_sa = timm.create_model('srdl_test_resnet', num_classes=3, use_sa=False)
    said = [any(line.startswith('# attention:') for line in summary_lines(weights_summary(m, ['a', 'b', 'c'])))
            for m in (paper, variant, no_sa)]
    assert said == [True, False, False]


def test_amp_and_worker_processes_give_the_same_labels(assets, tmp_path):
    """--amp (bfloat16 backbone, float32 head) stays within 0.02 of float32 scores, and decoding in a worker process
    gives identical results to the main process."""
    args = assets['good'][:2] + ['--model', 'srdl_test_resnet', '--checkpoint', assets['ckpt'], '--threshold', '0']
    _, ref = _run_json(args, tmp_path, 'ref.json')
    rc, amp = _run_json(args + ['--amp'], tmp_path, 'amp.json')
    assert rc == 0 and amp['amp_dtype'] == 'bfloat16'
    for r_ref, r_amp in zip(ref['results'], amp['results']):
        s_ref = {lab['index']: lab['score'] for lab in r_ref['labels']}
        s_amp = {lab['index']: lab['score'] for lab in r_amp['labels']}
        assert s_ref.keys() == s_amp.keys()
        assert max(abs(s_ref[k] - s_amp[k]) for k in s_ref) < 0.02
    out = tmp_path / 'workers.json'
    assert main(args + ['--workers', '1', '--img-size', str(IMG), '--format', 'json', '--output', str(out)]) == 0
    assert json.loads(out.read_text())['results'] == ref['results']


def test_explain_writes_overlays_of_input_size(assets, tmp_path):
    """--explain DIR --explain-erase writes, per image, top-k overlays at the input's size and a panel; names of
    images with the same file name in different folders do not collide; the JSON lists the files."""
    twin = _write_rgb(str(tmp_path / 'other' / 'a.jpg'), (52, 38), 11)
    out_dir = tmp_path / 'overlays'
    rc, doc = _run_json([assets['good'][0], twin, '--model', 'srdl_test_resnet', '--checkpoint', assets['ckpt'],
                         '--threshold', '0', '--explain', str(out_dir), '--explain-erase', '--explain-topk', '2'],
                        tmp_path)
    assert rc == 0
    all_files = set()
    for record in doc['results']:
        files = record['explanations']
        assert len(files) == 3 and files[-1].endswith('_panel.png')
        size = tuple(Image.open(record['path']).size)
        for path in files[:2]:
            with Image.open(path) as png:
                assert png.format == 'PNG' and png.size == size
        top_labels = [lab['label'] for lab in record['labels']]
        assert os.path.basename(files[0]).endswith(f'_top1_{top_labels[0]}.png')
        all_files.update(files)
    assert len(all_files) == 6 and set(os.listdir(out_dir)) == {os.path.basename(f) for f in all_files}
